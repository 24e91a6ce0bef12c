"""Read a model file by its content: the evsim format v1, or any registered importer.

``evsim.load(path)`` calls :func:`read`.  It reads the first bytes of the file, asks every
registered :class:`Importer` whether the file is theirs (``sniff``), and hands the file to the
one that says yes (``read``).  Extensions are not trusted: a Keras ``.h5`` and an evsim ``.h5``
are told apart by their root attributes, an ``.npz`` by its members.

Importers other than format v1 live outside the core (``evsim.converters``, or another package)
and register themselves through the entry-point group ``evsim.importers``; the core never imports
them by name.  An entry point names either an :class:`Importer` or a callable returning one::

    [project.entry-points."evsim.importers"]
    onnx = "evsim.converters.onnx_importer:IMPORTER"

A NIR importer registers the same way.  NIR files are HDF5 too: its ``sniff`` must claim only
files that are NIR (e.g. a root group ``node`` and no ``evsim``/``model_config`` attribute, see
:func:`hdf5_keys`), and the format-v1 and Keras sniffers leave such files alone.

The graph that :func:`read` returns has an attribute ``importer`` (the importer's name, e.g.
``"evsim-v1"`` or ``"onnx"``); ``evsim inspect`` prints it.  It is not saved in files.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import ContainerError, ConversionError, describe
from .graph import Graph

__all__ = ["Importer", "register_importer", "available_importers", "identify", "read", "hdf5_keys", "zip_names",
           "is_hdf5", "is_zip", "ENTRY_POINT_GROUP", "HEAD_BYTES"]

#: entry-point group through which importer plug-ins register
ENTRY_POINT_GROUP = "evsim.importers"
#: bytes of the file that every ``sniff`` receives
HEAD_BYTES = 512
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_V1_SUFFIXES = (".npz", ".h5", ".hdf5")


@dataclass(frozen=True)
class Importer:
    """A model-file reader.

    Attributes
    ----------
    name : str
        Short name, shown by ``evsim inspect`` (e.g. ``"onnx"``).
    sniff : callable
        ``sniff(path, head) -> bool``: is this file one of ours?  ``head`` holds the first
        :data:`HEAD_BYTES` bytes.  Must be cheap, must not read large data, and must not raise
        (an exception counts as "no").
    read : callable
        ``read(path, *, limit=None, **options) -> Graph``: the validated graph.  ``limit`` is the
        memory limit in bytes (``None``: :func:`evsim.graph.memory_limit`).
    description : str
        What files it reads, for messages (e.g. ``"ONNX (opset 13-21)"``).
    options : frozenset of str
        Names of the importer options ``read`` accepts (passed as ``evsim.load(path, **options)``).
        Any other option is refused rather than ignored.
    """

    name: str
    sniff: Callable[[Path, bytes], bool]
    read: Callable[..., Graph]
    description: str = ""
    options: frozenset = field(default_factory=frozenset)


_REGISTRY: dict[str, Importer] = {}
_PLUGIN_ERRORS: dict[str, str] = {}
_plugins_loaded = False


def register_importer(importer: Importer, *, replace: bool = False) -> Importer:
    """Add an importer to the registry (plug-ins normally use the entry-point group instead).

    Raises
    ------
    ConversionError
        The name is taken and ``replace`` is false.
    """
    if not isinstance(importer, Importer):
        raise ConversionError(describe("register_importer", "an evsim.importers.Importer", type(importer).__name__))
    if importer.name in _REGISTRY and not replace and _REGISTRY[importer.name] is not importer:
        raise ConversionError(describe(f"importer '{importer.name}'", "a name not registered yet", "a duplicate",
                                       "pass replace=True to override it"))
    _REGISTRY[importer.name] = importer
    return importer


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if ep.name in _REGISTRY:
            continue
        try:
            obj = ep.load()
            importer = obj if isinstance(obj, Importer) else obj()
            register_importer(importer)
        except Exception as exc:  # noqa: BLE001 - a broken plug-in must not stop evsim from reading other files
            _PLUGIN_ERRORS[ep.name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def available_importers() -> list[Importer]:
    """Every registered importer, format v1 first, then the plug-ins by name."""
    _load_plugins()
    return list(_REGISTRY.values())


# --------------------------------------------------------------------------- sniffing helpers
def is_zip(head: bytes) -> bool:
    return head[:4] in (b"PK\x03\x04", b"PK\x05\x06")


def is_hdf5(head: bytes) -> bool:
    """HDF5 signature at offset 0 (files with a user block put it at 512, 1024, ...: see h5py.is_hdf5)."""
    return head[:8] == _HDF5_MAGIC


def zip_names(path) -> set[str]:
    """Member names of a zip file (its central directory only; nothing is decompressed)."""
    with zipfile.ZipFile(path) as archive:
        return set(archive.namelist())


def hdf5_keys(path) -> tuple[set[str], set[str]]:
    """``(root attribute names, root member names)`` of an HDF5 file.

    Only names are read: reading an attribute's *value* is what hangs libhdf5 on some corrupted
    files, and sniffers must stay safe on them.
    """
    import h5py

    with h5py.File(path, "r") as f:
        return set(f.attrs.keys()), set(f.keys())


def _sniff_v1(path: Path, head: bytes) -> bool:
    if is_zip(head):
        return "__evsim__.npy" in zip_names(path)
    if is_hdf5(head):
        return "evsim" in hdf5_keys(path)[0]
    return False


def _read_v1(path, *, limit=None) -> Graph:
    from .format import read_v1

    return read_v1(path, limit)


register_importer(Importer("evsim-v1", _sniff_v1, _read_v1, "evsim format v1 (.npz/.h5 with a JSON manifest)"))


# --------------------------------------------------------------------------- dispatch
def _head(path: Path) -> bytes:
    if not path.is_file():
        raise ContainerError(describe(str(path), "an existing file", "nothing at that path"))
    try:
        with open(path, "rb") as f:
            return f.read(HEAD_BYTES)
    except OSError as exc:
        raise ContainerError(describe(str(path), "a readable file", exc.strerror or str(exc))) from None


def identify(path, head: bytes | None = None) -> Importer | None:
    """The importer whose ``sniff`` claims ``path``, or None."""
    path = Path(path)
    head = _head(path) if head is None else head
    # the importers registered so far (format v1) first: an evsim file never loads the plug-ins
    builtin = list(_REGISTRY.values())
    for importer in builtin + [i for i in available_importers() if i not in builtin]:
        try:
            if importer.sniff(path, head):
                return importer
        except Exception:  # noqa: BLE001 - a sniffer that fails on a foreign file just says no
            continue
    return None


def _looks_like(head: bytes) -> str:
    if not head:
        return "an empty file"
    if is_zip(head):
        return "a zip archive of another kind"
    if is_hdf5(head):
        return "an HDF5 file of another kind"
    return "an unrecognised file"


def read(path, *, limit: int | None = None, **options) -> Graph:
    """Read and validate a model file of any supported format (``evsim.load`` calls this).

    Parameters
    ----------
    path : str or Path
    limit : int, optional
        Bytes the model may declare (default :func:`evsim.graph.memory_limit`).
    **options
        Importer options (e.g. ``activations=`` for Keras and ONNX custom layers).  An option the
        chosen importer does not take is refused.

    Returns
    -------
    Graph
        The validated graph; ``graph.importer`` names the importer that read it.

    Raises
    ------
    evsim.errors.ContainerError
        No importer recognises the file (the message lists what evsim reads).
    evsim.errors.ConversionError
        An option that does not apply to this kind of file, or a model the importer refuses.
    """
    path = Path(path)
    head = _head(path)
    importer = identify(path, head)
    if importer is None:
        if path.suffix.lower() in _V1_SUFFIXES and not options:
            # not claimed by anyone: the format-v1 reader explains what is wrong with the container
            importer = _REGISTRY["evsim-v1"]
        else:
            kinds = "; ".join(i.description or i.name for i in available_importers())
            broken = "".join(f"; importer plug-in '{n}' failed to load ({e})" for n, e in _PLUGIN_ERRORS.items())
            raise ContainerError(describe(str(path), f"a model file evsim can read ({kinds})", _looks_like(head),
                                          "check the file, or install the extra its importer needs" + broken))
    unknown = sorted(set(options) - set(importer.options))
    if unknown:
        takes = ", ".join(sorted(importer.options)) or "none"
        raise ConversionError(describe(f"{path}, option '{unknown[0]}'",
                                       f"options of the '{importer.name}' importer that reads this file ({takes})",
                                       repr(unknown[0]), "drop the option for this file"))
    graph = importer.read(path, limit=limit, **options)
    graph.importer = importer.name
    return graph
