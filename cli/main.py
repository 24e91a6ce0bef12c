"""``evsim`` command line.

Commands stay thin: they check their options, call the Python API, and print.  Heavy
modules (numpy, numba, the engine) are imported inside the commands so that
``evsim --help`` and ``evsim --version`` are instant.

In one place, :class:`EvsimGroup`:

* every deliberate evsim error (:class:`~evsim.errors.EvsimError`) and file-system error
  becomes one clean line and exit code 1;
* any other exception becomes one line saying it is a bug to report, exit code 1 (the
  traceback only with ``-v`` or ``EVSIM_DEBUG=1``);
* Ctrl-C (SIGINT) or SIGTERM at any moment stops promptly with one line and exit code
  130 (143), leaving no partial output file (see :mod:`evsim.cli.interrupt`);
* text from files (node names, paths) is printed escaped, never failing to encode.

Each command checks its whole option combination first (the ``*_RULES`` tables: an
option that does not apply is refused, naming it and why), then every output path
(:mod:`evsim.cli.preflight`), and only then starts work.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import click

from evsim.errors import EvsimError

from . import interrupt
from .console import Console, escape, get_console
from .neurons import NeuronRequest, neuron_options, neuron_request
from .options import Rule, check_rules, energy_options, given, sim_options, timesteps_option, verbosity_options
from .preflight import STDOUT, preflight_dir, preflight_output
from .types import LIMITS, StrictInt

#: longest error line printed (longer messages are cut, saying how much was left out)
MAX_MESSAGE = 1000


def _one_line(text: str) -> str:
    text = escape(str(text))
    if len(text) > MAX_MESSAGE:
        text = f"{text[:MAX_MESSAGE]}... ({len(text) - MAX_MESSAGE:,} more characters)"
    return text


def _debug(console: Console) -> bool:
    return console.verbose or os.environ.get("EVSIM_DEBUG", "").strip() not in ("", "0")


class _Failure(click.ClickException):
    """A one-line error already worded for the user."""

    def __init__(self, message: str, exit_code: int = 1, prefix: str = "Error: "):
        super().__init__(message)
        self.exit_code = exit_code
        self.prefix = prefix

    def show(self, file=None):
        get_console().err(self.prefix + self.message)


class EvsimGroup(click.Group):
    """Click group that turns every failure and interrupt into one line and an exit code."""

    def make_context(self, info_name, args, parent=None, **extra):
        extra.setdefault("obj", Console())
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except KeyboardInterrupt:
            raise _Failure(interrupt.Interrupted().args[0], 130, "evsim: ") from None

    def invoke(self, ctx):
        console = ctx.obj if isinstance(ctx.obj, Console) else Console()
        ctx.obj = console
        interrupt.install()
        try:
            result = super().invoke(ctx)
            interrupt.checkpoint()  # a Ctrl-C swallowed on its way still ends the command with 130
            return result
        except (click.exceptions.Exit, click.exceptions.Abort):
            raise
        except click.ClickException as exc:
            if isinstance(exc, _Failure):
                raise
            exc.message = _one_line(exc.message) if isinstance(exc.message, str) else exc.message
            raise
        except KeyboardInterrupt as exc:
            signum = exc.signum if isinstance(exc, interrupt.Interrupted) else (interrupt.pending() or 2)
            code = interrupt.report_interrupt(interrupt.Interrupted(signum), console)
            raise click.exceptions.Exit(code) from None
        except EvsimError as exc:
            raise _Failure(_one_line(exc)) from None
        except MemoryError as exc:
            raise _Failure(_one_line(f"out of memory ({exc or 'allocation failed'}); lower --batch-size, -T or "
                                     "--samples")) from None
        except OSError as exc:
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            raise _Failure(_one_line(f"{where}{exc.strerror or exc}")) from None
        except Exception as exc:  # noqa: BLE001 - the last resort: one line, never a bare traceback
            if _debug(console):
                console.err_lines(traceback.format_exc().rstrip())
            hint = "" if _debug(console) else " (run again with -v or EVSIM_DEBUG=1 for the traceback)"
            what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise _Failure(_one_line(f"internal error ({what}). This is a bug in evsim; please report it with the "
                                     f"command you ran{hint}")) from None
        finally:
            console.close()
            interrupt.uninstall()


MAIN_HELP = """evsim: event-driven simulation of SNNs converted from trained ANNs.

\b
Start here:
  evsim examples        the shipped models and data, with full paths and commands to paste
  evsim demo            the shipped MNIST example end to end
  evsim COMMAND --help  every option of a command
