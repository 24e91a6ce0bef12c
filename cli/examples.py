"""``evsim examples``: the models and data shipped in ``evsim.data``, with full paths and
ready-to-paste commands.

The listing is built from the files themselves (every ``.npz``/``.h5`` in the package
directory is opened: an evsim model or a data file with ``x`` and optional ``y``), so a
model added to ``evsim.data`` appears without editing this module.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Shipped", "shipped_dir", "shipped_files", "example_commands"]


@dataclass
class Shipped:
    """One shipped file: a model (``kind`` "ann"/"snn") or data (``kind`` "data")."""

    name: str
    path: str
    kind: str
    input_shape: tuple = ()
    activations: list = field(default_factory=list)
    parameters: int = 0
    samples: int = 0
    labels: bool = False
    description: str = ""

    def to_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def shipped_dir() -> Path:
    """Directory of the shipped models and data (the ``evsim.data`` package)."""
    from importlib.resources import files

    return Path(str(files("evsim.data")))


def _describe_model(graph) -> str:
    source = graph.metadata.get("source") if isinstance(graph.metadata, dict) else None
    recipe = source.get("recipe", "") if isinstance(source, dict) else ""
    text = recipe.split(";")[0].split(",")[0].strip() if isinstance(recipe, str) else ""
    accuracy = graph.metadata.get("test_accuracy") if isinstance(graph.metadata, dict) else None
    if isinstance(accuracy, (int, float)):
        text += f"{'; ' if text else ''}ANN test accuracy {accuracy:.3f}"
    return text


def _read_data(path: Path) -> tuple[tuple, bool] | None:
    """(x shape, has labels) of a data file, or None if it is not one."""
    try:
        if path.suffix == ".npz":
            import zipfile

            import numpy as np

            with zipfile.ZipFile(path) as zf:
                names = {Path(n).stem for n in zf.namelist()}
                if "x" not in names:
                    return None
                with zf.open("x.npy") as f:
                    version = np.lib.format.read_magic(f)
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)
                    shape = read(f)[0]
            return tuple(shape), "y" in names
        import h5py

        with h5py.File(path, "r") as f:
            if "x" not in f:
                return None
            return tuple(f["x"].shape), "y" in f
    except Exception:  # noqa: BLE001 - anything unreadable is simply not listed as data
        return None


def shipped_files() -> list[Shipped]:
    """Every shipped model and data file, models first, each with what it holds."""
    import evsim
    from evsim.errors import EvsimError
    from evsim.summary import summarize

    out = []
    for path in sorted(shipped_dir().iterdir()):
        if path.suffix not in (".npz", ".h5", ".hdf5"):
            continue
        try:
            graph = evsim.load(path)
        except EvsimError:
            data = _read_data(path)
            if data is not None:
                shape, labels = data
                out.append(Shipped(path.name, str(path), "data", tuple(shape[1:]), samples=int(shape[0]),
                                   labels=labels, description="inputs x" + (" and labels y" if labels else "")))
            continue
        acts = sorted({n.op for n in graph.nodes if n.op in ("relu", "qcfs", "neuron")})
        out.append(Shipped(path.name, str(path), graph.kind, tuple(graph.input.shape), acts,
                           summarize(graph)["totals"]["params"], description=_describe_model(graph)))
    return sorted(out, key=lambda s: (s.kind == "data", s.name))


def _pick(files: list[Shipped], model: Shipped, prefer: str, labels: bool) -> Shipped | None:
    fits = [f for f in files if f.kind == "data" and f.input_shape == model.input_shape and (f.labels or not labels)]
    fits.sort(key=lambda f: (prefer not in f.name, f.name))
    return fits[0] if fits else None


def example_commands(files: list[Shipped] | None = None, primary: str = "mnist_qcfs.npz") -> list[tuple[str, str]]:
    """(comment, command) pairs using the shipped files' full paths, shell-quoted;
    the ``primary`` model (the demo's) comes first and gets the most examples."""
    files = shipped_files() if files is None else files
    files = sorted(files, key=lambda f: f.name != primary)
    q = shlex.quote
    commands: list[tuple[str, str]] = []
    first_run = None
    for model in files:
        if model.kind == "data":
            continue
        test = _pick(files, model, "test", labels=True)
        if test is None:
            continue
        run = f"evsim run {q(model.path)} --data {q(test.path)}"
        if model.kind == "ann" and "relu" in model.activations:
            calib = _pick(files, model, "calib", labels=False)
            if calib is None:
                continue
            snn = Path(model.name).stem + "_snn.h5"
            commands.append((f"convert {model.name} (plain ReLU): thresholds from data, then simulate it",
                             f"evsim convert {q(model.path)} -o {snn} --threshold p99.9 --channelwise "
                             f"--calib-data {q(calib.path)} --calib-samples 200"))
            commands.append((f"simulate the converted {snn}", f"evsim run {snn} --data {q(test.path)} -T 16 --samples 200"))
            continue
        commands.append((f"simulate {model.name} on {test.name} (IF neurons)", f"{run} -T 8 --samples 200"))
        if first_run is None and model.kind == "ann":
            first_run = (model, test)
    if first_run is not None:
        model, test = first_run
        run = f"evsim run {q(model.path)} --data {q(test.path)}"
        commands.insert(0, (f"what is in {model.name}", f"evsim inspect {q(model.path)}"))
        commands.append(("the same with Group Neurons (tau 4), JSON report to a file",
                         f"{run} -T 8 --samples 200 --neuron gn --tau 4 --report report_gn.json"))
        commands.append(("signed IF neurons, the report as JSON on stdout",
                         f"{run} -T 8 --samples 200 --neuron signed-if --json"))
        commands.append(("plot a report (needs pip install \"evsim[plot]\")", "evsim plot report_gn.json -o report_gn.png"))
    commands.append(("the whole example in one command: ANN vs IF, GN and signed IF", "evsim demo"))
    return commands
