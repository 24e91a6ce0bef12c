"""``evsim`` command line.

Commands stay thin: they parse options, call the Python API, and print.  Heavy modules
(numpy, numba, the engine) are imported inside the commands so that ``evsim --help``
and ``evsim --version`` are instant.  Every deliberate evsim error is turned into one
clean line and exit code 1 in exactly one place, :meth:`EvsimGroup.invoke`.
"""
from __future__ import annotations

import json
import sys

import click

from evsim.errors import EvsimError


class EvsimGroup(click.Group):
    """Click group that reports :class:`EvsimError` (and file-system errors) as one line."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EvsimError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            raise click.ClickException(f"{where}{exc.strerror or exc}") from None


@click.group(cls=EvsimGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="evsim", prog_name="evsim")
def main():
    """evsim: event-driven simulation of SNNs converted from trained ANNs.

    Models use the evsim format v1 (.npz or .h5); see docs/format.md.
    """


def format_table(headers: list[str], rows: list[list], align: str | None = None) -> str:
    """Plain-text table; ``align`` has one 'l' or 'r' per column (default: first left)."""
    align = align or "l" + "r" * (len(headers) - 1)
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row):
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(row, widths, align)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def inspect(model, as_json):
    """Show the nodes of MODEL: op, output shape, parameters, MACs, and totals."""
    import evsim
    from evsim.summary import summary_json

    info = summary_json(evsim.load(model))
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    rows = [[n["name"], n["op"], "x".join(map(str, n["shape"])), f"{n['params']:,}", f"{n['macs']:,}"]
            for n in info["nodes"]]
    click.echo(f"{model}: kind {info['kind']}, input {'x'.join(map(str, info['input']))}, output '{info['output']}'")
    click.echo(format_table(["node", "op", "output", "params", "MACs"], rows, "llrrr"))
    t = info["totals"]
    click.echo(f"total: {t['params']:,} parameters, {t['macs']:,} MACs (conv/linear), {t['neurons']:,} neurons")


NEURON_CHOICES = {"if": "if", "signed-if": "signed_if", "gn": "gn"}


def neuron_options(func):
    """The options that choose the neuron model (shared by run, convert and demo)."""
    func = click.option("--reset", type=click.Choice(["subtract", "zero"]), default=None,
                        help="IF reset after a spike (default subtract; zero is for comparison).")(func)
    func = click.option("--v0", "v0", type=click.Choice(["half", "zero"]), default=None,
                        help="Initial potential: half a payload unit (OPI, default) or zero.")(func)
    func = click.option("--tau", type=click.IntRange(min=1), default=None,
                        help="Members per Group Neuron (with --neuron gn; default 4).")(func)
    func = click.option("--neuron", type=click.Choice(list(NEURON_CHOICES)), default=None,
                        help="Neuron model: IF (default), signed IF (Fast-SNN) or Group Neurons.")(func)
    return func


def conversion_options(neuron, tau, v0, reset):
    """ConversionOptions from CLI flags, or None when none was given."""
    if neuron is None and tau is None and v0 is None and reset is None:
        return None
    from evsim.convert import ConversionOptions

    return ConversionOptions(neuron=NEURON_CHOICES[neuron or "if"], tau=tau, v0=v0, reset=reset)


def report_steps(T: int) -> list[int]:
    """Time-steps to print: 1, 2, 4, 8, ... and T."""
    steps, t = [], 1
    while t < T:
        steps.append(t)
        t *= 2
    return steps + [T]


def energy_model(preset, e_mac, e_ac):
    from dataclasses import replace

    from evsim.results import EnergyModel

    model = EnergyModel.preset(preset)
    if e_mac is not None or e_ac is not None:
        model = replace(model, e_mac_pj=model.e_mac_pj if e_mac is None else e_mac,
                        e_ac_pj=model.e_ac_pj if e_ac is None else e_ac, name=f"{model.name} (custom)",
                        source=f"{model.source}; overridden on the command line")
    return model


def run_model(model_path, data, T, batch_size, samples, precision, options, energy, with_ann=True, graph=None):
    """Load model and data, simulate with a progress bar on a terminal; return Results."""
    import evsim
    from evsim.ann import predict
    from evsim.data_io import load_data

    graph = graph if graph is not None else evsim.load(model_path)
    n_classes = 1
    for d in graph.node(graph.output).shape:
        n_classes *= d
    x, y = load_data(data, graph.input.shape, n_classes, samples)
    with click.progressbar(length=len(x), label="simulating", file=sys.stderr, show_pos=True,
                           hidden=not sys.stderr.isatty()) as bar:
        results = evsim.simulate(graph, x, y, T=T, batch_size=batch_size, precision=precision, options=options,
                                 energy=energy, progress=bar.update)
    if with_ann and y is not None and graph.kind == "ann":
        results.ann_accuracy = float((predict(graph, x) == y).mean())
    results.settings["data"] = str(data)
    return results


def jit_split(timing: dict) -> str:
    """Where the simulation time went: Numba JIT (compiling, or loading the cache) vs simulating."""
    jit = timing.get("jit_s", 0.0)
    return (f"Numba compiled {timing.get('kernels_compiled', 0)} kernel(s) in {jit:.2f} s and loaded "
            f"{timing.get('kernels_from_cache', 0)} from its cache; simulation {timing['simulate_s'] - jit:.2f} s")


def print_results(results, verbose=False):
    """Accuracy per time-step, the per-layer table and the totals."""
    r = results
    if r.accuracy is not None:
        ann = "" if r.ann_accuracy is None else f"   (ANN {100 * r.ann_accuracy:.2f} %)"
        click.echo(f"accuracy over {r.samples} samples{ann}")
        rows = [[t, f"{100 * r.accuracy[t - 1]:.2f}", f"{sum(r.sops_per_step[:t]):,.0f}",
                 f"{r.energy_snn_at(t) / 1e6:.3f}"] for t in report_steps(r.T)]
        click.echo(format_table(["T", "accuracy %", "SOPs/sample", "energy uJ"], rows))
    else:
        click.echo(f"{r.samples} samples (no labels: accuracy not computed)")
    click.echo("")
    rows = [[l.name, f"{l.neurons:,}", f"{l.firing_rate:.4f}", f"{l.spikes:,.1f}", f"{l.sops:,.0f}"]
            for l in r.layers]
    click.echo(format_table(["layer", "neurons", "rate/step", "spikes/sample", "SOPs/sample"], rows))
    click.echo("")
    click.echo(f"per sample over T={r.T}: {r.sops:,.0f} SOPs, {r.spikes:,.0f} spikes, "
               f"{r.macs:,} first-layer MACs ({r.first_layer_macs:,} per step)")
    ratio = r.energy_snn_pj / r.energy_ann_pj if r.energy_ann_pj else float("nan")
    click.echo(f"energy per sample ({r.energy.name}: E_MAC {r.energy.e_mac_pj} pJ, E_AC {r.energy.e_ac_pj} pJ): "
               f"SNN {r.energy_snn_pj / 1e6:.3f} uJ, ANN {r.energy_ann_pj / 1e6:.3f} uJ ({ratio:.2f}x)")
    if verbose:
        t = r.timing
        click.echo(f"time: model compile {t['compile_s']:.2f} s, simulate {t['simulate_s']:.2f} s: "
                   f"{jit_split(t)}")


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--data", "data", required=True, type=click.Path(dir_okay=False),
              help=".npz or .h5 with x (N, C, H, W) or (N, F) raw values and optional labels y.")
@click.option("-T", "--timesteps", "T", type=click.IntRange(min=1), default=32, show_default=True,
              help="Time-steps to simulate.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--samples", type=click.IntRange(min=1), default=None, help="Use only the first N samples.")
@click.option("--precision", type=click.Choice(["float32", "float64"]), default="float32", show_default=True)
@neuron_options
@click.option("--energy", "energy_preset", type=click.Choice(["45nm-fp32", "45nm-int32", "45nm-int8"]),
              default="45nm-fp32", show_default=True, help="Energy constants (Horowitz 2014).")
@click.option("--e-mac", type=float, default=None, help="Override E_MAC in pJ.")
@click.option("--e-ac", type=float, default=None, help="Override E_AC in pJ.")
@click.option("--report", type=click.Path(dir_okay=False), default=None, help="Write a JSON report here.")
@click.option("--no-ann", is_flag=True, help="Do not evaluate the ANN's accuracy.")
@click.option("-v", "--verbose", is_flag=True, help="Also print where the time went.")
def run(model, data, T, batch_size, samples, precision, neuron, tau, v0, reset, energy_preset, e_mac, e_ac,
        report, no_ann, verbose):
    """Simulate MODEL event by event on DATA; print accuracy per time-step, spikes, SOPs, energy."""
    options = conversion_options(neuron, tau, v0, reset)
    results = run_model(model, data, T, batch_size, samples, precision, options,
                        energy_model(energy_preset, e_mac, e_ac), with_ann=not no_ann)
    print_results(results, verbose)
    if report:
        results.save(report)
        click.echo(f"report written to {report}")


def shipped(name: str) -> str:
    """Path of a file shipped in ``evsim.data``."""
    from importlib.resources import files

    return str(files("evsim.data") / name)


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="SNN file to write (.h5 or .npz).")
@neuron_options
@click.option("--threshold", default=None,
              help="Thresholds from data: max, or a percentile such as p99.9 or p99.99 "
                   "(required for relu models; overrides a trained QCFS λ).")
@click.option("--channelwise", is_flag=True, help="One threshold per channel instead of per layer.")
@click.option("--potential", type=click.Choice(["half", "zero", "data"]), default="half", show_default=True,
              help="Initial potential: θ/2 (OPI), zero, or data-driven calibration at -T.")
@click.option("--bias-calibration", is_flag=True, help="Per-channel bias calibration at -T.")
@click.option("--calib-data", type=click.Path(dir_okay=False), default=None,
              help=".npz/.h5 with x: the calibration inputs.")
@click.option("--calib-samples", type=click.IntRange(min=1), default=None, help="Use only N calibration samples.")
@click.option("--data-samples", type=click.IntRange(min=1), default=None,
              help="Samples of the one batch used by --potential data / --bias-calibration (default 128).")
@click.option("--include-zeros", is_flag=True,
              help="Count zero activations in the percentile (default: non-zero only, as SNN Toolbox).")
@click.option("--keep-lambda", is_flag=True, help="Keep trained QCFS λ; calibrate relu thresholds only.")
@click.option("-T", "--timesteps", "T", type=click.IntRange(min=1), default=None,
              help="Time-steps the potential/bias calibration is done for.")
def convert(model, output, neuron, tau, v0, reset, threshold, channelwise, potential, bias_calibration,
            calib_data, calib_samples, data_samples, include_zeros, keep_lambda, T):
    """Convert (and calibrate) an ANN MODEL into an SNN file that `evsim run` simulates."""
    import evsim
    from evsim.convert import ConversionOptions
    from evsim.converters.calibration import calibrate
    from evsim.data_io import load_data

    graph = evsim.load(model)
    x = None
    if calib_data is not None:
        x, _ = load_data(calib_data, graph.input.shape, None, calib_samples)
    options = conversion_options(neuron, tau, v0, reset)
    kwargs = {} if options is None else {"options": ConversionOptions(options.neuron, reset=options.reset,
                                                                       params=options.params)}
    if options is not None and v0 is not None and potential == "half":
        potential = options.v0
    if data_samples is not None:
        kwargs["data_samples"] = data_samples
    if keep_lambda:
        kwargs["override_qcfs"] = False
    snn = calibrate(graph, x, threshold=threshold, channelwise=channelwise, potential=potential,
                    bias_calibration=bias_calibration, T=T, calib_samples=calib_samples,
                    include_zeros=include_zeros, **kwargs)
    evsim.save(snn, output)
    populations = sum(1 for n in snn.nodes if n.op == "neuron")
    click.echo(f"wrote {output}: {populations} neuron populations; calibration "
               f"{json.dumps(snn.metadata.get('calibration', {}), default=str)}")


DEMO_MODELS = {"qcfs": "mnist_qcfs.npz", "csqcfs": "mnist_csqcfs.npz"}


@main.command()
@click.option("--model", type=click.Choice(list(DEMO_MODELS)), default="qcfs", show_default=True,
              help="Which shipped model.")
@click.option("-T", "--timesteps", "T", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--samples", type=click.IntRange(min=1), default=500, show_default=True,
              help="Shipped test samples to simulate (of 1,000).")
@click.option("--report-dir", type=click.Path(file_okay=False), default=None,
              help="Also write one JSON report per neuron model here (for evsim plot).")
@click.option("-v", "--verbose", is_flag=True)
def demo(model, T, samples, report_dir, verbose):
    """Run the shipped MNIST example: ANN vs SNN (IF, GN, signed IF) per time-step, SOPs, energy."""
    import time
    from pathlib import Path

    import evsim
    from evsim.ann import predict
    from evsim.convert import ConversionOptions
    from evsim.data_io import load_data

    start = time.perf_counter()
    graph = evsim.load(shipped(DEMO_MODELS[model]))
    x, y = load_data(shipped("mnist_test.npz"), graph.input.shape, 10, samples)
    ann = float((predict(graph, x) == y).mean())
    click.echo(f"evsim demo: {DEMO_MODELS[model]} on {len(x)} MNIST test digits (shipped in evsim.data), T = {T}")
    click.echo(f"ANN accuracy: {100 * ann:.2f} %")
    variants = {"IF (v0=θ/2)": ConversionOptions("if"), "GN τ=4": ConversionOptions("gn", tau=4),
                "signed IF": ConversionOptions("signed_if")}
    runs = {}
    for label, options in variants.items():
        r = evsim.simulate(graph, x, y, T=T, options=options)
        r.ann_accuracy = ann
        runs[label] = r
        if report_dir:
            Path(report_dir).mkdir(parents=True, exist_ok=True)
            r.settings["label"] = label
            r.save(Path(report_dir) / f"demo_{options.neuron}.json")
    steps = report_steps(T)
    rows = [[label] + [f"{100 * r.accuracy[t - 1]:.2f}" for t in steps] for label, r in runs.items()]
    click.echo("\nSNN accuracy % at time-step t")
    click.echo(format_table(["neuron"] + [f"t={t}" for t in steps], rows))
    rows = [[label, f"{r.spikes:,.0f}", f"{r.sops:,.0f}", f"{r.energy_snn_pj / 1e6:.3f}",
             f"{r.energy_ann_pj / 1e6:.3f}", f"{r.energy_snn_pj / r.energy_ann_pj:.2f}"] for label, r in runs.items()]
    click.echo(f"\nper sample over T={T} (45 nm fp32: E_AC 0.9 pJ/SOP, E_MAC 4.6 pJ/MAC)")
    click.echo(format_table(["neuron", "spikes", "SOPs", "E_SNN uJ", "E_ANN uJ", "SNN/ANN"], rows))
    if verbose:
        for label, r in runs.items():
            t = r.timing
            click.echo(f"{label}: simulate {t['simulate_s']:.2f} s: {jit_split(t)}")
    click.echo(f"\ndone in {time.perf_counter() - start:.1f} s; try: evsim run MODEL --data DATA -T 32")


@main.command()
@click.argument("reports", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Figure file (.png or .svg).")
@click.option("--title", default=None)
def plot(reports, output, title):
    """Plot accuracy per time-step (ANN dashed), firing rates and SOPs per layer from REPORTS."""
    from evsim.plotting import plot_reports

    plot_reports(reports, output, title)
    click.echo(f"figure written to {output}")


@main.command()
def warmup():
    """Compile and cache every Numba kernel (float32 and float64) so later runs start fast."""
    import time

    from evsim.warmup import warm_up

    start = time.perf_counter()
    cache = warm_up()
    click.echo(f"kernels compiled in {time.perf_counter() - start:.1f} s; cache: {cache}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
