"""Resumable runs: every finished shard is kept in a checkpoint directory.

A run is split into *shards*, ranges ``(start, stop)`` of samples made of whole batches.
With a checkpoint directory, each shard's partial results (exact integer counts, the
predictions and logits of its samples: :class:`~evsim.results.BatchResult`) are written
there as soon as the shard is finished, atomically (written to a temporary file, flushed,
then renamed), so a run killed at any moment leaves only complete shards behind.  Running
the same command again loads the finished shards and simulates only the rest; since the
merge (:meth:`Results.reduce`) is exact and order-independent, the report is identical to
an uninterrupted run.

The directory is tied to one run by a **fingerprint** (``checkpoint.json``):

* the model: a SHA-256 over the compiled network's content (every array, attribute and
  setting, walked in a canonical order — not the pickle, whose bytes may differ between
  processes; the file name left out), plus the evsim version;
* the data: for a data file its size, modification time and a SHA-256 of
  its content (the whole file up to 64 MiB; above that, 64 chunks of 64 KiB spread evenly
  over it, first and last included), with the number of samples used; for in-memory
  arrays a SHA-256 of the arrays;
* the settings that change a shard's content: T, batch size, precision, number of samples,
  the run's settings (neuron model, conversion, calibration ...) and the list of shards
  (hence ``--shard-size``).  Not included: the energy constants (applied when the report is
  made, so they may change between attempts), how the shards are run (serial, number of
  workers, scheduler), which never changes a result, and the paths of the model and data
  files (their content is what counts).

A directory whose fingerprint differs is refused with :class:`~evsim.errors.CheckpointError`
naming what changed; results of different runs are never mixed.  Use a fresh directory
(or delete the old one) to start over.  (A directory holding no finished shard yet, e.g.
after a first attempt that failed at once, is simply taken over by the new run.)

:class:`CheckpointRunner` wraps any runner (serial or :class:`~evsim.distributed.DaskRunner`)
with this behaviour.
"""
from __future__ import annotations

import bisect
import dataclasses
import hashlib
import importlib
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from .errors import CheckpointError, DataError, describe

__all__ = ["CheckpointRunner", "Checkpoint", "fingerprint", "content_hash", "file_identity", "group_shards",
           "shard_groups", "default_shard_size", "check_shard_size",
           "FORMAT_VERSION", "MANIFEST"]

FORMAT_VERSION = 1
MANIFEST = "checkpoint.json"
_SHARD_PREFIX = "shard-"
#: files up to this size are hashed whole; larger ones by evenly spread chunks
_HASH_WHOLE = 64 << 20
_CHUNKS, _CHUNK = 64, 64 << 10
#: default shards per run: about _TARGET_SHARDS shards of whole batches, at most _MAX_BATCHES_PER_SHARD batches
_TARGET_SHARDS = 64
_MAX_BATCHES_PER_SHARD = 16
#: plan settings that never change a shard's content (how the run is executed, the report's energy), and
#: the model and data paths (their content is fingerprinted: moving a file does not make a different run)
_NOT_FINGERPRINTED = frozenset({"model", "data", "energy", "workers", "scheduler", "scheduler_file", "shards",
                                "checkpoint", "runner", "dashboard", "timing", "report", "progress"})


# --------------------------------------------------------------------------- shards
def default_shard_size(samples: int, batch_size: int) -> int:
    """About 64 shards of whole batches, at most 16 batches each.

    It depends only on the run (not on the cluster), so that a checkpointed run may be
    resumed with a different number of workers.
    """
    batches = math.ceil(samples / batch_size)
    per_shard = min(_MAX_BATCHES_PER_SHARD, max(1, math.ceil(batches / _TARGET_SHARDS)))
    return per_shard * batch_size


def check_shard_size(shard_size) -> int | None:
    """Validate ``--shard-size`` (None = the default)."""
    if shard_size is None:
        return None
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise DataError(describe("--shard-size", "an integer >= 1 (samples per task)", repr(shard_size)))
    return shard_size