\b
Documentation installed with evsim: `python -m pydoc evsim` (the Python API and
its modules), and the README of the shipped data (`evsim examples` prints where).
"""


@click.group(cls=EvsimGroup, help=MAIN_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="evsim", prog_name="evsim")
@verbosity_options
def main():
    pass


def format_table(headers: list[str], rows: list[list], align: str | None = None) -> str:
    """Plain-text table; ``align`` has one 'l' or 'r' per column (default: first left)."""
    align = align or "l" + "r" * (len(headers) - 1)
    cells = [[escape(c) for c in headers]] + [[escape(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row):
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(row, widths, align)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def dumps(data) -> str:
    """JSON for stdout (non-ASCII and lone surrogates escaped, so it always encodes)."""
    from evsim.results import json_default

    return json.dumps(data, indent=1, default=json_default)


def shipped(name: str) -> str:
    """Path of a file shipped in ``evsim.data``."""
    from .examples import shipped_dir

    return str(shipped_dir() / name)


def _n_classes(graph) -> int:
    n = 1
    for d in graph.node(graph.output).shape:
        n *= int(d)
    return n


def read_inputs(path, graph, samples: int | None, labels: bool = True, option: str = "--samples",
                layout: str = "nchw"):
    """Inputs (and labels) of a data file for ``graph``; a one-line warning when
    ``samples`` asks for more than the file has."""
    from evsim.data_io import load_data

    # only the samples used are read (issue 17): a file may declare millions
    x, y = load_data(path, graph.input.shape, _n_classes(graph) if labels else None, samples, labels=labels,
                     layout=layout)
    if samples is not None:
        if samples > len(x):
            get_console().warn(f"{option} {samples:,}: {escape(path)} has {len(x):,} samples; using {len(x):,}")
        x, y = x[:samples], (None if y is None else y[:samples])
    return x, y


def _watch_jit(console: Console) -> None:
    """Checkpoints and the 'compiling ...' status during Numba compilation."""
    interrupt.watch_numba(console)


def activation_option(func):
    """``--activation CLASS=SPEC`` (repeatable): the importer option that maps custom layers/ops."""
    return click.option("--activation", "activations", multiple=True, metavar="CLASS=SPEC",
                        help="Map a custom layer class (Keras) or op type (ONNX) of an imported model: "
                             "CLASS=relu or CLASS=qcfs:WEIGHT_NAME,LEVELS. Repeatable.")(func)


def load_model(path, activations=(), **importer_options):
    """``evsim.load`` with the importer options given on the command line (none: no options)."""
    import evsim

    options = {k: v for k, v in importer_options.items() if v is not None}
    if activations:
        options["activations"] = list(activations)
    return evsim.load(path, **options)


# --------------------------------------------------------------------------- inspect
@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@activation_option
@verbosity_options
def inspect(model, as_json, activations):
    """Show the nodes of MODEL: op, output shape, parameters, MACs, and totals.

    Parameters are all stored array elements, BatchNorm running statistics included;
    the total also gives the trainable count (without them).
    """
    from evsim.summary import PARAMETERS_DEFINITION, summary_json

    graph = load_model(model, activations)
    info = summary_json(graph)
    info["importer"] = getattr(graph, "importer", "evsim-v1")
    console = get_console()
    if as_json:
        console.out(dumps(info))
        return
    rows = [[n["name"], n["op"], "x".join(map(str, n["shape"])), f"{n['params']:,}", f"{n['macs']:,}"]
            for n in info["nodes"]]
    via = "" if info["importer"] == "evsim-v1" else f" (read by the {info['importer']} importer)"
    console.out(f"{escape(model)}: kind {info['kind']}, input {'x'.join(map(str, info['input']))}, "
                f"output '{escape(info['output'])}'{via}")
    console.out(format_table(["node", "op", "output", "params", "MACs"], rows, "llrrr"))
    t = info["totals"]
    console.out(f"total: {t['params']:,} parameters ({PARAMETERS_DEFINITION}; {t['trainable']:,} trainable), "
                f"{t['macs']:,} MACs (conv/linear), {t['neurons']:,} neurons")


# --------------------------------------------------------------------------- run
def report_steps(T: int) -> list[int]:
    """Time-steps to print: 1, 2, 4, 8, ... and T."""
    steps, t = [], 1
    while t < T:
        steps.append(t)
        t *= 2
    return steps + [T]


def energy_model(presets, e_mac, e_ac, files=()):
    """Energy models of ``--energy`` (names or ``all``, repeatable) and ``--energy-model FILE``;
    ``--e-mac`` / ``--e-ac`` override the first one."""
    from dataclasses import replace

    from evsim.energy import load_energy_model, resolve_models

    loaded = [load_energy_model(f) for f in files]
    models = resolve_models(list(presets) + loaded) if presets or not loaded else loaded
    if e_mac is not None or e_ac is not None:
        first = models[0]
        models[0] = replace(first, mac_pj=first.mac_pj if e_mac is None else e_mac,
                            synop_pj=first.synop_pj if e_ac is None else e_ac, name=f"{first.name}-custom",
                            source=f"{first.source}; overridden on the command line")
    return models


def jit_split(timing: dict) -> str:
    """Where the simulation time went: Numba JIT (compiling, or loading the cache) vs simulating."""
    jit = timing.get("jit_s", 0.0)
    return (f"Numba compiled {timing.get('kernels_compiled', 0)} kernel(s) in {jit:.2f} s and loaded "
            f"{timing.get('kernels_from_cache', 0)} from its cache; simulation {timing['simulate_s'] - jit:.2f} s")


def print_results(results, verbose=False):
    """Accuracy per time-step, the per-layer table and the totals."""
    out = get_console().out
    r = results
    if r.accuracy is not None:
        ann = "" if r.ann_accuracy is None else f"   (ANN {100 * r.ann_accuracy:.2f} %)"
        out(f"accuracy over {r.samples} samples{ann}")
        rows = [[t, f"{100 * r.accuracy[t - 1]:.2f}", f"{sum(r.sops_per_step[:t]):,.0f}",
                 f"{r.energy_snn_at(t) / 1e6:.3f}"] for t in report_steps(r.T)]
        out(format_table(["T", "accuracy %", "SOPs/sample", "energy uJ"], rows))
    else:
        out(f"{r.samples} samples (no labels: accuracy not computed)")
    out("")
    rows = [[l.name, f"{l.neurons:,}", f"{l.firing_rate:.4f}", f"{l.spikes:,.1f}", f"{l.sops:,.0f}"]
            for l in r.layers]
    out(format_table(["layer", "neurons", "rate/step", "spikes/sample", "SOPs/sample"], rows))
    out("")
    out(f"per sample over T={r.T}: {r.sops:,.0f} SOPs, {r.spikes:,.0f} spikes, "
        f"{r.macs:,} first-layer MACs ({r.first_layer_macs:,} per step)")
    from evsim.energy import summary_lines

    out("energy per sample (estimates: exact counts x per-operation energies; docs/usage.md#energy):")
    for line in summary_lines(r.energy_pj):
        out("  " + line)
    if verbose:
        t = r.timing
        out(f"time: model compile {t['compile_s']:.2f} s, simulate {t['simulate_s']:.2f} s: {jit_split(t)}")


#: options of ``run`` that only an ANN model takes (an SNN file fixes its neurons)
_NEURON_FLAGS = {"neuron": "--neuron", "neuron_params": "--neuron-param", "tau": "--tau", "v0": "--v0",
                 "reset": "--reset"}

def typed(f: dict, name: str) -> str:
    """An option as the user typed it, e.g. ``--neuron gn`` or ``--neuron-param beta=0.9``."""
    flag = _NEURON_FLAGS.get(name, "--" + name.replace("_", "-"))
    value = f.get(name)
    if value is True or value is None:
        return flag
    if isinstance(value, (tuple, list)):
        return " ".join(f"{flag} {escape(v)}" for v in value)
    return f"{flag} {escape(value)}"


RUN_RULES = [
    Rule(lambda f: f["report"] == STDOUT and f["as_json"],
         lambda f: "--report - and --json both print the report on stdout; give one of them"),
    # distributed and checkpointed runs (issue 14, docs/distributed.md)
    Rule(lambda f: f["workers"] is not None and (f["scheduler"] is not None or f["scheduler_file"] is not None),
         lambda f: f"--workers {f['workers']} starts a local cluster, --scheduler/--scheduler-file use an existing "
                   "one: give one of them"),
    Rule(lambda f: f["scheduler"] is not None and f["scheduler_file"] is not None,
         lambda f: "--scheduler and --scheduler-file both name the scheduler: give one of them"),
    Rule(lambda f: f["shard_size"] is not None and f["checkpoint"] is None and _cluster(f) is None,
         lambda f: f"--shard-size {f['shard_size']} applies to runs on a cluster (--workers, --scheduler, "
                   "--scheduler-file, EVSIM_SCHEDULER) or with --checkpoint: add one of them or drop --shard-size"),
]


def _cluster(f: dict) -> dict | None:
    """The Dask cluster ``run`` was asked to use (flags first, then EVSIM_SCHEDULER), or None."""
    if f["workers"] is not None:
        return {"workers": f["workers"]}
    if f["scheduler"] is not None:
        return {"scheduler": f["scheduler"]}
    if f["scheduler_file"] is not None:
        return {"scheduler_file": f["scheduler_file"]}
    if os.environ.get("EVSIM_SCHEDULER", "").strip():
        return {"scheduler": os.environ["EVSIM_SCHEDULER"].strip(), "environ": True}
    return None


def cluster_options(func):
    """``--workers``, ``--scheduler``, ``--scheduler-file``, ``--shard-size``, ``--checkpoint`` (run)."""
    decorators = [
        click.option("--workers", type=StrictInt(1, 4096), default=None, metavar="N",
                     help="Run on a local Dask cluster of N worker processes (needs evsim[dask])."),
        click.option("--scheduler", default=None, metavar="ADDRESS",
                     help="Run on the Dask cluster at ADDRESS, e.g. tcp://host:8786 (default: $EVSIM_SCHEDULER)."),
        click.option("--scheduler-file", default=None, type=click.Path(dir_okay=False), metavar="FILE",
                     help="Run on the Dask cluster whose address `dask scheduler --scheduler-file FILE` wrote."),
        click.option("--shard-size", type=StrictInt(1, LIMITS["samples"]), default=None, metavar="S",
                     help="Samples per task and checkpoint shard, whole batches (default: about 64 shards)."),
        click.option("--checkpoint", default=None, metavar="DIR",
                     help="Keep every finished shard in DIR; the same command run again reuses them."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func

#: checked once the model file is read (its kind is known)
RUN_MODEL_RULES = [
    Rule(lambda f: f["kind"] == "snn" and bool(f["given"] & set(_NEURON_FLAGS)),
         lambda f: (f"{', '.join(typed(f, n) for n in _NEURON_FLAGS if n in f['given'])} does not apply to "
                    f"{escape(f['model'])}: it is an SNN file, whose neuron model and settings were fixed when it was "
                    "converted; convert the ANN again with these options (evsim convert ANN -o SNN ...)")),
    Rule(lambda f: f["kind"] == "snn" and "no_ann" in f["given"],
         lambda f: f"--no-ann does not apply to {escape(f['model'])}: it is an SNN file, there is no ANN to evaluate"),
]


@dataclass
class RunRequest:
    """Everything ``evsim run`` was asked to do, checked: built in one place,
    :func:`build_run_request`, and carried out by :func:`execute_run`."""

    model: str
    graph: object
    data: str
    T: int
    batch_size: int
    samples: int | None
    precision: str
    neuron: NeuronRequest | None
    energy: object
    with_ann: bool
    report: Path | None = None  # a file to write the JSON report to
    json_stdout: bool = False  # the JSON report on stdout instead of the tables
    extra: dict = field(default_factory=dict)

    def options(self):
        """ConversionOptions for an ANN model (None: the model's defaults, or an SNN file)."""
        return self.neuron.options() if self.neuron is not None and self.neuron.given else None


def build_run_request(ctx: click.Context, p: dict) -> RunRequest:
    """Check every option of ``run`` (rules, output paths, model, neuron options) before any work."""
    facts = {**p, "given": given(ctx)}
    check_rules(RUN_RULES, facts)
    report = None
    if p["report"] is not None and p["report"] != STDOUT:
        report = preflight_output(p["report"], "--report", inputs=(p["model"], p["data"]))
    extra = {"cluster": _cluster(p), "shard_size": p["shard_size"], "checkpoint": None, "layout": p["layout"],
             "bins": p.get("bins")}
    if extra["cluster"] is not None:  # before any work: without the extra, say how to install it
        from evsim.distributed import ENV_SCHEDULER, require_dask

        require_dask(next((f"--{k.replace('_', '-')}" for k in ("workers", "scheduler", "scheduler_file")
                           if p[k] is not None), ENV_SCHEDULER))
    if p["checkpoint"] is not None:
        extra["checkpoint"] = preflight_dir(p["checkpoint"], "--checkpoint")
    graph = load_model(p["model"], p["activations"])
    if getattr(graph, "importer", None) == "nir" and facts["given"] & {"reset", "v0"}:
        # NIR's IF: --reset zero resets to v_reset, --v0 half starts at θ/2 (docs/nir.md): importer options
        graph = load_model(p["model"], p["activations"], reset=p["reset"], v0=p["v0"])
        facts["given"] = facts["given"] - {"reset", "v0"}
    check_rules(RUN_MODEL_RULES, {**facts, "kind": graph.kind})
    neuron = None
    if graph.kind == "ann":
        neuron = neuron_request(p["neuron"], p["neuron_params"], p["tau"], p["v0"], p["reset"])
    return RunRequest(model=p["model"], graph=graph, data=p["data"], T=p["T"], batch_size=p["batch_size"],
                      samples=p["samples"], precision=p["precision"], neuron=neuron,
                      energy=energy_model(p["energy_preset"], p["e_mac"], p["e_ac"], p["energy_files"]),
                      with_ann=not p["no_ann"] and graph.kind == "ann", report=report,
                      json_stdout=p["as_json"] or p["report"] == STDOUT, extra=extra)


def execute_run(request: RunRequest, console: Console):
    """Simulate as requested, with progress on a terminal; return the Results.

    The data file is read batch by batch (``evsim.data_io.open_data``): peak memory does not
    depend on the number of samples, and a bad value is reported with its sample index."""
    import evsim
    from evsim.ann import accuracy

    if request.extra.get("cluster") is not None or request.extra.get("checkpoint") is not None:
        return execute_sharded_run(request, console)
    source = open_source(request, console)
    with source:
        _watch_jit(console)
        with console.task("simulating", total=source.n, unit="samples") as task:
            def progress(n):
                task.advance(n)
                interrupt.checkpoint()

            results = evsim.simulate(request.graph, source, T=request.T, batch_size=request.batch_size,
                                     precision=request.precision, options=request.options(),
                                     energy=request.energy, progress=progress)
        if request.with_ann and source.has_labels:
            with console.task("evaluating the ANN"):
                results.ann_accuracy = accuracy(request.graph, source)
    results.settings["data"] = str(request.data)
    return results


def open_source(request: RunRequest, console: Console):
    """The run's data file opened lazily (``--samples`` applied; a warning when it asks for more)."""
    from evsim.data_io import open_data

    graph = request.graph
    source = open_data(request.data, graph.input.shape, _n_classes(graph), samples=request.samples,
                       layout=request.extra["layout"], bins=request.extra.get("bins"))
    if request.samples is not None and request.samples > source.n:
        console.warn(f"--samples {request.samples:,}: {escape(request.data)} has {source.n:,} samples; "
                     f"using {source.n:,}")
    return source


def execute_sharded_run(request: RunRequest, console: Console):
    """``run`` on a Dask cluster and/or with a checkpoint (docs/distributed.md): the data file is
    read in slices (by the workers on a cluster), finished shards are kept and reused."""
    import contextlib

    import evsim
    from evsim.checkpoint import CheckpointRunner

    cluster, shard_size, checkpoint = (request.extra[k] for k in ("cluster", "shard_size", "checkpoint"))
    graph = request.graph
    source = open_source(request, console)
    with contextlib.ExitStack() as stack:
        stack.enter_context(source)
        client = runner = None
        how = {"kind": "serial"}
        if cluster is not None:
            from evsim.distributed import DaskRunner, ann_accuracy, open_client

            label = "starting a local Dask cluster" if "workers" in cluster else "connecting to the Dask scheduler"
            with console.task(label):
                client = stack.enter_context(open_client(**{k: v for k, v in cluster.items() if k != "environ"},
                                                         log=console.note))
            runner = DaskRunner(client, shard_size=shard_size)
            how = {"kind": "dask", **{k: str(v) for k, v in cluster.items() if k != "environ"},
                   "n_workers": len(client.scheduler_info().get("workers", {}))}
        if checkpoint is not None:
            runner = CheckpointRunner(checkpoint, runner, shard_size)
            how["checkpoint"] = str(checkpoint)
        _watch_jit(console)
        with console.task("simulating", total=source.n, unit="samples") as task:
            def progress(n):
                task.advance(n)
                interrupt.checkpoint()

            results = evsim.simulate(graph, source, T=request.T, batch_size=request.batch_size,
                                     precision=request.precision, options=request.options(),
                                     energy=request.energy, progress=progress, runner=runner)
        if request.with_ann and source.has_labels:
            with console.task("evaluating the ANN"):
                if client is not None:
                    results.ann_accuracy = ann_accuracy(client, graph, source, shard_size, request.batch_size)
                else:
                    from evsim.ann import accuracy

                    results.ann_accuracy = accuracy(graph, source)
    results.settings["data"] = str(request.data)
    results.settings["shards"] = dict(runner.shards)
    results.settings["runner"] = how
    if checkpoint is not None and runner.shards["reused"]:
        console.note(f"--checkpoint {escape(checkpoint)}: reused {runner.shards['reused']} of "
                     f"{runner.shards['total']} shards")
    return results


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--data", "data", required=True, type=click.Path(dir_okay=False),
              help=".npz or .h5 with x (N, C, H, W) or (N, F) raw values and optional labels y.")
