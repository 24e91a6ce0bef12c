"""Reading and writing the evsim model format v1 (``docs/format.md``).

Two containers hold the same content, a JSON manifest plus named float arrays:

* ``.npz``: entry ``__evsim__`` (0-d unicode array with the JSON), one entry per array;
* ``.h5`` / ``.hdf5``: root attribute ``evsim`` (the JSON), datasets under ``/arrays``.

Readers look at every array's declared shape and dtype *before* reading it, so a
crafted header cannot make evsim allocate more than the memory limit, and every
failure of zipfile, numpy or h5py becomes one :class:`~evsim.errors.ContainerError`
line naming the file.  Writers are atomic: a temporary file is renamed into place.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import stat
import threading
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import (ArrayError, ContainerError, EvsimError, ManifestError, OutputError, ResourceLimitError,
                     describe, truncate)
from .h5guard import check_string_attribute
from .graph import OPS, Graph, InputSpec, Node, memory_limit, validate

__all__ = ["load", "save", "read_container", "read_npz_arrays", "write_container", "graph_from_manifest",
           "manifest_from_graph", "atomic_write", "output_target"]

FORMAT_NAME = "evsim-model"
FORMAT_VERSION = 1
NPZ_MANIFEST = "__evsim__"
H5_MANIFEST = "evsim"
H5_GROUP = "arrays"
_TOP_KEYS = {"format", "version", "kind", "input", "nodes", "output", "metadata"}
_INPUT_KEYS = {"shape", "scale", "mean", "std"}
_NODE_KEYS = {"name", "op", "inputs"}
#: deepest nesting of lists/objects a manifest may have (metadata included): deeper JSON
#: would make copying or printing the graph recurse past Python's stack limit
MAX_NESTING = 64


# --------------------------------------------------------------------------- containers
def check_declared(path, name: str, shape, dtype, limit: int, before: float = 0) -> float:
    """Refuse object arrays and sizes over ``limit`` (``before``: bytes of earlier arrays); return the bytes."""
    if dtype.hasobject:
        raise ContainerError(describe(f"{path}, array '{name}'", "a numeric array",
                                      "an object array (never unpickled)", "store plain float32/float64 arrays"))
    nbytes = float(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    if before + nbytes > limit:
        so_far = f" ({before + nbytes:.3g} bytes with the arrays before it)" if before else ""
        raise ResourceLimitError(describe(f"{path}, array '{name}'",
                                          f"at most {limit} bytes in all arrays (EVSIM_MEMORY_LIMIT)",
                                          f"a declared shape {tuple(shape)} of {nbytes:.3g} bytes{so_far}"))
    return before + nbytes


def read_npz_arrays(path: Path, limit: int) -> dict[str, np.ndarray]:
    """All arrays of an .npz, each declared shape checked against ``limit`` before reading."""
    arrays: dict[str, np.ndarray] = {}
    declared = 0.0
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                raise ContainerError(describe(str(path), "an .npz archive of .npy entries", repr(info.filename)))
            name = info.filename[: -len(".npy")]
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                reader = {(1, 0): np.lib.format.read_array_header_1_0,
                          (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if reader is None:
                    raise ContainerError(describe(f"{path}, entry '{name}'", ".npy format 1.0 or 2.0", f"{version}"))
                shape, _, dtype = reader(member)
                declared = check_declared(path, name, shape, dtype, limit, declared)
            with archive.open(info) as member:
                arrays[name] = np.lib.format.read_array(member, allow_pickle=False)
    return arrays


def _read_npz(path: Path, limit: int) -> tuple[str, dict[str, np.ndarray]]:
    arrays = read_npz_arrays(path, limit)
    if NPZ_MANIFEST not in arrays:
        raise ContainerError(describe(str(path), f"an entry '{NPZ_MANIFEST}' holding the JSON manifest", "none",
                                      "is this an evsim model? see docs/format.md"))
    manifest = arrays.pop(NPZ_MANIFEST)
    if manifest.shape != () or manifest.dtype.kind not in "US":
        raise ContainerError(describe(f"{path}, entry '{NPZ_MANIFEST}'", "a 0-d string array",
                                      f"shape {manifest.shape}, dtype {manifest.dtype}"))
    text = manifest.item()
    return (text.decode("utf-8") if isinstance(text, bytes) else text), arrays


def _read_h5(path: Path, limit: int) -> tuple[str, dict[str, np.ndarray]]:
    import h5py

    arrays: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        if H5_MANIFEST not in f.attrs:
            raise ContainerError(describe(str(path), f"an HDF5 root attribute '{H5_MANIFEST}' holding the JSON manifest",
                                          "none", "is this an evsim model? see docs/format.md"))
        check_string_attribute(f, path, H5_MANIFEST, limit)  # a corrupt heap would make libhdf5 spin
        text = f.attrs[H5_MANIFEST]
        if isinstance(text, np.ndarray) and text.shape == ():
            text = text.item()
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        if not isinstance(text, str):
            raise ContainerError(describe(f"{path}, attribute '{H5_MANIFEST}'", "a string", type(text).__name__))
        if H5_GROUP in f:
            group = f[H5_GROUP]
            if not isinstance(group, h5py.Group):
                raise ContainerError(describe(f"{path}, '/{H5_GROUP}'", "a group of datasets", "a dataset"))
            datasets = []
            group.visititems(lambda name, obj: datasets.append((name, obj)) if isinstance(obj, h5py.Dataset) else None)
            declared = 0.0
            for name, ds in datasets:
                declared = check_declared(path, name, ds.shape, ds.dtype, limit, declared)
                arrays[name] = np.asarray(ds[()])
    return text, arrays


def _write_npz(path: Path, text: str, arrays: dict[str, np.ndarray]) -> None:
    # zipfile + write_array rather than np.savez: array names are free strings, and
    # np.savez would refuse a name such as "file".
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, arr in {NPZ_MANIFEST: np.array(text), **arrays}.items():
            with archive.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(arr), allow_pickle=False)


def _write_h5(path: Path, text: str, arrays: dict[str, np.ndarray]) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs[H5_MANIFEST] = text
        group = f.create_group(H5_GROUP)
        for name, arr in arrays.items():
            group.create_dataset(name, data=arr)


#: container registry: file extension -> (reader, writer)
CONTAINERS: dict[str, tuple[Callable, Callable]] = {
    ".npz": (_read_npz, _write_npz),
    ".h5": (_read_h5, _write_h5),
    ".hdf5": (_read_h5, _write_h5),
}


def _container(path: Path) -> tuple[Callable, Callable]:
    try:
        return CONTAINERS[path.suffix.lower()]
    except KeyError:
        raise ContainerError(describe(str(path), "a file ending in " + ", ".join(CONTAINERS),
                                      repr(path.suffix or "no extension"))) from None


def read_container(path, limit: int | None = None) -> tuple[str, dict[str, np.ndarray]]:
    """Read the manifest text and the arrays of an ``.npz`` or ``.h5`` file.

    Any failure of the underlying libraries (truncated, corrupted or foreign file)
    becomes a :class:`ContainerError` that names the file.
    """
    path = Path(path)
    reader, _ = _container(path)
    if not path.is_file():
        raise ContainerError(describe(str(path), "an existing file", "nothing at that path"))
    limit = memory_limit() if limit is None else limit
    try:
        return reader(path, limit)
    except EvsimError:
        raise
    except MemoryError as exc:  # numpy/h5py could not allocate what the file declares (within the limit)
        raise ResourceLimitError(out_of_memory(str(path), exc)) from None
    except Exception as exc:  # noqa: BLE001 - zipfile/numpy/h5py raise many types for a bad file
        kind = "HDF5" if reader is _read_h5 else "npz (zip)"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ContainerError(describe(str(path), f"a readable {kind} file",
                                      f"a truncated, corrupted or foreign file ({reason})")) from None


# --------------------------------------------------------------------------- atomic output
#: temp files are ``.<name>.evsim-tmp-<pid>-<random><suffix>`` beside the output (the suffix
#: keeps writers that look at it happy); the pid lets the next write find stale ones
TEMP_MARK = ".evsim-tmp-"
_TEMP_NAME_CHARS = 100  # the output's name is cut so that the temp name stays within NAME_MAX
_pending: set[str] = set()  # temp files being written by this process
_saved_handlers: dict[int, object] = {}
_lock = threading.Lock()
_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, n))


def _remove_pending() -> None:
    for tmp in list(_pending):
        try:
            os.unlink(tmp)
        except OSError:
            pass
        _pending.discard(tmp)


def _on_signal(signum, frame) -> None:
    """Remove our temp files, then let the signal do what it would have done without us."""
    previous = _saved_handlers.get(signum, signal.SIG_DFL)
    if callable(previous):  # e.g. Python's SIGINT handler: raises KeyboardInterrupt, the write's cleanup runs
        previous(signum, frame)
        return
    if previous == signal.SIG_IGN:
        return
    _remove_pending()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)  # die of the same signal (exit status 128 + signum)


def _install_handlers() -> None:
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may set handlers; the try/finally still cleans up
    for signum in _SIGNALS:
        if signum not in _saved_handlers:
            _saved_handlers[signum] = signal.getsignal(signum)
            signal.signal(signum, _on_signal)


def _restore_handlers() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for signum, previous in list(_saved_handlers.items()):
        if signal.getsignal(signum) is _on_signal:
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        del _saved_handlers[signum]


def _writer_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def _remove_stale(directory: Path, name: str) -> None:
    """Delete temp files of ``name`` left by writers that no longer exist (killed by SIGKILL)."""
    prefix = f".{name[:_TEMP_NAME_CHARS]}{TEMP_MARK}"
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        pid = entry.name[len(prefix):].split("-", 1)[0]
        if pid.isascii() and pid.isdigit() and not _writer_alive(int(pid)):
            try:
                if entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)
            except OSError:
                pass


def output_target(path) -> Path:
    """The file a write to ``path`` replaces: symlinks followed; anything but a regular file refused.

    Raises
    ------
    OutputError
        ``path`` (or what it links to) is a directory, a device, a FIFO or a socket, or
        ``path`` is a symlink to nothing.
    """
    path = Path(path)
    target = Path(os.path.realpath(path))  # a symlink is written through to the file it points to
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        if path.is_symlink():  # as the CLI's preflight: a dangling link would create a file somewhere else
            raise OutputError(describe(str(path), "a regular file or a new name",
                                       f"a symlink to {os.readlink(path)}, which does not exist",
                                       "remove the link or create its target")) from None
        return target
    except OSError as exc:
        raise OutputError(describe(str(path), "a path evsim can write", f"{exc.strerror or exc}")) from None
    if not stat.S_ISREG(mode):
        kind = _FILE_KINDS.get(stat.S_IFMT(mode), "a special file")
        via = f" (through the symlink to {target})" if path.is_symlink() else ""
        raise OutputError(describe(str(path), "a regular file or a new name", f"{kind}{via}",
                                   "choose a file name; evsim only replaces regular files"))
    return target


_FILE_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
               stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFSOCK: "a socket"}


def atomic_write(path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` and rename the result onto ``path``; nothing is left half-written.

    * Only a regular file (or nothing) is replaced: a directory, device, FIFO or socket at
      ``path`` is an :class:`~evsim.errors.OutputError`.
    * A symlink is written through: the file it points to is replaced, the link stays; a
      dangling symlink is refused.
    * The temp file ``.<name>.evsim-tmp-<pid>-<random><suffix>`` lives in the target's
      directory and is removed on every exit path: exceptions, ``KeyboardInterrupt``, and
      SIGTERM/SIGINT/SIGHUP (a handler removes it, then the signal takes its usual course).
      One left by a SIGKILL is removed by the next write of the same output.
    * The new file gets the mode of the file it replaces (else ``0666 & ~umask``).
    """
    target = output_target(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(target.parent, target.name)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_UMASK
    with _lock:
        for _ in range(100):
            tmp = target.parent / (f".{target.name[:_TEMP_NAME_CHARS]}{TEMP_MARK}{os.getpid()}-"
                                   f"{secrets.token_hex(4)}{target.suffix}")
            try:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover - 100 collisions of 32 random bits
            raise OutputError(describe(str(path), "a free temporary name", "none after 100 tries"))
        if not _pending:
            _install_handlers()
        _pending.add(str(tmp))
    try:
        write(tmp)
        os.chmod(tmp, mode)  # after writing: the mode may be read-only
        os.replace(tmp, target)
    finally:
        with _lock:
            _pending.discard(str(tmp))
            if not _pending:
                _restore_handlers()
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def out_of_memory(where: str, exc: BaseException) -> str:
    """The message for an allocation that failed although the declared sizes were within the limit."""
    reason = str(exc).splitlines()[0] if str(exc) else "MemoryError"
    return describe(where, "enough free memory for the sizes it declares", f"out of memory ({truncate(reason)})",
                    "free memory, or set EVSIM_MEMORY_LIMIT below what this machine can allocate so that such "
                    "files are refused before reading")


def _read_umask() -> int:
    # os.umask can only be read by setting it; do that once, at import, not on every write
    # (changing the process umask while other threads create files is a race)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def write_container(path, text: str, arrays: dict[str, np.ndarray]) -> None:
    """Write a manifest and arrays atomically; the container follows the extension."""
    _, writer = _container(Path(path))
    if NPZ_MANIFEST in arrays:
        raise ArrayError(describe(str(path), f"no array named '{NPZ_MANIFEST}' (reserved)", "one"))
    atomic_write(path, lambda tmp: writer(tmp, text, arrays))


# --------------------------------------------------------------------------- manifest <-> graph
def _require(cond: bool, where: str, expected: str, found, fix: str | None = None) -> None:
    if not cond:
        raise ManifestError(describe(where, expected, found if isinstance(found, str) else repr(found), fix))


def graph_from_manifest(text: str, arrays: dict[str, np.ndarray], source: str = "<memory>",
                        limit: int | None = None) -> Graph:
    """Parse and validate a manifest with its arrays into a :class:`Graph`."""
    try:
        manifest = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, ints over 4300 digits
        raise ManifestError(describe(f"{source}, manifest", "valid JSON", f"a syntax error ({exc})")) from None
    depth = _nesting(manifest)
    if depth > MAX_NESTING:
        raise ManifestError(describe(f"{source}, manifest", f"JSON nested at most {MAX_NESTING} deep",
                                     f"{depth} levels or more", "flatten the metadata"))
    _require(isinstance(manifest, dict), f"{source}, manifest", "a JSON object", type(manifest).__name__)
    _require(manifest.get("format") == FORMAT_NAME, f"{source}, manifest 'format'", repr(FORMAT_NAME),
             manifest.get("format"))
    version = manifest.get("version")
    _require(type(version) is int and version == FORMAT_VERSION, f"{source}, manifest 'version'",
             f"{FORMAT_VERSION} (this evsim reads format v{FORMAT_VERSION})", repr(version),
             "upgrade evsim or re-export the model" if isinstance(version, int) else None)
    unknown = sorted(set(manifest) - _TOP_KEYS)
    _require(not unknown, f"{source}, manifest", "keys among " + ", ".join(sorted(_TOP_KEYS)), ", ".join(unknown),
             "put free-form information inside 'metadata'")
    for key in ("input", "nodes", "output"):
        _require(key in manifest, f"{source}, manifest", f"key '{key}'", "none")
    metadata = manifest.get("metadata", {})
    _require(isinstance(metadata, dict), f"{source}, manifest 'metadata'", "a JSON object", type(metadata).__name__)

    spec = manifest["input"]
    _require(isinstance(spec, dict), f"{source}, input", "a JSON object", type(spec).__name__)
    unknown = sorted(set(spec) - _INPUT_KEYS)
    _require(not unknown, f"{source}, input", "keys among " + ", ".join(sorted(_INPUT_KEYS)), ", ".join(unknown))
    shape = spec.get("shape")
    _require(isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) for d in shape),
             f"{source}, input.shape", "a list of integers", shape)
    for key in ("mean", "std"):
        _require(spec.get(key) is None or isinstance(spec[key], list), f"{source}, input.{key}", "a list of numbers",
                 spec.get(key))
    input_spec = InputSpec(tuple(shape), spec.get("scale"),
                           None if spec.get("mean") is None else tuple(spec["mean"]),
                           None if spec.get("std") is None else tuple(spec["std"]))

    raw_nodes = manifest["nodes"]
    _require(isinstance(raw_nodes, list), f"{source}, nodes", "a list of node objects", type(raw_nodes).__name__)
    used: set[str] = set()
    nodes = [_node_from_json(raw, i, arrays, used, source) for i, raw in enumerate(raw_nodes)]
    output = manifest["output"]
    _require(isinstance(output, str), f"{source}, output", "a node name", output)
    graph = Graph(input_spec, nodes, output, kind=manifest.get("kind", "ann"), metadata=metadata, source=source)
    validate(graph, limit)  # first, so that a node missing an array is named rather than reported as unused
    unused = sorted(set(arrays) - used)
    if unused:
        raise ArrayError(describe(source, "every array to be named by a node",
                                  f"{len(unused)} unused: {', '.join(unused[:5])}", "remove them or reference them"))
    return graph