def group_shards(shards, size: int) -> list[list[tuple[int, int]]]:
    """Consecutive shards (the run's batches) gathered into groups of at most ``size`` samples.

    A batch is never split: a group holds at least one, and the batches themselves are
    the same as in a single-process run, so the arithmetic — hence every count — is too.
    Grouping restarts after a gap, so the groups of a subset of a run's shards (what a
    checkpoint has not finished) are the same groups as in the whole run.
    """
    groups: list[list[tuple[int, int]]] = []
    current: list[tuple[int, int]] = []
    n = 0
    for a, b in sorted((int(a), int(b)) for a, b in shards):
        if current and (n + (b - a) > size or a != current[-1][1]):
            groups.append(current)
            current, n = [], 0
        current.append((a, b))
        n += b - a
    if current:
        groups.append(current)
    return groups


def shard_groups(shards, plan, shard_size: int | None) -> list[list[tuple[int, int]]]:
    """The run's tasks: its shards grouped by ``shard_size`` (default :func:`default_shard_size`)."""
    return group_shards(shards, shard_size or default_shard_size(plan.samples, plan.batch_size))


# --------------------------------------------------------------------------- fingerprints
def content_hash(obj) -> str:
    """SHA-256 of an object's content, walked in a canonical order.

    Handles None, bool, int, float, str, bytes, NumPy scalars and arrays, SciPy sparse
    matrices, lists, tuples, dicts (keys in a canonical order), sets, dataclasses and plain
    objects (their ``__dict__`` / ``__slots__``).  Equal content gives equal hashes in any
    process, unlike ``pickle.dumps`` (set order, memo sharing).

    Raises
    ------
    TypeError
        For objects it cannot walk (functions, open files ...).
    """
    h = hashlib.sha256()
    _feed(h, obj, set())
    return h.hexdigest()


def _tag(h, tag: bytes, payload: bytes = b"") -> None:
    h.update(tag + len(payload).to_bytes(8, "little") + payload)


def _sub_hash(obj, active) -> bytes:
    sub = hashlib.sha256()
    _feed(sub, obj, active)
    return sub.digest()


def _feed(h, obj, active: set) -> None:
    if obj is None:
        _tag(h, b"N")
    elif isinstance(obj, (bool, np.bool_)):
        _tag(h, b"B", b"1" if obj else b"0")
    elif isinstance(obj, (int, np.integer)):
        _tag(h, b"I", str(int(obj)).encode())
    elif isinstance(obj, (float, np.floating)):
        _tag(h, b"F", float(obj).hex().encode())
    elif isinstance(obj, str):
        _tag(h, b"S", obj.encode("utf-8", "surrogatepass"))
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        _tag(h, b"Y", bytes(obj))
    elif isinstance(obj, np.ndarray):
        _tag(h, b"A", f"{obj.dtype.str}{obj.shape}".encode())
        if obj.dtype.hasobject:
            for item in obj.ravel():
                _feed(h, item, active)
        else:
            h.update(np.ascontiguousarray(obj).view(np.uint8).reshape(-1).data)
    elif type(obj).__module__.startswith("scipy.sparse"):
        m = obj.tocsr()
        m = m.sorted_indices() if not m.has_sorted_indices else m
        _tag(h, b"P", f"{m.shape}".encode())
        for part in (m.indptr, m.indices, m.data):
            _feed(h, part, active)
    elif isinstance(obj, (np.dtype, type)):
        _tag(h, b"T", str(obj).encode())
    else:
        if id(obj) in active:
            raise TypeError(f"content_hash: {type(obj).__name__} contains itself")
        active.add(id(obj))
        try:
            _feed_container(h, obj, active)
        finally:
            active.discard(id(obj))