@sim_options
@neuron_options
@energy_options
@cluster_options
@click.option("--report", type=str, default=None, metavar="PATH",
              help="Write the JSON report here ('-': print it on stdout instead of the tables).")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report on stdout instead of the tables.")
@click.option("--no-ann", is_flag=True, help="Do not evaluate the ANN's accuracy (ANN models).")
@click.option("--layout", type=click.Choice(["nchw", "nhwc"]), default="nchw", show_default=True,
              help="How the data file stores images: channels first, or channels last (Keras/TF data).")
@click.option("--bins", type=click.IntRange(min=1), default=None,
              help="AER event lists (DATA with 'events' and 'offsets'): frames per sample to bin each "
                   "sample's events into (-T defaults to it).")
@click.option("--no-dense", is_flag=True, help="Never switch a projection to its dense (GEMM) path.")
@click.option("--time-block", type=click.IntRange(min=1), default=None,
              help="Time-steps simulated per block (default: chosen from EVSIM_MEMORY_LIMIT and the batch).")
@activation_option
@verbosity_options
@click.pass_context
def run(ctx, **params):
    """Simulate MODEL event by event on DATA; print accuracy per time-step, spikes, SOPs, energy.

    Accuracy is printed in %; in the JSON report it is a fraction (accuracy_unit).
    """
    import os

    # engine settings are read from the environment (so runners' worker simulators see them too)
    if params.pop("no_dense"):
        os.environ["EVSIM_DENSE"] = "0"
    time_block = params.pop("time_block")
    if time_block is not None:
        os.environ["EVSIM_TIME_BLOCK"] = str(time_block)
    console = get_console()
    request = build_run_request(ctx, params)
    results = execute_run(request, console)
    interrupt.checkpoint()
    if request.report is not None:
        results.save(request.report)
        console.note(f"report written to {escape(request.report)}")
    if request.json_stdout:
        console.out(dumps(results.to_dict()))
    else:
        print_results(results, console.verbose)


