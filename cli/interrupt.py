"""Ctrl-C (SIGINT) and SIGTERM for the CLI: stop promptly, exit 130 (143), print one line.

Python turns SIGINT into ``KeyboardInterrupt`` in whatever Python code the main thread
runs next.  While Numba compiles, that is often a ctypes callback called from LLVM,
which *swallows* the exception ("Exception ignored on calling ctypes callback
function") and compilation goes on as if nothing happened.  So the handler here also
remembers the signal, and the CLI checks that memory at *checkpoints* (and, when the signal lands in llvmlite's code, raises nothing
there, since the exception would only be printed and dropped): before every
Numba compiler pass of every kernel (a listener on Numba's ``numba:run_pass`` and
``numba:compile`` events), after every batch, and before any output is written.
A signal is therefore never lost, and during compilation it takes effect within one
compiler pass.  A second Ctrl-C while the first is still pending ends the process at
once (exit 130).

Output files are written atomically (a temporary file renamed into place, removed on
``KeyboardInterrupt``), so an interrupted command leaves no partial file.
"""
from __future__ import annotations

import os
import signal
import sys
import threading

__all__ = ["Interrupted", "install", "uninstall", "checkpoint", "watch_numba", "pending", "report_interrupt",
           "EXIT_CODES"]

#: exit status per signal, as a shell reports a process killed by it (128 + number)
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
_NAMES = {signal.SIGINT: "interrupted (Ctrl-C)", signal.SIGTERM: "terminated (SIGTERM)"}

_pending: int | None = None  # the signal received and not yet acted upon
_previous: dict | None = None  # handlers to restore, while installed
_numba_watched = False


class Interrupted(KeyboardInterrupt):
    """Raised at a checkpoint (or by the handler) when SIGINT/SIGTERM was received."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(_NAMES.get(signum, f"signal {signum}"))
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signum, 128 + int(self.signum))


def _handler(signum, frame):
    global _pending
    if _pending is not None:  # the first one was swallowed, or cleanup is slow: stop now
        try:
            os.write(2, f"\nevsim: {_NAMES.get(signum, 'signal')} again; stopping at once\n".encode())
        finally:
            os._exit(EXIT_CODES.get(signum, 130))
    _pending = signum
    if _in_foreign_callback(frame):
        return  # an exception raised here would be swallowed (and printed): the next checkpoint raises it
    raise Interrupted(signum)


#: Python code that C calls back (LLVM's object cache hooks): an exception there is "ignored"
_CALLBACK_FILES = (os.sep + os.path.join("llvmlite", "binding") + os.sep,)


def _in_foreign_callback(frame, depth: int = 40) -> bool:
    while frame is not None and depth > 0:
        if any(part in frame.f_code.co_filename for part in _CALLBACK_FILES):
            return True
        frame, depth = frame.f_back, depth - 1
    return False


def install() -> None:
    """Route SIGINT and SIGTERM through the checkpoint mechanism (main thread only)."""
    global _previous, _pending
    _pending = None
    if _previous is not None or threading.current_thread() is not threading.main_thread():
        return
    _previous = {sig: signal.signal(sig, _handler) for sig in EXIT_CODES}


def uninstall() -> None:
    """Restore the handlers :func:`install` replaced."""
    global _previous
    if _previous is None or threading.current_thread() is not threading.main_thread():
        return
    for sig, previous in _previous.items():
        signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
    _previous = None


def pending() -> int | None:
    """The signal received but not yet acted upon, if any."""
    return _pending


def checkpoint() -> None:
    """Raise :class:`Interrupted` if a signal arrived and was swallowed on its way."""
    if _pending is not None and threading.current_thread() is threading.main_thread():
        raise Interrupted(_pending)


def clear() -> None:
    """Forget a pending signal (after it has been reported)."""
    global _pending
    _pending = None


def watch_numba(console=None) -> None:
    """Check for a pending signal before every Numba compiler pass, and show on
    ``console`` which kernel is being compiled.  Imports Numba: call it only from
    commands that run the engine."""
    global _numba_watched
    _CompileListener.console = console
    if _numba_watched:
        return
    from numba.core import event

    class Listener(_CompileListener, event.Listener):
        def on_start(self, evt):
            self.notify_event(evt)

        def on_end(self, evt):
            self.notify_event(evt)

    listener = Listener()
    event.register("numba:compile", listener)
    event.register("numba:run_pass", listener)
    _numba_watched = True


def _kernel_name(event) -> str:
    data = event.data or {}
    dispatcher = data.get("dispatcher")
    name = getattr(getattr(dispatcher, "py_func", None), "__name__", None) or "kernel"
    args = data.get("args") or ()
    dtype = next((str(getattr(a, "dtype", a)) for a in args if str(getattr(a, "dtype", a)).startswith("float")), "")
    return f"{name} ({dtype})" if dtype else name


class _CompileListener:
    """Numba event listener: a checkpoint at every compile and compiler pass, and the
    console's "compiling ..." overlay for the outermost kernel being compiled."""

    console = None
    depth = 0
    compiled = 0

    def notify_event(self, event):
        if event.kind == "numba:compile":
            cls = type(self)
            if event.is_start:
                cls.depth += 1
                if cls.depth == 1 and cls.console is not None:
                    cls.console.overlay(f"compiling Numba kernel {_kernel_name(event)}, first run only")
                checkpoint()
            else:
                cls.depth = max(0, cls.depth - 1)
                if cls.depth == 0:
                    cls.compiled += 1
                    if cls.console is not None:
                        cls.console.overlay(None)
        elif event.is_start:
            checkpoint()


def report_interrupt(exc: Interrupted, console=None) -> int:
    """Print the one line for an interrupt and return the exit code."""
    text = f"evsim: {exc}; stopped, no partial output left"
    if console is not None:
        console.close()
        console.err(text)
    else:
        print(text, file=sys.stderr)
    clear()
    return exc.exit_code