def _feed_container(h, obj, active: set) -> None:
    if isinstance(obj, (list, tuple)):
        _tag(h, b"L" if isinstance(obj, list) else b"U", str(len(obj)).encode())
        for item in obj:
            _feed(h, item, active)
    elif isinstance(obj, dict):
        items = sorted((_sub_hash(k, active), _sub_hash(v, active)) for k, v in obj.items())
        _tag(h, b"D", str(len(items)).encode())
        for k, v in items:
            h.update(k + v)
    elif isinstance(obj, (set, frozenset)):
        items = sorted(_sub_hash(item, active) for item in obj)
        _tag(h, b"E", str(len(items)).encode())
        for item in items:
            h.update(item)
    elif dataclasses.is_dataclass(obj):
        _tag(h, b"C", f"{type(obj).__module__}.{type(obj).__qualname__}".encode())
        _feed(h, {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}, active)
    elif hasattr(obj, "__dict__") or hasattr(type(obj), "__slots__"):
        state = dict(getattr(obj, "__dict__", {}))
        for cls in type(obj).__mro__:
            for slot in getattr(cls, "__slots__", ()):
                if slot not in ("__dict__", "__weakref__") and hasattr(obj, slot):
                    state[slot] = getattr(obj, slot)
        if callable(obj) and not state:
            raise TypeError(f"content_hash: cannot fingerprint {type(obj).__name__} {obj!r}")
        _tag(h, b"O", f"{type(obj).__module__}.{type(obj).__qualname__}".encode())
        _feed(h, state, active)
    else:
        raise TypeError(f"content_hash: cannot fingerprint {type(obj).__name__}")


