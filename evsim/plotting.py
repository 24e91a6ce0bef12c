"""Figures from JSON reports (``evsim plot``); needs the optional extra ``[plot]`` (matplotlib)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

from .errors import DataError, MissingDependencyError, describe
from .format import atomic_write

__all__ = ["plot_reports", "read_report", "check_figure_path", "FIGURE_FORMATS", "draw_energy_breakdown"]

FIGURE_FORMATS = ("png", "svg", "pdf")


def read_report(path) -> dict:
    """Read an evsim JSON report, checking that it is one."""
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(describe(str(path), "a JSON report written by evsim run --report", f"unreadable ({exc})")) from None
    if not isinstance(report, dict) or "layers" not in report or "T" not in report:
        raise DataError(describe(str(path), "a JSON report written by evsim run --report", "another JSON document"))
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    layers = report["layers"]
    if not isinstance(layers, list) or not layers or not all(
            isinstance(layer, dict) and isinstance(layer.get("name"), str) and number(layer.get("firing_rate"))
            and number(layer.get("sops")) for layer in layers):
        raise DataError(describe(f"{path}, 'layers'", "a list of layers with name, firing_rate and sops",
                                 "something else"))
    accuracy = report.get("accuracy")
    if accuracy is not None and not (isinstance(accuracy, list) and all(number(a) for a in accuracy)):
        raise DataError(describe(f"{path}, 'accuracy'", "null or a list of numbers", "something else"))
    if report.get("ann_accuracy") is not None and not number(report["ann_accuracy"]):
        raise DataError(describe(f"{path}, 'ann_accuracy'", "null or a number", "something else"))
    return report


def _label(report: dict, path) -> str:
    settings = report.get("settings")
    label = settings.get("label") if isinstance(settings, dict) else None
    return label if isinstance(label, str) and label else Path(path).stem


def check_figure_path(output) -> str:
    """The figure format of ``output`` (png, svg or pdf), or a DataError naming the path."""
    suffix = Path(output).suffix.lower().lstrip(".")
    if suffix not in FIGURE_FORMATS:
        raise DataError(describe(str(output), "a figure file ending in .png, .svg or .pdf", repr(suffix or "none")))
    return suffix


def plot_reports(paths, output, title: str | None = None) -> list[str]:
    """Accuracy against time-step (ANN accuracy dashed), firing rate and SOPs per layer.

    Reports without labels (``accuracy`` null) have no accuracy to draw: when no report
    has one, the figure shows firing rates and SOPs only, with a note saying why.
    No warning of matplotlib reaches the caller.

    Parameters
    ----------
    paths : sequence of path
        JSON reports of ``evsim run --report`` (or ``evsim demo --report-dir``).
    output : path
        ``.png``, ``.svg`` or ``.pdf``; written atomically.
    title : str, optional
        Figure title.

    Returns
    -------
    list of str
        Notes on what was left out (e.g. reports without labels), one line each.
    """
    suffix = check_figure_path(output)
    reports = [(read_report(p), p) for p in paths]
    try:
        import matplotlib
    except ImportError:
        raise MissingDependencyError(describe("evsim plot", "matplotlib", "it is not installed",
                                              "pip install 'evsim[plot]'")) from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # font cache, backend and layout chatter is not the user's business
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        return _draw(plt, reports, output, suffix, title)


def _draw(plt, reports, output, suffix: str, title: str | None) -> list[str]:
    with_accuracy = [(r, p) for r, p in reports if r.get("accuracy")]
    without = [_label(r, p) for r, p in reports if not r.get("accuracy")]
    notes = []
    if without:
        notes.append(f"no accuracy for {', '.join(without)}: the run had no labels; "
                     + ("firing rates and SOPs only" if not with_accuracy else "drawn in the other panels only"))
    with_energy = [(r, p) for r, p in reports if "by_model" in r.get("totals", {}).get("energy_pj", {})]
    panels = (3 if with_accuracy else 2) + bool(with_energy)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.2))
    axes = list(axes)
    ax_energy = [axes.pop()] if with_energy else []
    ax_acc, ax_rate, ax_sops = axes if with_accuracy else (None, *axes)
    width = 0.8 / len(reports)
    ann_drawn = set()
    for i, (report, path) in enumerate(reports):
        label = _label(report, path)
        color = f"C{i}"
        if ax_acc is not None and report.get("accuracy"):
            steps = range(1, len(report["accuracy"]) + 1)
            ax_acc.plot(steps, [100 * a for a in report["accuracy"]], "o-", color=color, label=label, ms=3)
            ann = report.get("ann_accuracy")
            if ann is not None and ann not in ann_drawn:  # runs of one ANN share one dashed line
                ann_drawn.add(ann)
                ax_acc.axhline(100 * ann, color=color, ls="--", lw=1, label=f"ANN ({100 * ann:.2f} %)")
        layers = report["layers"]
        xs = [j + (i - (len(reports) - 1) / 2) * width for j in range(len(layers))]
        ax_rate.bar(xs, [layer["firing_rate"] for layer in layers], width, color=color, label=label)
        ax_sops.bar(xs, [layer["sops"] for layer in layers], width, color=color, label=label)
    names = [layer["name"] for layer in reports[0][0]["layers"]]
    if ax_acc is not None:
        ax_acc.set(xlabel="time-step t", ylabel="accuracy (%)", title="accuracy at every time-step")
        ax_acc.set_xscale("log", base=2)
        ax_acc.legend(fontsize=8)
        ax_acc.grid(alpha=0.3)
    for ax, ylabel, name in ((ax_rate, "spikes per neuron per step", "firing rate"),
                             (ax_sops, "SOPs per sample", "synaptic operations")):
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set(ylabel=ylabel, title=f"{name} per layer")
        ax.grid(alpha=0.3, axis="y")
    ax_sops.legend(fontsize=8)
    if with_energy:
        draw_energy_breakdown(ax_energy[0], with_energy)
    if title:
        fig.suptitle(title)
    if notes:
        fig.text(0.01, 0.01, "note: " + "; ".join(notes), fontsize=8, ha="left", va="bottom", color="0.3")
    fig.tight_layout(rect=(0, 0.05 if notes else 0, 1, 1))
    try:
        atomic_write(output, lambda tmp: fig.savefig(tmp, format=suffix, dpi=120))
    finally:
        plt.close(fig)
    return notes


#: energy terms in stacking order, and their colours
_ENERGY_TERMS = {"macs": "tab:gray", "synops": "tab:blue", "neuron_updates": "tab:orange", "spikes": "tab:green",
                 "events": "tab:olive", "memory_read": "tab:red", "memory_write": "tab:purple"}


def draw_energy_breakdown(ax, reports) -> None:
    """Energy per sample per layer, stacked by term, for each report's first energy model.

    ``reports`` are ``(report, path)`` pairs whose ``totals.energy_pj`` has ``by_model``; the
    analog input layer is the row ``input``.  Reports side by side, edges in the report's colour.
    """
    rows = []
    for report, _ in reports:
        for row in report["totals"]["energy_pj"]["by_model"][report["totals"]["energy_pj"]["model"]]["layers"]:
            if row not in rows:
                rows.append(row)
    width = 0.8 / len(reports)
    drawn = set()
    models = []
    for i, (report, path) in enumerate(reports):
        energy = report["totals"]["energy_pj"]
        models.append(energy["model"])
        layers = energy["by_model"][energy["model"]]["layers"]
        xs = [j + (i - (len(reports) - 1) / 2) * width for j in range(len(rows))]
        bottom = [0.0] * len(rows)
        for term, color in _ENERGY_TERMS.items():
            heights = [layers.get(row, {}).get(term, 0.0) / 1e6 for row in rows]
            if not any(heights):
                continue
            ax.bar(xs, heights, width, bottom=bottom, color=color, edgecolor=f"C{i}", linewidth=0.8,
                   label=None if term in drawn else term.replace("_", " "))
            drawn.add(term)
            bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_xticks(range(len(rows)), rows, rotation=45, ha="right", fontsize=8)
    ax.set(ylabel="energy per sample (uJ)", title="energy per layer (" + ", ".join(dict.fromkeys(models)) + ")")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