# --------------------------------------------------------------------------- convert
MODEL_SUFFIXES = (".h5", ".hdf5", ".npz")

CONVERT_RULES = [
    Rule(lambda f: "v0" in f["given"] and "potential" in f["given"],
         lambda f: f"--v0 {f['v0']} and --potential {f['potential']} both set the initial potential; "
                   "convert takes --potential (half, zero or data): drop --v0"),
    Rule(lambda f: f["channelwise"] and f["threshold"] is None,
         lambda f: "--channelwise applies to thresholds from data only: add --threshold (max or a percentile "
                   "such as p99.9) with --calib-data, or drop --channelwise"),
    Rule(lambda f: f["include_zeros"] and f["threshold"] is None,
         lambda f: "--include-zeros applies to a percentile threshold only: add --threshold p99.9 (for example), "
                   "or drop --include-zeros"),
    Rule(lambda f: f["include_zeros"] and f["threshold"] is not None and f["threshold"].strip().lower() == "max",
         lambda f: "--include-zeros does not apply to --threshold max (zeros never change a maximum): drop it"),
    Rule(lambda f: f["keep_lambda"] and f["threshold"] is None,
         lambda f: "--keep-lambda applies with --threshold only (without it every trained λ is kept anyway): "
                   "drop --keep-lambda"),
    Rule(lambda f: f["calib_samples"] is not None and f["calib_data"] is None,
         lambda f: "--calib-samples applies to --calib-data: add --calib-data FILE or drop --calib-samples"),
    Rule(lambda f: f["threshold"] is not None and f["calib_data"] is None,
         lambda f: f"--threshold {f['threshold']} needs calibration data: add --calib-data FILE (inputs under 'x')"),
    Rule(lambda f: f["potential"] == "data" and f["calib_data"] is None,
         lambda f: "--potential data needs calibration data: add --calib-data FILE"),
    Rule(lambda f: f["bias_calibration"] and f["calib_data"] is None,
         lambda f: "--bias-calibration needs calibration data: add --calib-data FILE"),
    Rule(lambda f: (f["potential"] == "data" or f["bias_calibration"]) and f["T"] is None,
         lambda f: f"{'--potential data' if f['potential'] == 'data' else '--bias-calibration'} calibrates for one "
                   "number of time-steps: add -T (the T you will simulate)"),
    Rule(lambda f: f["T"] is not None and f["potential"] != "data" and not f["bias_calibration"],
         lambda f: f"-T {f['T']} applies only to --potential data and --bias-calibration (the calibration is done "
                   "for that T); add one of them or drop -T"),
    Rule(lambda f: f["data_samples"] is not None and f["potential"] != "data" and not f["bias_calibration"],
         lambda f: "--data-samples applies only to --potential data and --bias-calibration: add one of them or "
                   "drop --data-samples"),
    Rule(lambda f: f["calib_data"] is not None and f["threshold"] is None and f["potential"] != "data"
         and not f["bias_calibration"],
         lambda f: "--calib-data is not used: nothing to calibrate without --threshold, --potential data or "
                   "--bias-calibration; add one of them or drop --calib-data"),
]

