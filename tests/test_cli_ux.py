"""The CLI as a demanding user meets it (issue 16, and the CLI part of issue 17).

One test (or a few) per observation of issue 16, through click's CliRunner, and real
subprocesses where a terminal, an encoding or a signal matters.  Runs are small: the
shipped models with ``--samples 8 -T 2``.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import warnings
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import evsim
from evsim.cli import interrupt
from evsim.cli.console import Console, escape
from evsim.cli.main import main
from evsim.cli.preflight import preflight_dir, preflight_output
from evsim.format import write_container
from plugin_dist import write_plugin_distribution

DATA = files("evsim.data")
QCFS, RELU, TEST, CALIB = (str(DATA / n) for n in ("mnist_qcfs.npz", "mnist_relu.npz", "mnist_test.npz",
                                                    "mnist_calib.npz"))
SMALL = ["--samples", "8", "-T", "2"]
REPO = Path(__file__).resolve().parents[1]

# The installed console script: ``python -m evsim.cli.main`` from the repository root would import the
# source folder evsim/ (which has no cli/ inside) instead of the installed package.
_SCRIPT = Path(sys.executable).with_name("evsim")
EVSIM_COMMAND = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "evsim.cli.main"]


def invoke(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def cli(*args, env=None, cwd=None, timeout=300, **kwargs):
    """``evsim ARGS`` in a fresh Python process."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([*EVSIM_COMMAND, *map(str, args)], capture_output=True,
                          text=True, env=full_env, cwd=cwd, timeout=timeout, **kwargs)


def errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("Error:")]


# --------------------------------------------------------------------------- 1. preflight
@pytest.mark.parametrize("target, problem", [("/dev/null/x.json", "/dev/null is not a directory"),
                                             ("{afile}/r.json", "afile is not a directory")])
def test_report_path_checked_before_the_simulation(target, problem, tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("x")
    monkeypatch.setattr(evsim, "simulate", lambda *a, **k: pytest.fail("simulated first"), raising=False)
    start = time.perf_counter()
    result = invoke("run", QCFS, "--data", TEST, *SMALL, "--report", target.format(afile=tmp_path / "afile"))
    assert result.exit_code == 2 and time.perf_counter() - start < 5
    assert problem in errors(result.output)[0] and "--report" in errors(result.output)[0]
    assert "accuracy" not in result.output  # no table: nothing ran


def test_preflight_output_accepts_new_paths_without_creating_them(tmp_path):
    target = tmp_path / "a" / "b" / "r.json"
    assert preflight_output(target, "--report") == target
    assert not (tmp_path / "a").exists() and list(tmp_path.iterdir()) == []
    existing = tmp_path / "old.json"
    existing.write_text("{}")
    preflight_output(existing, "--report")
    link = tmp_path / "link.json"
    link.symlink_to(existing)
    preflight_output(link, "--report")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "old.json"]  # the probe file is gone


@pytest.mark.parametrize("make, problem", [
    (lambda p: p.mkdir(), "a directory"),
    (lambda p: os.mkfifo(p), "FIFO"),
    (lambda p: p.symlink_to(p.parent / "missing"), "dangling"),
    (lambda p: p.with_name("d").write_text("x"), None),  # a file where a directory is needed (below)
])
def test_preflight_output_refuses_special_targets(make, problem, tmp_path):
    import click

    target = tmp_path / "out.json"
    make(target)
    if problem is None:
        target, problem = tmp_path / "d" / "out.json", "is not a directory"
    with pytest.raises(click.BadParameter) as info:
        preflight_output(target, "--report")
    assert problem in info.value.format_message() and "'--report'" in info.value.format_message()


def test_preflight_refuses_an_unwritable_place():
    import click

    with pytest.raises(click.BadParameter, match="cannot create"):
        preflight_output("/proc/evsim-report.json", "--report")
    with pytest.raises(click.BadParameter, match="cannot create"):
        preflight_dir("/proc/evsim-reports", "--report-dir")


def test_preflight_dir(tmp_path):
    import click

    assert preflight_dir(tmp_path / "new" / "dir", "--checkpoint") == tmp_path / "new" / "dir"
    assert not (tmp_path / "new").exists()
    (tmp_path / "f").write_text("x")
    with pytest.raises(click.BadParameter, match="it is a file, not a directory"):
        preflight_dir(tmp_path / "f", "--checkpoint")


