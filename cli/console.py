"""What the CLI prints: escaped text, verbosity, and a status line on a terminal.

Everything the commands print goes through :class:`Console`, one per invocation
(``ctx.obj``).  It knows the verbosity (``-q`` 0, default 1, ``-v`` 2) and whether stderr
is a terminal.  On a terminal, long steps show one status line on stderr that is
redrawn by a small thread (so the elapsed time moves even while Numba compiles in C);
when stderr is not a terminal nothing transient is printed, and ``-v`` prints one plain
line per finished step instead.  Results go to stdout; progress, warnings and errors to
stderr.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager

import click

__all__ = ["Console", "escape", "get_console"]

_SPINNER = "|/-\\"
_REFRESH_S = 0.12


def escape(text, encoding: str | None = None) -> str:
    """``text`` made safe to print on one line: control characters and lone surrogates
    become ``\\n``, ``\\x1b``, ``\\ud800``..., and anything the stream's ``encoding``
    cannot represent becomes a backslash escape (never a ``UnicodeEncodeError``)."""
    text = str(text)
    out = []
    for ch in text:
        code = ord(ch)
        if ch == "\t" or (0x20 <= code < 0x7F) or (code >= 0xA0 and not 0xD800 <= code <= 0xDFFF):
            out.append(ch)
        elif ch == "\n":
            out.append("\\n")
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        else:
            out.append(f"\\u{code:04x}")
    text = "".join(out)
    if encoding:
        text = text.encode(encoding, "backslashreplace").decode(encoding)
    return text


def _encoding(stream) -> str:
    return getattr(stream, "encoding", None) or "utf-8"


class Console:
    """Output of one CLI invocation.

    Parameters
    ----------
    verbosity : int
        0 quiet (``-q``: results and errors only), 1 normal, 2 verbose (``-v``).
    stream : file, optional
        Where status lines, notes and warnings go (default ``sys.stderr``).
    live : bool, optional
        Draw a transient status line; default: ``stream`` is a terminal and
        ``TERM`` is not ``dumb`` (``EVSIM_PROGRESS=1`` forces it, ``0`` turns it off).
    """

    def __init__(self, verbosity: int = 1, stream=None, live: bool | None = None):
        self.verbosity = verbosity
        self._stream = stream
        if live is None:
            forced = os.environ.get("EVSIM_PROGRESS", "").strip()
            if forced in ("0", "1"):
                live = forced == "1"
            else:
                s = self.stream
                live = bool(getattr(s, "isatty", lambda: False)()) and os.environ.get("TERM") != "dumb"
        self._live = bool(live)
        self._lock = threading.RLock()
        self._tasks: list[_Task] = []
        self._overlay: str | None = None
        self._overlay_since = 0.0
        self._drawn = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def live(self) -> bool:
        """Whether transient status lines are drawn."""
        return self._live and self.verbosity > 0

    def set_verbosity(self, level: int) -> None:
        self.verbosity = level

    @property
    def verbose(self) -> bool:
        return self.verbosity >= 2

    @property
    def stream(self):
        return self._stream if self._stream is not None else sys.stderr

    # ------------------------------------------------------------------ plain lines
    def out(self, text: str = "") -> None:
        """A line of the result, on stdout (escaped for its encoding)."""
        with self._lock:
            self._clear()
            stdout = sys.stdout
            click.echo("\n".join(escape(line, _encoding(stdout)) for line in str(text).split("\n")), file=stdout)

    def err(self, text: str) -> None:
        """One line on stderr whatever the verbosity (errors, warnings)."""
        with self._lock:
            self._clear()
            click.echo(escape(text, _encoding(self.stream)), file=self.stream)

    def err_lines(self, text: str) -> None:
        """Several lines on stderr (a traceback), each escaped."""
        with self._lock:
            self._clear()
            enc = _encoding(self.stream)
            click.echo("\n".join(escape(line, enc) for line in str(text).split("\n")), file=self.stream)

    def warn(self, text: str) -> None:
        """A one-line warning (printed even with ``-q``)."""
        self.err(f"warning: {text}")

    def note(self, text: str) -> None:
        """A status note on stderr (not with ``-q``)."""
        if self.verbosity >= 1:
            self.err(text)

    def detail(self, text: str) -> None:
        """A detail on stderr, only with ``-v``."""
        if self.verbosity >= 2:
            self.err(text)

    # ------------------------------------------------------------------ the status line
    @contextmanager
    def task(self, label: str, total: int | None = None, unit: str = ""):
        """A step that may take a while: shown live on a terminal (with a count when
        ``total`` is given), reported with its duration under ``-v``.  Yields the task;
        call ``task.advance(n)`` as work finishes."""
        task = _Task(label, total, unit)
        with self._lock:
            self._tasks.append(task)
            self._ensure_thread()
            if self.live:  # drawn at once: a step shorter than one refresh is still seen
                self._draw(self._line(0))
        ok = False
        try:
            yield task
            ok = True
        finally:
            with self._lock:
                self._tasks.remove(task)
                self._clear()
            if ok:
                self.detail(f"{label}: done in {time.perf_counter() - task.start:.1f} s")

    def overlay(self, text: str | None) -> None:
        """Temporarily replace the status text (e.g. while Numba compiles a kernel)."""
        with self._lock:
            self._overlay = text
            self._overlay_since = time.perf_counter()
            if text is not None:
                self._ensure_thread()

    def close(self) -> None:
        """Stop the redraw thread and clear the status line."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)
        with self._lock:
            self._clear()

    def _ensure_thread(self) -> None:
        if not self.live or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="evsim-status", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        frame = 0
        while not self._stop.wait(_REFRESH_S):
            with self._lock:
                text = self._line(frame)
                if text is None:
                    self._clear()
                else:
                    self._draw(text)
            frame += 1

    def _line(self, frame: int) -> str | None:
        if not self._tasks and self._overlay is None:
            return None
        parts = []
        if self._overlay is not None:  # first: on a narrow terminal the task is what gets cut
            parts.append(f"{self._overlay} {time.perf_counter() - self._overlay_since:.0f} s")
        if self._tasks:
            parts.append(self._tasks[-1].describe())
        return f"{_SPINNER[frame % len(_SPINNER)]} " + " | ".join(parts)

    def _draw(self, text: str) -> None:
        width = _terminal_width()
        text = escape(text, _encoding(self.stream))[: width - 1]
        self.stream.write("\r" + text + "\x1b[K")
        self.stream.flush()
        self._drawn = len(text)

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = 0


class _Task:
    def __init__(self, label: str, total: int | None, unit: str):
        self.label, self.total, self.unit = label, total, unit
        self.done = 0
        self.start = time.perf_counter()

    def advance(self, n: int = 1) -> None:
        self.done += int(n)

    def describe(self) -> str:
        elapsed = time.perf_counter() - self.start
        count = ""
        if self.total:
            count = f" {self.done:,}/{self.total:,}{' ' + self.unit if self.unit else ''}"
        return f"{self.label}{count} ({elapsed:.0f} s)"


def _terminal_width() -> int:
    try:
        return max(20, os.get_terminal_size(sys.stderr.fileno()).columns)
    except (OSError, ValueError, AttributeError):
        return 80


def get_console() -> Console:
    """The console of the running command (a default one outside a click context)."""
    ctx = click.get_current_context(silent=True)
    while ctx is not None:
        if isinstance(ctx.obj, Console):
            return ctx.obj
        ctx = ctx.parent
    return Console()
