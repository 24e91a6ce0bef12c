"""Run evsim on untrusted files in child processes, with a timeout and a memory limit, and classify.

Outcomes: ``ok`` (success), ``refused`` (a clean :class:`~evsim.errors.EvsimError` /
one-line CLI error), and the three defects the suite exists to find: ``traceback`` (any
other exception, including the CLI's "please report" last-resort line), ``signal`` (the
child died of a signal: segfault, abort) and ``timeout`` (a hang).
"""
from __future__ import annotations

import json
import os
import resource
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNNER = HERE / "runner.py"
ROOT = HERE.parent.parent
DEFECTS = ("traceback", "signal", "timeout")
#: address space of a child: enough for Python + NumPy + Numba, far below a fuzz-induced blow-up
ADDRESS_SPACE = 4 * 2**30
#: EVSIM_MEMORY_LIMIT inside the children: declared sizes are refused well before ADDRESS_SPACE
EVSIM_LIMIT = "1G"


@dataclass
class Outcome:
    path: str  # the file, or the CLI command
    outcome: str
    detail: str = ""
    seconds: float = 0.0
    files: tuple = ()  # the input files involved (kept when it is a defect)

    @property
    def defect(self) -> bool:
        return self.outcome in DEFECTS


def _limit_memory(limit: int):
    def preexec():  # runs in the child between fork and exec
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return preexec


def child_env() -> dict:
    env = dict(os.environ)
    env.update({"EVSIM_MEMORY_LIMIT": EVSIM_LIMIT, "EVSIM_DEBUG": "1", "PYTHONFAULTHANDLER": "1",
                "PYTHONPATH": os.pathsep.join([str(HERE)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                                              if p])})
    return env


def run_api(mode: str, files: list[Path], timeout: float = 20.0, startup: float = 300.0,
            memory: int = ADDRESS_SPACE) -> list[Outcome]:
    """Run ``runner.py MODE`` over ``files``; a file that hangs or kills the child is pinned and skipped."""
    files = [str(f) for f in files]
    results: dict[int, Outcome] = {}
    todo = list(range(len(files)))
    with tempfile.TemporaryDirectory() as tmp:
        while todo:
            listing = Path(tmp) / "files.json"
            listing.write_text(json.dumps([files[i] for i in todo]), encoding="utf-8")
            with open(Path(tmp) / "stderr", "w+b") as err:
                proc = subprocess.Popen([sys.executable, str(RUNNER), mode, str(listing)], stdout=subprocess.PIPE,
                                        stderr=err, env=child_env(), cwd=tmp, preexec_fn=_limit_memory(memory))
                current, started = None, time.monotonic()
                deadline = started + startup
                buffer = b""
                with selectors.DefaultSelector() as sel:
                    sel.register(proc.stdout, selectors.EVENT_READ)
                    eof = False
                    while not eof:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            proc.kill()
                            proc.wait()
                            break
                        if not sel.select(timeout=min(left, 1.0)):
                            continue
                        chunk = os.read(proc.stdout.fileno(), 65536)
                        if not chunk:
                            eof = True
                            break
                        buffer += chunk
                        while b"\n" in buffer:
                            line, buffer = buffer.split(b"\n", 1)
                            msg = json.loads(line)
                            if "start" in msg:
                                current, started = todo[msg["start"]], time.monotonic()
                                deadline = started + timeout
                            else:
                                index = todo[msg["i"]]
                                results[index] = Outcome(files[index], msg["outcome"], msg["detail"],
                                                         time.monotonic() - started)
                                current = None
                proc.stdout.close()
                rc = proc.wait()
                err.seek(0)
                stderr = err.read().decode("utf-8", "replace")[-3000:]
            if current is not None and current not in results:  # the child hung or died on this file
                if not eof:
                    results[current] = Outcome(files[current], "timeout", f"no answer in {timeout} s",
                                               time.monotonic() - started)
                else:
                    kind = "signal" if rc < 0 else "traceback"
                    results[current] = Outcome(files[current], kind, f"exit {rc}: {stderr}", 0.0)
            elif current is None and len(results) < len(files) and rc != 0:
                # died between files (startup): report once on the first unfinished file
                first = next(i for i in todo if i not in results)
                results[first] = Outcome(files[first], "signal" if rc < 0 else "traceback",
                                         f"runner exit {rc}: {stderr}")
            todo = [i for i in todo if i not in results]
    return [results[i] for i in range(len(files))]


def evsim_command() -> list[str]:
    script = shutil.which("evsim", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "evsim.cli.main"]


def run_cli(args: list, timeout: float = 60.0, memory: int = ADDRESS_SPACE, cwd: Path | None = None,
            env: dict | None = None) -> Outcome:
    """Run ``evsim ARGS``; refused = exit 1/2 without a traceback or a 'please report' line."""
    files = tuple(str(a) for a in args if isinstance(a, Path) and a.is_file())
    outcome = _run_cli(args, timeout, memory, cwd, env)
    outcome.files = files
    return outcome


def _run_cli(args, timeout, memory, cwd, env) -> Outcome:
    start = time.monotonic()
    full_env = child_env()
    full_env.update(env or {})
    try:
        proc = subprocess.run(evsim_command() + [str(a) for a in args], capture_output=True, timeout=timeout,
                              env=full_env, cwd=cwd or ROOT, preexec_fn=_limit_memory(memory))
    except subprocess.TimeoutExpired:
        return Outcome(" ".join(map(str, args)), "timeout", f"no answer in {timeout} s", timeout)
    seconds = time.monotonic() - start
    out = (proc.stdout + proc.stderr).decode("utf-8", "replace")
    what = " ".join(map(str, args))
    if proc.returncode < 0:
        return Outcome(what, "signal", f"signal {-proc.returncode}: {out[-2000:]}", seconds)
    if "Traceback (most recent call last)" in out or "please report" in out.lower():
        return Outcome(what, "traceback", out[-3000:], seconds)
    if proc.returncode == 0:
        return Outcome(what, "ok", out[-5000:], seconds)
    if proc.returncode in (1, 2):
        return Outcome(what, "refused", out.strip().splitlines()[-1][:500] if out.strip() else "", seconds)
    return Outcome(what, "traceback", f"exit {proc.returncode}: {out[-2000:]}", seconds)


def report(outcomes: list[Outcome], keep: Path | None = None) -> str:
    """A summary line per defect (and copies of the defect files in ``keep``, for reproducers)."""
    lines = []
    for o in outcomes:
        if o.defect:
            lines.append(f"{o.outcome}: {o.path}\n    {o.detail.strip()[-1500:]}")
            for name in o.files or (o.path,):
                if keep is not None and Path(name).is_file():
                    keep.mkdir(parents=True, exist_ok=True)
                    shutil.copy(name, keep / f"{Path(name).parent.name}-{Path(name).name}")
    return "\n".join(lines)


def tally(outcomes: list[Outcome]) -> dict:
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.outcome] = counts.get(o.outcome, 0) + 1
    return counts