# --------------------------------------------------------------------------- 2. recorded settings
def test_report_records_only_the_applied_neuron_settings(tmp_path):
    report = tmp_path / "r.json"
    assert invoke("run", QCFS, "--data", TEST, *SMALL, "--neuron", "gn", "--tau", 2, "--report", report).exit_code == 0
    conversion = json.loads(report.read_text())["settings"]["conversion"]
    assert conversion["neuron"] == "gn" and conversion.get("params", conversion).get("tau") == 2
    assert invoke("run", QCFS, "--data", TEST, *SMALL, "--report", report).exit_code == 0
    conversion = json.loads(report.read_text())["settings"]["conversion"]
    assert conversion["neuron"] == "if" and "tau" not in json.dumps(conversion)


def test_convert_v0_alone_sets_the_potential(tmp_path):
    out = tmp_path / "q.h5"
    result = invoke("convert", QCFS, "-o", out, "--v0", "zero")
    assert result.exit_code == 0, result.output
    snn = evsim.load(out)
    assert snn.metadata["calibration"]["potential"] == "zero"
    assert all(not np.any(n.arrays["v0"]) for n in snn.nodes if n.op == "neuron")


# --------------------------------------------------------------------------- 3. progress and status
def test_quiet_when_not_a_terminal():
    result = invoke("run", QCFS, "--data", TEST, *SMALL)
    assert result.exit_code == 0
    assert "\r" not in result.output and "simulating" not in result.output


def test_status_line_on_a_terminal_and_silenced_by_q():
    # the status line is drawn when a task starts, however short the task (no timing here)
    args = ("run", QCFS, "--data", TEST, "--samples", "64", "-T", "8")
    live = invoke(*args, env={"EVSIM_PROGRESS": "1"})
    assert live.exit_code == 0 and "\r" in live.stderr and "simulating" in live.stderr
    assert live.stderr.rstrip(" \r\x1b[K").endswith("\x1b[K") or live.stderr.endswith("\r\x1b[K")  # line cleared
    quiet = invoke(*args, "-q", env={"EVSIM_PROGRESS": "1"})
    assert quiet.exit_code == 0 and quiet.stderr == ""
    verbose = invoke(*args, "-v")
    assert "simulating: done in" in verbose.stderr and "Numba compiled" in verbose.stdout


def test_calibration_reports_progress_per_layer(tmp_path):
    result = invoke("convert", RELU, "-o", tmp_path / "s.h5", "--threshold", "max", "--calib-data", CALIB,
                    "--calib-samples", 20, "--potential", "data", "-T", 2, "--data-samples", 8, "-v")
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert "threshold statistics: 20/20 samples" in lines
    assert [line for line in lines if line.startswith("potential calibration")] == [
        f"potential calibration at T=2: layer {name} ({i}/4)"
        for i, name in enumerate(["act1", "act2", "res_act1", "res_act2"], 1)]


def test_compilation_is_announced_and_checked_for_interrupts():
    import numba

    shown = []

    class Recorder(Console):
        def overlay(self, text):
            shown.append(text)

    interrupt.watch_numba(Recorder(live=False))
    try:
        @numba.njit
        def freshly_written_kernel(x):
            return x * 2.0

        assert freshly_written_kernel(np.float32(1.5)) == 3.0
    finally:
        interrupt.watch_numba(None)
    assert shown[0] == "compiling Numba kernel freshly_written_kernel (float32), first run only" and shown[-1] is None
    # a pending interrupt stops the next compilation at its first pass
    interrupt.watch_numba(None)
    interrupt._pending = signal.SIGINT
    try:
        @numba.njit
        def another_kernel(x):
            return x + 1

        with pytest.raises(interrupt.Interrupted):
            another_kernel(1)
    finally:
        interrupt.clear()


@pytest.mark.slow
def test_warmup_counts_compiled_and_cached_truthfully(tmp_path):
    first = cli("warmup", "-v", timeout=900)
    assert first.returncode == 0, first.stderr
    second = cli("warmup")
    assert second.returncode == 0, second.stderr
    assert re.search(r"nothing to compile: loaded all \d+ kernel specialisation\(s\) from the cache", second.stdout)


def test_warmup_reports_per_kernel_and_never_claims_a_compile_it_did_not_do(monkeypatch):
    import evsim.warmup

    steps = evsim.warmup.warm_up_steps()
    assert len(steps) == 2 * 2 * sum(len(m.resets) or 1 for m in evsim.neurons.available_models())
    monkeypatch.setattr(evsim.warmup, "warm_up_steps", lambda: steps[:2])
    first = invoke("warmup", "-v")
    assert first.exit_code == 0, first.output
    assert re.search(r"\[1/2\] image network, if, reset subtract, float32", first.stderr)
    again = invoke("warmup")
    assert again.exit_code == 0
    assert again.stdout.startswith("nothing to compile: every kernel was already loaded in this process")