def _nesting(value) -> int:
    """How deep ``value`` nests lists and dicts, counted without recursion (stops past MAX_NESTING)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if depth > MAX_NESTING:
                break
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def _node_from_json(raw, index: int, arrays: dict, used: set, source: str) -> Node:
    _require(isinstance(raw, dict), f"{source}, nodes[{index}]", "a JSON object", type(raw).__name__)
    name = raw.get("name")
    _require(isinstance(name, str) and name != "", f"{source}, nodes[{index}].name", "a non-empty string", name)
    where = f"{source}, node '{name}'"
    op = raw.get("op")
    _require(isinstance(op, str) and op in OPS, where, "an op among " + ", ".join(sorted(OPS)), op)
    inputs = raw.get("inputs")
    _require(isinstance(inputs, list) and all(isinstance(s, str) for s in inputs), where,
             "'inputs': a list of node names", inputs)
    spec = OPS[op]
    attrs, node_arrays, names = {}, {}, {}
    for key, value in raw.items():
        if key in _NODE_KEYS:
            continue
        if key in spec.arrays:
            _require(isinstance(value, str), f"{where}, '{key}'", "the name of an array", value)
            if value not in arrays:
                raise ArrayError(describe(f"{where}, '{key}'", f"array '{value}' in the file", "no such array"))
            node_arrays[key], names[key] = arrays[value], value
            used.add(value)
        else:
            attrs[key] = value
    return Node(name, op, tuple(inputs), attrs, node_arrays, names)


def manifest_from_graph(graph: Graph) -> tuple[str, dict[str, np.ndarray]]:
    """The JSON manifest text and the arrays (by file name) of a validated graph."""
    arrays: dict[str, np.ndarray] = {}
    nodes = []
    for node in graph.nodes:
        entry = {"name": node.name, "op": node.op, "inputs": list(node.inputs), **node.attrs}
        for role, arr in node.arrays.items():
            name = node.array_name(role)
            if name in arrays and arrays[name] is not arr:
                raise ArrayError(describe(f"node '{node.name}'", "unique array names", f"'{name}' twice"))
            arrays[name] = arr
            entry[role] = name
        nodes.append(entry)
    spec = {"shape": list(graph.input.shape)}
    for key in ("scale", "mean", "std"):
        value = getattr(graph.input, key)
        if value is not None:
            spec[key] = value if key == "scale" else list(value)
    manifest = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "kind": graph.kind, "input": spec,
                "nodes": nodes, "output": graph.output, "metadata": graph.metadata}
    return json.dumps(manifest, indent=1, default=_json_default), arrays


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in the manifest")


# --------------------------------------------------------------------------- public API
def load(path, limit: int | None = None, **importer_options) -> Graph:
    """Load and validate a model file: evsim format v1, or any format an importer reads.

    The file's content, not its extension, selects the reader (:mod:`evsim.importers`): evsim
    format v1 (``.npz``/``.h5``), and with the importers in ``evsim.converters`` ONNX and Keras.

    Parameters
    ----------
    path : str or Path
        The model file.
    limit : int, optional
        Bytes a model may declare (default: :func:`evsim.graph.memory_limit`).
    **importer_options
        Options of the importer that reads the file (e.g. ``activations=`` for custom layers).

    Returns
    -------
    Graph
        The validated graph, every node's output shape filled in; ``graph.importer`` names the
        importer that read it.

    Raises
    ------
    evsim.errors.ModelFileError
        Any problem with the file, one line naming the file and node.
    evsim.errors.ResourceLimitError
        Declared sizes above the memory limit.
    evsim.errors.ConversionError
        A foreign model with a layer or op evsim cannot express.
    """
    from .importers import read

    return read(path, limit=limit, **importer_options)


def read_v1(path, limit: int | None = None) -> Graph:
    """Load and validate an evsim format v1 file (``.npz``, ``.h5`` or ``.hdf5``; container by extension)."""
    text, arrays = read_container(path, limit)
    return graph_from_manifest(text, arrays, source=str(path), limit=limit)


def save(graph: Graph, path) -> None:
    """Validate ``graph`` and write it atomically to ``path`` (container by extension)."""
    validate(graph)
    text, arrays = manifest_from_graph(graph)
    write_container(path, text, arrays)