def file_identity(path) -> dict:
    """Identity of a data file: size, modification time, content hash (not its path: a moved file is the same).

    The content hash covers the whole file up to 64 MiB and 64 evenly spread chunks of
    64 KiB (first and last included) above that, so a multi-gigabyte data set is
    identified in milliseconds.
    """
    st = os.stat(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if st.st_size <= _HASH_WHOLE:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
            how = "whole file"
        else:
            for offset in np.linspace(0, st.st_size - _CHUNK, _CHUNKS).astype(np.int64):
                f.seek(int(offset))
                h.update(f.read(_CHUNK))
            how = f"{_CHUNKS} chunks of {_CHUNK >> 10} KiB"
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": h.hexdigest(), "hashed": how}


def data_identity(source) -> dict:
    """Identity of a data source: a file's identity, or a hash of in-memory arrays."""
    n = int(source.n)
    path = getattr(source, "path", None)
    if path is not None:
        identity = file_identity(path)
    else:
        x, y = source.read(0, n)
        identity = {"arrays_sha256": content_hash((x, y))}
    identity["samples"] = n
    for attr in ("layout", "input_shape"):
        value = getattr(source, attr, None)
        if value is not None:
            identity[attr] = json.loads(json.dumps(value, default=list))
    return identity


def _jsonable(value):
    """Settings as plain JSON values (NumPy scalars and arrays, tuples, paths, dataclasses)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def fingerprint(network, plan, source, shards) -> dict:
    """What a checkpoint is tied to: model, data and settings (see the module docstring).

    Returns
    -------
    dict
        ``{"model": {...}, "data": {...}, "settings": {...}}``, JSON-serialisable.
    """
    from . import __version__

    top = ("T", "batch_size", "precision", "samples")  # fingerprinted once, from the plan itself
    settings = {key: value for key, value in (getattr(plan, "settings", None) or {}).items()
                if key not in _NOT_FINGERPRINTED and key not in top}
    shards = [[int(a), int(b)] for a, b in shards]
    return {
        "model": {"sha256": content_hash(_without_path(network)), "evsim": __version__},
        "data": data_identity(source),
        "settings": _jsonable({
            "T": plan.T, "batch_size": plan.batch_size, "precision": plan.precision, "samples": plan.samples,
            "settings": settings, "shards": len(shards),
            "shards_sha256": hashlib.sha256(json.dumps(shards).encode()).hexdigest(),
        }),
    }


def _without_path(network):
    """The network with its graph's file name blanked (a moved model file is the same model)."""
    graph = getattr(network, "graph", None)
    if dataclasses.is_dataclass(network) and dataclasses.is_dataclass(graph) and hasattr(graph, "source"):
        return dataclasses.replace(network, graph=dataclasses.replace(graph, source=""))
    return network


def _digest(fp: dict) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            show = lambda v: (v[:12] + "…") if isinstance(v, str) and len(v) > 40 else v  # noqa: E731
            out.append(f"{prefix}{key} {show(a)!r} -> {show(b)!r}")
    return out


_WHAT = {"model": "a different model", "data": "a different data file", "settings": "different settings"}


# --------------------------------------------------------------------------- shard files
def _encode(value, arrays: dict, key: str):
    """A BatchResult (or what it holds) as JSON structure + named arrays."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        return {"__dataclass__": f"{cls.__module__}:{cls.__qualname__}",
                "fields": {f.name: _encode(getattr(value, f.name), arrays, f"{key}/{f.name}")
                           for f in dataclasses.fields(value)}}
    if isinstance(value, np.ndarray):
        name = f"a{len(arrays)}"
        arrays[name] = value
        return {"__array__": name}
    if isinstance(value, dict):
        return {"__dict__": [[_encode(k, arrays, key), _encode(v, arrays, f"{key}/{k}")] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return {"__list__" if isinstance(value, list) else "__tuple__": [_encode(v, arrays, key) for v in value]}
    if isinstance(value, np.generic):
        return _encode(np.asarray(value), arrays, key) | {"scalar": True}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"checkpoint: cannot store {type(value).__name__} at {key}")


def _decode(value, arrays):
    if isinstance(value, dict):
        if "__array__" in value:
            a = arrays[value["__array__"]]
            return a[()] if value.get("scalar") else a
        if "__dataclass__" in value:
            module, qualname = value["__dataclass__"].split(":")
            if not module.startswith("evsim."):
                raise CheckpointError(f"checkpoint: refusing to build {module}.{qualname}")
            cls = importlib.import_module(module)
            for part in qualname.split("."):
                cls = getattr(cls, part)
            return cls(**{k: _decode(v, arrays) for k, v in value["fields"].items()})
        if "__dict__" in value:
            return {_decode(k, arrays): _decode(v, arrays) for k, v in value["__dict__"]}
        if "__list__" in value:
            return [_decode(v, arrays) for v in value["__list__"]]
        if "__tuple__" in value:
            return tuple(_decode(v, arrays) for v in value["__tuple__"])
    return value


def _write_durably(path: Path, write) -> None:
    """``write(file object)`` to a temporary file in ``path``'s directory, fsync, rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable (not possible on every platform)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


class Checkpoint:
    """A checkpoint directory bound to one fingerprint.

    Use :meth:`open`; then :meth:`finished`, :meth:`load` and :meth:`save` shards.
    """

    def __init__(self, directory: Path, fp: dict):
        self.directory = Path(directory)
        self.fingerprint = fp
        self.digest = _digest(fp)

    @classmethod
    def open(cls, directory, fp: dict) -> "Checkpoint":
        """Create ``directory`` for this fingerprint, or re-open it if it was made by the same run.

        Raises
        ------
        CheckpointError
            The directory holds a checkpoint of a different model, data or settings, or
            something else than a checkpoint.
        """
        directory = Path(directory)
        where = f"--checkpoint {directory}"
        if directory.exists() and not directory.is_dir():
            raise CheckpointError(describe(where, "a directory", "a file", "give a directory path"))
        directory.mkdir(parents=True, exist_ok=True)
        manifest = directory / MANIFEST
        ckpt = cls(directory, fp)
        if manifest.exists():
            try:
                old = json.loads(manifest.read_text())
                old_fp = old["fingerprint"]
                version = old["evsim_checkpoint"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise CheckpointError(describe(where, f"a readable {MANIFEST}", f"an unreadable one ({exc})",
                                               "delete the directory or use a fresh one")) from None
            if version != FORMAT_VERSION:
                raise CheckpointError(describe(where, f"checkpoint format {FORMAT_VERSION}", f"format {version}",
                                               "use a fresh directory"))
            if _digest(old_fp) != ckpt.digest and not any(directory.glob(f"{_SHARD_PREFIX}*.npz")):
                manifest.unlink()  # no shard was ever finished: nothing could be mixed, start afresh
            elif _digest(old_fp) != ckpt.digest:
                changed = [part for part in ("model", "data", "settings") if old_fp.get(part) != fp.get(part)]
                details = "; ".join(_differences({p: old_fp.get(p) for p in changed},
                                                 {p: fp.get(p) for p in changed}))
                raise CheckpointError(describe(
                    where, "the model, data and settings of the run that wrote it",
                    f"{', '.join(_WHAT[p] for p in changed) or 'a different run'} ({details})",
                    "results of different runs are never mixed: use a fresh --checkpoint directory "
                    "(or delete this one) to start over"))
        if not manifest.exists():
            strangers = [p.name for p in directory.iterdir() if not p.name.startswith(".")]
            if strangers:
                raise CheckpointError(describe(where, "an empty directory or an evsim checkpoint",
                                               f"{len(strangers)} other file(s), e.g. {strangers[0]!r}",
                                               "give a new or empty directory"))
            text = json.dumps({"evsim_checkpoint": FORMAT_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                               "digest": ckpt.digest, "fingerprint": fp}, indent=1)
            _write_durably(manifest, lambda f: f.write(text.encode() + b"\n"))
        for stale in directory.glob(f".{_SHARD_PREFIX}*.tmp"):  # left by a run killed while writing
            stale.unlink(missing_ok=True)
        return ckpt

    def path(self, start: int, stop: int) -> Path:
        return self.directory / f"{_SHARD_PREFIX}{start:010d}-{stop:010d}.npz"

    def finished(self, shards) -> set[tuple[int, int]]:
        """The shards of ``shards`` that have a complete file."""
        return {(a, b) for a, b in shards if self.path(a, b).is_file()}

    def save(self, start: int, stop: int, results: list) -> None:
        """Write one shard's results atomically."""
        arrays: dict[str, np.ndarray] = {}
        header = {"digest": self.digest, "start": start, "stop": stop,
                  "results": [_encode(r, arrays, "result") for r in results]}
        arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
        _write_durably(self.path(start, stop), lambda f: np.savez(f, **arrays))

    def load(self, start: int, stop: int) -> list | None:
        """One shard's results, or None when its file is unreadable or not of this run."""
        try:
            with np.load(self.path(start, stop), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            header = json.loads(arrays.pop("header").tobytes())
        except (OSError, ValueError, KeyError):
            return None
        if header.get("digest") != self.digest or (header.get("start"), header.get("stop")) != (start, stop):
            return None
        return [_decode(r, arrays) for r in header["results"]]


class CheckpointRunner:
    """A runner that keeps every finished shard in a directory and reuses them on a rerun.

    The run's shards (its batches) are gathered into checkpoint shards of about
    ``shard_size`` samples (whole batches, :func:`group_shards`); each is
    written as soon as all its batches are in.

    Parameters
    ----------
    directory : str or Path
        The checkpoint directory (created if needed; see the module docstring).
    runner : runner, optional
        Runs the shards that are not finished yet (default: the serial runner).
    shard_size : int, optional
        Samples per checkpoint shard (default: the inner runner's ``shard_size``, else
        :func:`default_shard_size`).

    Attributes
    ----------
    shards : dict
        After a run: ``{"total": n, "reused": k}``.
    """

    def __init__(self, directory, runner=None, shard_size: int | None = None):
        self.directory = Path(directory)
        self.runner = runner
        self.shard_size = check_shard_size(shard_size) or getattr(runner, "shard_size", None)
        self.shards: dict | None = None

    @property
    def dashboard(self) -> str | None:
        return getattr(self.runner, "dashboard", None)

    def map(self, network, plan, source, shards, progress=None):
        """Yield the results of every batch: reused ones first, then the rest as they finish.

        Raises
        ------
        CheckpointError
            The directory belongs to a different run.
        """
        groups = shard_groups(shards, plan, self.shard_size)
        units = [(g[0][0], g[-1][1]) for g in groups]
        ckpt = Checkpoint.open(self.directory, fingerprint(network, plan, source, units))
        finished = ckpt.finished(units)
        remaining = []
        reused = 0
        for unit, group in zip(units, groups):
            results = ckpt.load(*unit) if unit in finished else None
            if results is None:
                remaining.append(unit)
                continue
            reused += 1
            yield from results
            if progress is not None:
                progress(unit[1] - unit[0])
        self.shards = {"total": len(units), "reused": reused}
        if not remaining:
            return
        runner = self.runner
        if runner is None:
            from .runners import SerialRunner

            runner = SerialRunner()
        left = set(remaining)
        todo = [s for unit, group in zip(units, groups) if unit in left for s in group]
        starts = [a for a, _ in remaining]
        pending: dict[tuple[int, int], list] = {}
        for result in runner.map(network, plan, source, todo, progress):
            unit = remaining[bisect.bisect_right(starts, int(result.start)) - 1]
            done = pending.setdefault(unit, [])
            done.append(result)
            if sum(int(r.samples) for r in done) == unit[1] - unit[0]:
                ckpt.save(*unit, pending.pop(unit))
            yield result