#: checked once the model file is read
CONVERT_MODEL_RULES = [
    Rule(lambda f: f["kind"] != "ann" and not f["to_nir"],
         lambda f: f"{escape(f['model'])} is already an SNN file (kind {f['kind']}): nothing to convert; run it "
                   "with evsim run (or write it as NIR with -o FILE.nir)"),
    Rule(lambda f: f["kind"] != "ann" and f["to_nir"] and f["given"] - {"model", "output", "verbose", "quiet",
                                                                        "as_json"},
         lambda f: f"{', '.join('--' + n.replace('_', '-') for n in sorted(f['given'] - {'model', 'output', 'verbose', 'quiet', 'as_json'}))} "
                   f"do(es) not apply to {escape(f['model'])}: an SNN file is written to NIR as it is"),
    Rule(lambda f: f["keep_lambda"] and not f["qcfs"],
         lambda f: f"--keep-lambda does not apply to {escape(f['model'])}: it has no qcfs activation (no trained λ)"),
    Rule(lambda f: f["keep_lambda"] and not f["relu"],
         lambda f: f"--keep-lambda with --threshold leaves nothing to calibrate in {escape(f['model'])}: it has no "
                   "relu activation; drop --threshold and --keep-lambda"),
    Rule(lambda f: f["plain_relu"] and f["threshold"] is None,
         lambda f: f"{escape(f['model'])} has {f['plain_relu']} relu activation(s) without a maximum, which need "
                   "thresholds from data: add --threshold p99.9 (or max) --calib-data FILE"),
]