# --------------------------------------------------------------------------- 4. interrupts
class _Process:
    """evsim in a subprocess whose stderr is read as it comes."""

    def __init__(self, args, env):
        self.proc = subprocess.Popen([*EVSIM_COMMAND, *map(str, args)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **env})
        self.err = b""
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        while chunk := self.proc.stderr.read1(4096):
            self.err += chunk

    def wait_for(self, text: bytes, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end and self.proc.poll() is None:
            if text in self.err:
                return True
            time.sleep(0.02)
        return text in self.err

    def stop(self, signum, timeout=15.0):
        start = time.monotonic()
        self.proc.send_signal(signum)
        rc = self.proc.wait(timeout)
        self.reader.join(5)
        lines = [line.strip() for line in re.split(r"[\r\n]", self.err.decode(errors="replace"))]
        lines = [re.sub(r"\x1b\[K", "", line) for line in lines]
        return rc, time.monotonic() - start, [line for line in lines if line and not line.startswith(("|", "/", "-", "\\"))]


@pytest.mark.parametrize("after", [0.0, 1.0, 2.5])
def test_ctrl_c_while_numba_compiles(after, tmp_path):
    out = tmp_path / "out"
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "empty-cache"), "EVSIM_PROGRESS": "1"}
    p = _Process(["run", QCFS, "--data", TEST, *SMALL, "--report", out / "r.json"], env)
    assert p.wait_for(b"compiling Numba kernel", 120), p.err.decode(errors="replace")
    time.sleep(after)
    rc, seconds, lines = p.stop(signal.SIGINT)
    assert rc == 130, lines
    assert seconds < 10, seconds
    assert lines == ["evsim: interrupted (Ctrl-C); stopped, no partial output left"], lines
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize("signum, code, word", [(signal.SIGINT, 130, "interrupted (Ctrl-C)"),
                                                (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_signal_while_simulating_leaves_no_file(signum, code, word, tmp_path):
    p = _Process(["run", QCFS, "--data", TEST, "-T", "32", "--report", tmp_path / "r.json"], {"EVSIM_PROGRESS": "1"})
    assert p.wait_for(b"simulating", 120), p.err.decode(errors="replace")
    time.sleep(0.5)
    rc, seconds, lines = p.stop(signum)
    assert rc == code and seconds < 10 and lines == [f"evsim: {word}; stopped, no partial output left"], lines
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- 5. convert output
def test_convert_prints_a_short_summary_and_json_on_request(tmp_path):
    out = tmp_path / "snn.h5"
    args = ("convert", RELU, "-o", out, "--threshold", "p99.9", "--channelwise", "--calib-data", CALIB,
            "--calib-samples", 50)
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"wrote {out}: SNN with 4 neuron population(s)")
    assert lines[1].startswith("thresholds: p99.9 of non-zero activations over 50 samples, per channel")
    assert lines[-1].startswith("initial potential: half; bias calibration: off")
    assert all(len(line) < 160 for line in lines) and "{" not in result.stdout
    record = json.loads(invoke(*args, "--json").stdout)
    assert record["calibration"]["channelwise"] is True and len(record["populations"]) == 4


# --------------------------------------------------------------------------- 6. findable examples
def test_examples_lists_shipped_files_with_paths_and_commands_that_work(tmp_path, monkeypatch):
    result = invoke("examples")
    assert result.exit_code == 0
    for name in ("mnist_qcfs.npz", "mnist_csqcfs.npz", "mnist_relu.npz", "mnist_test.npz", "mnist_calib.npz"):
        assert name in result.output
    listing = json.loads(invoke("examples", "--json").stdout)
    assert all(Path(f["path"]).is_file() for f in listing["files"])
    assert invoke("examples", "--dir").stdout.strip() == listing["directory"]
    monkeypatch.chdir(tmp_path)
    commands = [shlex.split(c["command"]) for c in listing["commands"]]
    for argv in commands:
        assert argv[0] == "evsim"
        for arg in argv:
            if arg.endswith((".npz", ".h5")) and "/" in arg:
                assert Path(arg).is_file(), arg
    converts = [a for a in commands if a[1] == "convert"]
    runs = [a for a in commands if a[1] == "run"]
    for argv in converts[:1] + runs[:1] + [a for a in runs if "_snn.h5" in " ".join(a)][:1]:
        argv = [a for a in argv[1:]]
        argv += ["--calib-samples", "20"] if argv[0] == "convert" else SMALL
        result = invoke(*argv)
        assert result.exit_code == 0, (argv, result.output)


def test_help_points_to_installed_documentation():
    text = invoke("--help").output
    assert "evsim examples" in text and "python -m pydoc evsim" in text and "docs/format.md" not in text


def test_readme_using_it_uses_shipped_paths():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Using it", 1)[1].split("\n## ", 1)[0]
    shipped = {p.name for p in Path(str(DATA)).iterdir()}
    made = set()
    for line in section.replace("\\\n", " ").splitlines():
        if not line.startswith("evsim ") and "=$(evsim" not in line:
            continue
        words = shlex.split(line.split("#")[0])
        for i, word in enumerate(words):
            if word.startswith("$D/"):
                assert word[3:] in shipped, word
            elif word.endswith((".npz", ".h5", ".json")) and i and words[i - 1] in ("-o", "--report"):
                made.add(word)
            elif word.endswith((".npz", ".h5", ".json")):
                assert word in made, f"{word} is neither shipped nor written by an earlier command"


# --------------------------------------------------------------------------- 7. --json, --report -
def test_run_json_and_report_dash_print_the_report_on_stdout():
    for flag in (["--json"], ["--report", "-"]):
        result = invoke("run", QCFS, "--data", TEST, *SMALL, *flag)
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["T"] == 2 and report["samples"] == 8 and report["accuracy_unit"] == "fraction"
    assert not Path("-").exists()


# --------------------------------------------------------------------------- 8. plot
def _report_without_labels(tmp_path) -> Path:
    data = tmp_path / "nolabels.npz"
    with np.load(TEST) as z:
        np.savez(data, x=z["x"][:8])
    report = tmp_path / "nolabels.json"
    assert invoke("run", QCFS, "--data", data, "-T", 2, "--report", report).exit_code == 0
    return report


def test_plot_without_labels_draws_rates_and_sops_with_a_note(tmp_path):
    pytest.importorskip("matplotlib")
    report = _report_without_labels(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = invoke("plot", report, "-o", tmp_path / "fig.png")
    assert result.exit_code == 0, result.output
    assert "Warning" not in result.output and "No artists" not in result.output
    assert "note: no accuracy for nolabels: the run had no labels; firing rates and SOPs only" in result.output
    assert (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG"


def test_plot_in_a_fresh_process_prints_no_warning(tmp_path):
    pytest.importorskip("matplotlib")
    report = _report_without_labels(tmp_path)
    done = cli("plot", report, "-o", tmp_path / "fig.svg", env={"PYTHONWARNINGS": "always"})
    assert done.returncode == 0, done.stderr
    assert "warn" not in done.stderr.lower().replace("note", "")


# --------------------------------------------------------------------------- 9. units
def test_accuracy_unit_is_stated_in_report_and_docs(tmp_path):
    report = tmp_path / "r.json"
    assert invoke("run", QCFS, "--data", TEST, *SMALL, "--report", report).exit_code == 0
    data = json.loads(report.read_text())
    assert data["accuracy_unit"] == "fraction" and all(0 <= a <= 1 for a in data["accuracy"])
    usage = (REPO / "docs" / "usage.md").read_text()
    assert "accuracy_unit" in usage and "fraction" in usage


# --------------------------------------------------------------------------- 10. no dataclass repr
def test_errors_speak_in_options(tmp_path):
    snn = tmp_path / "snn.npz"
    evsim.save(evsim.convert(evsim.load(QCFS)), snn)
    result = invoke("run", snn, "--data", TEST, *SMALL, "--neuron", "gn")
    assert result.exit_code == 2
    assert "--neuron gn does not apply" in result.output and "ConversionOptions" not in result.output


# --------------------------------------------------------------------------- 11. --samples too large
def test_samples_larger_than_the_data_warns_once(tmp_path):
    result = invoke("run", QCFS, "--data", TEST, "--samples", 5000, "-T", 1, "--no-ann")
    assert result.exit_code == 0
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warning == [f"warning: --samples 5,000: {TEST} has 1,000 samples; using 1,000"]
    assert "accuracy over 1000 samples" in result.stdout


# --------------------------------------------------------------------------- 12. parameter counts
def test_parameter_count_has_one_definition():
    result = invoke("inspect", QCFS)
    assert ("total: 39,326 parameters (all stored array elements, incl. BatchNorm running statistics; "
            "39,102 trainable)") in result.output
    readme = Path(str(DATA / "README.md")).read_text()
    assert "39,326" in readme and "39,102" in readme and "running statistics" in readme


# --------------------------------------------------------------------------- issue 17: the last resort
@pytest.fixture
def broken_inspect(monkeypatch):
    import evsim.summary

    def boom(graph):
        raise ValueError("something evsim did not expect")

    monkeypatch.setattr(evsim.summary, "summary_json", boom)


def test_unexpected_exception_is_one_line_asking_for_a_report(broken_inspect):
    result = invoke("inspect", QCFS)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "Error: internal error (ValueError: something evsim did not expect). This is a bug in evsim; please report "
        "it with the command you ran (run again with -v or EVSIM_DEBUG=1 for the traceback)"]


@pytest.mark.parametrize("how", [["-v"], ["--debug-env"]])
def test_traceback_only_on_request(how, broken_inspect):
    args, env = (["inspect", QCFS, "-v"], None) if how == ["-v"] else (["inspect", QCFS], {"EVSIM_DEBUG": "1"})
    result = invoke(*args, env=env)
    assert result.exit_code == 1
    assert "Traceback (most recent call last)" in result.stderr and "summary_json" not in result.stdout
    assert result.stderr.strip().splitlines()[-1].startswith("Error: internal error (ValueError")


def test_out_of_memory_is_one_line(monkeypatch):
    import evsim.summary

    def boom(graph):
        raise MemoryError("Unable to allocate 64.0 GiB for an array with shape (8, 1073741824)")

    monkeypatch.setattr(evsim.summary, "summary_json", boom)
    result = invoke("inspect", QCFS)
    assert result.exit_code == 1
    assert errors(result.stderr) == ["Error: out of memory (Unable to allocate 64.0 GiB for an array with shape "
                                     "(8, 1073741824)); lower --batch-size, -T or --samples"]


def _odd_model(tmp_path) -> Path:
    name = "fc\ud800\n\x1b[31mé"
    manifest = {"format": "evsim-model", "version": 1, "kind": "ann", "input": {"shape": [4]},
                "nodes": [{"name": name, "op": "linear", "inputs": ["input"], "weight": "w"}], "output": name}
    path = tmp_path / "odd.npz"
    write_container(path, json.dumps(manifest), {"w": np.ones((2, 4))})
    return path


@pytest.mark.parametrize("encoding", ["utf-8", "ascii"])
def test_odd_names_are_printed_escaped(encoding, tmp_path):
    path = _odd_model(tmp_path)
    done = cli("inspect", path, env={"PYTHONIOENCODING": encoding})
    assert done.returncode == 0, done.stderr
    assert "UnicodeEncodeError" not in done.stderr
    expected = "fc\\ud800\\n\\x1b[31m" + ("é" if encoding == "utf-8" else "\\xe9")
    assert f"output '{expected}'" in done.stdout and "\x1b" not in done.stdout
    assert json.loads(cli("inspect", path, "--json").stdout)["output"] == "fc\ud800\n\x1b[31mé"


def test_escape():
    assert escape("a\tb") == "a\tb" and escape("\ud800x\x00\x9b") == "\\ud800x\\x00\\x9b"
    assert escape("é", "ascii") == "\\xe9" and escape("é", "utf-8") == "é"


def test_error_lines_are_cut(tmp_path):
    path = tmp_path / ("x" * 3000 + ".npz")
    result = invoke("inspect", path)
    line = errors(result.stderr)[0]
    assert result.exit_code == 1 and len(line) < 1100 and line.endswith("more characters)")


# --------------------------------------------------------------------------- issue 11: registry-driven options
def test_plugin_model_from_an_entry_point_is_a_cli_choice(tmp_path):
    site = write_plugin_distribution(tmp_path / "site", "gainif_cli_plugin")
    env = {"PYTHONPATH": str(site)}
    assert "gainif (gain, default 2.0)" in " ".join(cli("run", "--help", env=env).stdout.split())
    done = cli("run", QCFS, "--data", TEST, *SMALL, "--neuron", "gainif", "--neuron-param", "gain=1.5", "--json",
               env=env)
    assert done.returncode == 0, done.stderr
    conversion = json.loads(done.stdout)["settings"]["conversion"]
    assert conversion["neuron"] == "gainif" and conversion["gain"] == 1.5
    for extra, words in ((["--neuron-param", "gain=x"], "gain=x: gain of --neuron gainif must be a finite number"),
                         (["--reset", "zero"], "--reset zero does not apply to --neuron gainif"),
                         (["--tau", "4"], "--tau 4 does not apply to --neuron gainif")):
        done = cli("run", QCFS, "--data", TEST, *SMALL, "--neuron", "gainif", *extra, env=env)
        assert done.returncode == 2 and words in done.stderr, done.stderr
