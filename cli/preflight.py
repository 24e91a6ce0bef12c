"""Check output paths before any work, so a long run never ends in "cannot write".

:func:`preflight_output` (a file evsim will write: ``--report``, ``-o``) and
:func:`preflight_dir` (a directory it will write into: ``--report-dir``,
``--checkpoint``) raise :class:`click.BadParameter` naming the option, the path and
what is wrong with it:

* a component of the path exists but is not a directory ("afile/r.json": ``afile`` is
  a file);
* the target exists and is a directory, a device, a FIFO or a socket (evsim writes
  regular files only; a symbolic link is judged by what it points to, and a dangling
  one is refused);
* the directory that would hold the output is not writable, or the nearest existing
  ancestor of a directory still to be created is not (checked by creating and removing
  a probe file there, which also catches read-only file systems);
* the output is one of the command's input files.

Nothing is created on success: directories that do not exist yet are made when the
output is written.
"""
from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import click

__all__ = ["preflight_output", "preflight_dir", "STDOUT"]

#: the path that means "standard output" where an option allows it (``--report -``)
STDOUT = "-"


def _fail(option: str, path, problem: str, fix: str | None = None):
    from .console import escape

    text = f"{escape(path)}: {problem}" + (f"; {fix}" if fix else "")
    raise click.BadParameter(text, param_hint=f"'{option}'")


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _existing_ancestor(path: Path, option: str, original) -> Path:
    """The nearest existing ancestor of ``path``; every existing component must be a directory."""
    current = path
    while True:
        try:
            st = current.stat()
        except FileNotFoundError:
            parent = current.parent
            if parent == current:
                _fail(option, original, "no part of this path exists")
            current = parent
            continue
        except NotADirectoryError:
            # some component above is a file: find which one, for the message
            for parent in reversed(current.parents):
                if parent.exists() and not parent.is_dir():
                    _fail(option, original, f"{parent} is not a directory",
                          "choose a path inside a directory")
            _fail(option, original, "a part of this path is not a directory")
        except PermissionError:
            _fail(option, original, f"permission denied looking at {current}")
        except OSError as exc:
            _fail(option, original, f"cannot use it ({exc.strerror or exc})")
        if not stat.S_ISDIR(st.st_mode):
            _fail(option, original, f"{current} is not a directory", "choose a path inside a directory")
        return current


def _probe(directory: Path, option: str, original, what: str) -> None:
    """Create and remove a file in ``directory``: the only reliable writability test."""
    try:
        fd, name = tempfile.mkstemp(prefix=".evsim-preflight-", dir=directory)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        _fail(option, original, f"cannot create {what} in {directory} ({reason})",
              "choose a writable location")
    os.close(fd)
    try:
        os.unlink(name)
    except OSError:
        pass


def _same_file(a: Path, b) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError, TypeError):
        return False


def preflight_output(path, option: str = "--output", inputs=()) -> Path:
    """Check that a file can be written at ``path``, before any work.

    Parameters
    ----------
    path : str or Path
        The output file.
    option : str
        The option that gave it, for the message (e.g. ``"--report"``).
    inputs : iterable of path
        Files the command reads; writing over one of them is refused.

    Returns
    -------
    Path
        ``path`` as a :class:`~pathlib.Path`.

    Raises
    ------
    click.BadParameter
        What is wrong with which path (see the module docstring).
    """
    original = path
    path = Path(path)
    if str(original) == "" or str(original).endswith(os.sep):
        _fail(option, original, "a file name is needed, not a directory")
    try:
        st = os.stat(path)  # follows a symlink: the file it points to is what gets written
    except FileNotFoundError:
        st = None
        if path.is_symlink():
            _fail(option, original, "a dangling symbolic link", "remove it or choose another name")
    except NotADirectoryError:
        st = None
    except PermissionError:
        _fail(option, original, "permission denied")
    except OSError as exc:
        _fail(option, original, f"cannot use it ({exc.strerror or exc})")
    if st is not None:
        if not stat.S_ISREG(st.st_mode):
            _fail(option, original, f"it is {_kind(st.st_mode)}; evsim writes regular files only",
                  "choose a file name")
        for source in inputs:
            if source is not None and _same_file(path, source):
                _fail(option, original, "this is an input file of the command", "write the output elsewhere")
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    parent = target.parent if str(target.parent) else Path(".")
    ancestor = _existing_ancestor(parent, option, original)
    if st is not None and not os.access(target, os.W_OK):
        # atomic writes replace the file, which only needs the directory; keep the file's protection anyway
        _fail(option, original, "the file exists and is read-only", "make it writable or choose another name")
    _probe(ancestor, option, original, "a file" if ancestor == parent else "the missing directories")
    return path


def preflight_dir(path, option: str = "--report-dir") -> Path:
    """Check that files can be written into directory ``path`` (created if missing).

    Raises
    ------
    click.BadParameter
        ``path`` (or a part of it) is a file, or no file can be created there.
    """
    original = path
    path = Path(path)
    if str(original) == "":
        _fail(option, original, "a directory name is needed")
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        st = None
    except PermissionError:
        _fail(option, original, "permission denied")
    except OSError as exc:
        _fail(option, original, f"cannot use it ({exc.strerror or exc})")
    if st is not None and not stat.S_ISDIR(st.st_mode):
        _fail(option, original, f"it is {'a file' if stat.S_ISREG(st.st_mode) else _kind(st.st_mode)}, "
                                "not a directory", "choose a directory")
    ancestor = _existing_ancestor(path, option, original)
    _probe(ancestor, option, original, "files" if ancestor == path else "the directory")
    return path