def _threshold_ok(text: str) -> None:
    from evsim.converters.calibration import parse_statistic

    try:
        parse_statistic(text)
    except EvsimError as exc:
        raise click.BadParameter(str(exc), param_hint="'--threshold'") from None


def _calibrate(graph, x, request: NeuronRequest, p: dict, progress=None):
    """The calibration call (one place, so the calibrate() signature lives here only)."""
    from evsim.converters.calibration import calibrate

    kwargs = {"threshold": p["threshold"], "channelwise": p["channelwise"], "potential": p["potential"],
              "bias_calibration": p["bias_calibration"], "T": p["T"], "calib_samples": p["calib_samples"],
              "include_zeros": p["include_zeros"]}
    if p["data_samples"] is not None:
        kwargs["data_samples"] = p["data_samples"]
    if p["keep_lambda"]:
        kwargs["override_qcfs"] = False
    return calibrate(graph, x, request.options(), progress=progress, **kwargs)


def convert_record(snn, output) -> dict:
    """The full JSON record of a conversion (``convert --json``)."""
    import numpy as np

    pops = []
    for node in snn.nodes:
        if node.op != "neuron":
            continue
        theta = np.asarray(node.arrays["threshold"], dtype=np.float64)
        pops.append({"name": node.name, "neurons": int(np.prod(node.shape)),
                     "attrs": {k: v for k, v in node.attrs.items()},
                     "threshold": {"min": float(theta.min()), "mean": float(theta.mean()), "max": float(theta.max()),
                                   "values": int(theta.size)}})
    return {"output": str(output), "kind": snn.kind, "populations": pops,
            "conversion": snn.metadata.get("conversion"), "calibration": snn.metadata.get("calibration")}


def print_convert_summary(record: dict, request: NeuronRequest, console: Console) -> None:
    """A short human summary: populations, how thresholds were set, the potential."""
    cal = record.get("calibration") or {}
    pops = record["populations"]
    console.out(f"wrote {escape(record['output'])}: SNN with {len(pops)} neuron population(s), "
                f"{sum(p['neurons'] for p in pops):,} neurons, {request.describe()} neurons")
    method = cal.get("threshold_method")
    if method in (None, "qcfs_lambda"):
        source = "trained QCFS λ"
    else:
        source = (f"{cal.get('threshold_statistic')} of {'all' if cal.get('include_zeros') else 'non-zero'} "
                  f"activations over {cal.get('samples', 0):,} samples, "
                  f"{'per channel' if cal.get('channelwise') else 'per layer'}")
        if cal.get("override_qcfs") is False:
            source += " (qcfs layers keep their trained λ)"
    console.out(f"thresholds: {source}")
    for p in pops:
        console.out(f"  {escape(p['name'])}: {p['neurons']:,} neurons, threshold {_theta_text_summary(p['threshold'])}")
    potential = cal.get("potential", "half")
    extra = f", calibrated at T={cal['T']} on {cal.get('data_samples')} samples" if cal.get("T") else ""
    console.out(f"initial potential: {potential}; bias calibration: "
                f"{'on' if cal.get('bias_calibration') else 'off'}{extra}")
    for warning in cal.get("warnings") or []:
        console.warn(warning)


def _theta_text_summary(t: dict) -> str:
    if t["values"] == 1:
        return f"{t['mean']:.4g}"
    return f"{t['min']:.4g}..{t['max']:.4g} (mean {t['mean']:.4g}, {t['values']} channels)"


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=str, metavar="PATH",
              help="SNN file to write (.h5 or .npz), or a NIR graph (.nir, see docs/nir.md).")
@neuron_options
@click.option("--threshold", default=None,
              help="Thresholds from data: max, or a percentile such as p99.9 or p99.99 "
                   "(required for relu models; overrides a trained QCFS λ unless --keep-lambda).")
@click.option("--channelwise", is_flag=True, help="One data threshold per channel instead of per layer.")
@click.option("--potential", type=click.Choice(["half", "zero", "data"]), default="half", show_default=True,
              help="Initial potential: θ/2 (OPI), zero, or data-driven calibration at -T.")
@click.option("--bias-calibration", is_flag=True, help="Per-channel bias calibration at -T.")
@click.option("--calib-data", type=click.Path(dir_okay=False), default=None,
              help=".npz/.h5 with x: the calibration inputs.")
@click.option("--calib-samples", type=StrictInt(1, LIMITS["samples"]), default=None,
              help="Use only the first N calibration samples.")
@click.option("--data-samples", type=StrictInt(1, LIMITS["samples"]), default=None,
              help="Samples of the one batch used by --potential data / --bias-calibration (default 128).")
@click.option("--layout", type=click.Choice(["nchw", "nhwc"]), default="nchw", show_default=True,
              help="How the data file stores images: channels first, or channels last (Keras/TF data).")
@click.option("--include-zeros", is_flag=True,
              help="Count zero activations in the percentile (default: non-zero only, as SNN Toolbox).")
@click.option("--keep-lambda", is_flag=True, help="With --threshold: keep trained QCFS λ, calibrate relu only.")
@timesteps_option(None, "Time-steps the potential/bias calibration is done for")
@click.option("--json", "as_json", is_flag=True, help="Print the full conversion record as JSON.")
@activation_option
@verbosity_options
@click.pass_context
def convert(ctx, **p):
    """Convert (and calibrate) an ANN MODEL into an SNN file that `evsim run` simulates."""
    import evsim

    console = get_console()
    facts = {**p, "given": given(ctx)}
    check_rules(CONVERT_RULES, facts)
    if p["threshold"] is not None:
        _threshold_ok(p["threshold"])
    to_nir = Path(p["output"]).suffix.lower() == ".nir"
    if Path(p["output"]).suffix.lower() not in MODEL_SUFFIXES and not to_nir:
        raise click.BadParameter(f"{escape(p['output'])}: an SNN file name ends in .h5 or .npz (the container "
                                 "follows the extension), or .nir for a NIR graph", param_hint="'--output'")
    output = preflight_output(p["output"], "--output", inputs=(p["model"], p["calib_data"]))
    graph = load_model(p["model"], p["activations"])
    from evsim.graph import relu_caps

    ops = [n.op for n in graph.nodes]
    check_rules(CONVERT_MODEL_RULES, {**facts, "kind": graph.kind, "qcfs": ops.count("qcfs"),
                                      "relu": ops.count("relu"), "plain_relu": ops.count("relu") - len(relu_caps(graph)),
                                      "to_nir": to_nir})
    v0 = p["v0"]
    if v0 is not None:  # --v0 alone is --potential for convert
        p["potential"] = v0
    request = neuron_request(p["neuron"], p["neuron_params"], p["tau"], None, p["reset"])
    x = None
    if p["calib_data"] is not None:
        x, _ = read_inputs(p["calib_data"], graph, p["calib_samples"], labels=False, option="--calib-samples",
                           layout=p["layout"])
    if p["potential"] == "data" or p["bias_calibration"]:
        _watch_jit(console)
    label = "calibrating and converting" if x is not None else "converting"
    with console.task(label) as task:
        def progress(what: str):
            task.label = f"{label}: {what}"
            console.detail(what)
            interrupt.checkpoint()

        # an SNN file to NIR is written as it is (its neuron options are fixed)
        snn = graph if to_nir and graph.kind == "snn" else _calibrate(graph, x, request, p, progress)
    interrupt.checkpoint()
    with console.task(f"writing {output}"):
        if to_nir:  # NIR export (docs/nir.md), needs the [nir] extra
            from evsim.converters.nir_io import write_nir

            write_nir(snn, output)
        else:
            evsim.save(snn, output)
    record = convert_record(snn, output)
    if p["as_json"]:
        console.out(dumps(record))
    else:
        print_convert_summary(record, request, console)


# --------------------------------------------------------------------------- demo
DEMO_MODELS = {"qcfs": "mnist_qcfs.npz", "csqcfs": "mnist_csqcfs.npz"}


@main.command()
@click.option("--model", type=click.Choice(list(DEMO_MODELS)), default="qcfs", show_default=True,
              help="Which shipped model.")
@timesteps_option(8)
@click.option("--samples", type=StrictInt(1, LIMITS["samples"]), default=500, show_default=True,
              help="Shipped test samples to simulate (of 1,000).")
@click.option("--report-dir", type=str, default=None, metavar="DIR",
              help="Also write one JSON report per neuron model here (for evsim plot).")
@verbosity_options
def demo(model, T, samples, report_dir):
    """Run the shipped MNIST example: ANN vs SNN (IF, GN, signed IF) per time-step, SOPs, energy."""
    import evsim
    from evsim.ann import predict
    from evsim.convert import ConversionOptions

    console = get_console()
    start = time.perf_counter()
    if report_dir is not None:
        report_dir = preflight_dir(report_dir, "--report-dir")
    graph = evsim.load(shipped(DEMO_MODELS[model]))
    x, y = read_inputs(shipped("mnist_test.npz"), graph, samples)
    _watch_jit(console)
    with console.task("evaluating the ANN"):
        ann = float((predict(graph, x) == y).mean())
    console.out(f"evsim demo: {DEMO_MODELS[model]} on {len(x)} MNIST test digits (shipped in evsim.data), T = {T}")
    console.out(f"ANN accuracy: {100 * ann:.2f} %")
    variants = {"IF (v0=θ/2)": ConversionOptions("if"), "GN τ=4": ConversionOptions("gn", tau=4),
                "signed IF": ConversionOptions("signed_if")}
    runs = {}
    for label, options in variants.items():
        with console.task(f"simulating {label}", total=len(x), unit="samples") as task:
            def progress(n, task=task):
                task.advance(n)
                interrupt.checkpoint()

            r = evsim.simulate(graph, x, y, T=T, options=options, progress=progress)
        r.ann_accuracy = ann
        runs[label] = r
        if report_dir is not None:
            interrupt.checkpoint()
            r.settings["label"] = label
            r.save(report_dir / f"demo_{options.neuron}.json")
    steps = report_steps(T)
    rows = [[label] + [f"{100 * r.accuracy[t - 1]:.2f}" for t in steps] for label, r in runs.items()]
    console.out("\nSNN accuracy % at time-step t")
    console.out(format_table(["neuron"] + [f"t={t}" for t in steps], rows))
    rows = [[label, f"{r.spikes:,.0f}", f"{r.sops:,.0f}", f"{r.energy_snn_pj / 1e6:.3f}",
             f"{r.energy_ann_pj / 1e6:.3f}", f"{r.energy_snn_pj / r.energy_ann_pj:.2f}"] for label, r in runs.items()]
    console.out(f"\nper sample over T={T} (45 nm fp32: E_AC 0.9 pJ/SOP, E_MAC 4.6 pJ/MAC)")
    console.out(format_table(["neuron", "spikes", "SOPs", "E_SNN uJ", "E_ANN uJ", "SNN/ANN"], rows))
    if console.verbose:
        for label, r in runs.items():
            console.out(f"{label}: simulate {r.timing['simulate_s']:.2f} s: {jit_split(r.timing)}")
    if report_dir is not None:
        console.note(f"reports written to {escape(report_dir)}; plot them: evsim plot {escape(report_dir)}/demo_*.json "
                     "-o demo.png")
    console.out(f"\ndone in {time.perf_counter() - start:.1f} s; next: evsim examples (the shipped files and "
                "commands to paste)")


# --------------------------------------------------------------------------- plot
@main.command()
@click.argument("reports", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True))
@click.option("-o", "--output", required=True, type=str, metavar="PATH", help="Figure file (.png, .svg or .pdf).")
@click.option("--title", default=None)
@verbosity_options
def plot(reports, output, title):
    """Plot accuracy per time-step (ANN dashed), firing rates and SOPs per layer from REPORTS.

    A report without labels has no accuracy: its runs appear in the firing-rate and SOP
    panels only (and the accuracy panel is left out when no report has labels).
    """
    from evsim.plotting import check_figure_path, plot_reports

    console = get_console()
    try:
        check_figure_path(output)
    except EvsimError as exc:
        raise click.BadParameter(str(exc), param_hint="'--output'") from None
    output = preflight_output(output, "--output", inputs=reports)
    with console.task("plotting"):
        notes = plot_reports(reports, output, title)
    for note in notes:
        console.note(f"note: {note}")
    console.note(f"figure written to {escape(output)}")


# --------------------------------------------------------------------------- warmup
@main.command()
@verbosity_options
def warmup():
    """Compile and cache every Numba kernel (float32 and float64) so later runs start fast."""
    from evsim.warmup import warm_up

    console = get_console()
    _watch_jit(console)
    with console.task("warming up kernels", total=0, unit="configurations") as task:
        def progress(description, done, total):
            task.total, task.done = total, done
            task.label = f"warming up kernels: {description}"
            if done < total:
                console.detail(f"[{done + 1}/{total}] {description}")
            interrupt.checkpoint()

        report = warm_up(progress)
    if console.verbose:
        for name, (compiled, loaded) in sorted(report.kernels.items()):
            console.out(f"  {name}: {compiled} compiled, {loaded} loaded from the cache")
    if report.compiled:
        head = (f"compiled {report.compiled} kernel specialisation(s) in {report.compile_s:.1f} s and loaded "
                f"{report.loaded} from the cache")
    elif report.loaded:
        head = f"nothing to compile: loaded all {report.loaded} kernel specialisation(s) from the cache"
    else:
        head = "nothing to compile: every kernel was already loaded in this process"
    console.out(f"{head} ({report.total_s:.1f} s in all); cache: {escape(report.cache)}")


# --------------------------------------------------------------------------- examples
@main.command()
@click.option("--dir", "only_dir", is_flag=True, help="Print only the directory holding the shipped files.")
@click.option("--json", "as_json", is_flag=True, help="The listing as JSON.")
@verbosity_options
def examples(only_dir, as_json):
    """List the models and data shipped with evsim, with full paths and commands to paste."""
    from .examples import example_commands, shipped_dir, shipped_files

    console = get_console()
    if only_dir and as_json:
        raise click.UsageError("--dir and --json are alternatives; give one of them")
    directory = shipped_dir()
    if only_dir:
        console.out(str(directory))
        return
    files = shipped_files()
    commands = example_commands(files)
    if as_json:
        console.out(dumps({"directory": str(directory), "files": [f.to_json() for f in files],
                           "commands": [{"what": w, "command": c} for w, c in commands]}))
        return
    console.out(f"Shipped with evsim, in {directory}")
    console.out("")
    rows = []
    for f in files:
        shape = "x".join(map(str, f.input_shape))
        if f.kind == "data":
            what = f"data: {f.samples:,} samples of {shape}, {'with labels' if f.labels else 'no labels'}"
        else:
            what = f"{f.kind.upper()} model, input {shape}, {'/'.join(f.activations)}, {f.parameters:,} parameters"
        rows.append([f.name, what, f.description])
    console.out(format_table(["file", "what", "notes"], rows, "lll"))
    readme = directory / "README.md"
    if readme.is_file():
        console.out(f"\nHow they were made, sources and licence: {readme}")
    console.out("\nCommands to paste:")
    for what, command in commands:
        console.out(f"  # {what}")
        console.out(f"  {command}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
