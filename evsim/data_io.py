"""Data files for simulation and calibration: ``.npz`` or ``.h5`` with ``x`` and optional ``y``.

``x`` holds raw values of one of these shapes (the model's input preprocessing is applied
later):

* ``(N, *input.shape)`` — one static sample each (direct encoding);
* ``(N, prod(input.shape))`` — the same, flattened channels first;
* ``(N, T_data, *input.shape)`` — event frames: ``T_data`` input frames per sample (spike
  input, e.g. from an event camera); :attr:`FileSource.frames` is ``T_data``.

``y`` holds class labels of shape ``(N,)``: integers, or floats holding integers.

Instead of ``x``, a file may hold AER event lists: ``events`` (a record array with fields
``t, x, y, p``, or an ``(E, 4)`` array of those columns) and ``offsets`` (``N + 1`` integers;
sample i's events are ``events[offsets[i]:offsets[i+1]]``), binned into ``bins`` event frames
per sample as they are read (:func:`bin_events`).

Files are read lazily: :func:`open_data` looks only at the declared shapes and dtypes,
and :meth:`FileSource.read` reads one slice of samples (an h5py slice, a memory-mapped
stored ``.npz`` member, or a compressed member decompressed only up to the slice), so a
file declaring millions of samples costs nothing until its samples are used.  Every slice
is validated as it is read: finite values, labels checked on their raw values.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from .errors import DataError, EvsimError, ResourceLimitError, describe
from .graph import memory_limit

__all__ = ["open_data", "FileSource", "load_data", "check_data", "check_labels", "check_preprocessed",
           "check_model_precision", "LAYOUTS"]

#: the members a data file may have: inputs, labels, or AER event lists and their per-sample offsets
KEYS = ("x", "y", "events", "offsets")
#: the columns of an AER event: time, column, row, polarity (structured fields, or columns 0..3)
AER_FIELDS = ("t", "x", "y", "p")
#: sample layouts a file may use for (C, H, W) inputs -> axes that make it (C, H, W)
LAYOUTS = {"nchw": None, "nhwc": (2, 0, 1)}
_NUMERIC = "biuf"
_CHUNK_BYTES = 1 << 24  # compressed .npz members are skipped forward in pieces of this size


# --------------------------------------------------------------------------- value checks (shared)
def _check_finite(x: np.ndarray, source: str, start: int) -> None:
    if x.dtype.kind != "f" or len(x) == 0:
        return
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if bad.any():
        raise DataError(describe(f"{source}, 'x'", "finite values",
                                 f"NaN/inf in {int(bad.sum())} samples (first: index {start + int(np.argmax(bad))})"))


def check_labels(y, n_classes: int | None, source: str = "data", start: int = 0) -> np.ndarray:
    """Validate labels on their raw values and return them as int64.

    Float labels must be finite whole numbers; every label must lie in
    ``[0, n_classes)`` (``[0, 2**63)`` when ``n_classes`` is None).  Nothing is cast
    before it is checked, so ``1e20`` is reported as ``1e+20``, not as a wrapped integer.

    Raises
    ------
    DataError
        Naming the first bad label, its sample index and the allowed range.
    """
    y = np.asarray(y)
    where = f"{source}, 'y'"
    if y.dtype.kind not in _NUMERIC:
        raise DataError(describe(where, "integer class labels", f"dtype {y.dtype}"))
    if y.size == 0:
        return y.astype(np.int64)
    upper = 2**63 if n_classes is None else int(n_classes)
    allowed = f"labels in [0, {n_classes})" if n_classes is not None else "labels in [0, 2**63)"
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (y != np.floor(y)) | (y < 0) | (y >= float(upper))
    elif y.dtype.kind == "u":
        bad = y >= np.uint64(upper) if upper <= np.iinfo(y.dtype).max else np.zeros(y.shape, bool)
    else:  # signed ints and bools
        bad = (y < 0) | (y >= upper) if upper <= np.iinfo(np.int64).max else (y < 0)
    if np.any(bad):
        i = int(np.argmax(bad))
        value = y[i].item()
        found = f"label {value!r} at index {start + i}"
        if y.dtype.kind == "f" and np.isfinite(value) and value != np.floor(value):
            raise DataError(describe(where, "integer class labels", found))
        raise DataError(describe(where, allowed, found, "labels must index the model's outputs"))
    return y.astype(np.int64)


def check_preprocessed(values: np.ndarray, dtype, source: str = "data", start: int = 0) -> None:
    """Refuse preprocessed inputs that are not finite or overflow the simulation ``dtype``.

    Call it on ``graph.input.preprocess(x)`` (float64) before casting to ``dtype``: a raw
    value of 1e308, or one that ``scale``/``mean``/``std`` push past float32's range,
    would otherwise become inf in the cast.

    Raises
    ------
    DataError
        Naming the first bad sample and the largest magnitude found.
    """
    values = np.asarray(values)
    if len(values) == 0 or values.dtype.kind != "f":
        return
    top = float(np.finfo(dtype).max)
    flat = values.reshape(len(values), -1)
    with np.errstate(invalid="ignore"):
        bad = ~(np.abs(flat) <= top).all(axis=1)  # NaN compares False: caught too
    if bad.any():
        i = int(np.argmax(bad))
        row = flat[i]
        peak = float(np.max(np.abs(row[np.isfinite(row)]))) if np.isfinite(row).any() else float("nan")
        found = (f"sample {start + i}: " + (f"a magnitude of {peak:.3g} after preprocessing"
                 if np.isfinite(row).all() else "NaN/inf after preprocessing"))
        raise DataError(describe(f"{source}, 'x'", f"inputs that stay within ±{top:.3g} ({np.dtype(dtype).name}) "
                                 "after the model's scale/mean/std", found,
                                 "check the data's units against input.scale, or use --precision float64"))


def check_model_precision(graph, dtype) -> None:
    """Refuse model arrays that the cast to the simulation ``dtype`` would turn into ±inf.

    A float64 file may hold finite values beyond float32's range (weights near 1e39,
    thresholds of 1e300); simulated at float32 they would silently become inf.  Call it
    with the graph being simulated (after BatchNorm folding) and the simulation dtype.

    Raises
    ------
    ArrayError
        Naming the node and the array as they are in the user's file.
    """
    from .errors import ArrayError

    top = float(np.finfo(dtype).max)
    for node in graph.nodes:
        for role, arr in node.arrays.items():
            arr = np.asarray(arr)
            if arr.size and arr.dtype.kind == "f" and arr.dtype.itemsize > np.dtype(dtype).itemsize:
                peak = float(np.max(np.abs(arr)))
                if peak > top:
                    raise ArrayError(describe(
                        f"{graph.source}, node '{node.name}', array '{node.array_name(role)}'",
                        f"values within ±{top:.3g} to simulate in {np.dtype(dtype).name}", f"a magnitude of {peak:.3g}",
                        "simulate with --precision float64, or rescale the model"))


def _match_shape(shape: tuple, input_shape: tuple, layout: str, source: str) -> tuple[tuple | None, int | None]:
    """How a declared ``x`` shape maps onto samples: (file sample shape, frames) or refusal."""
    where = f"{source}, 'x'"
    dims = ", ".join(map(str, input_shape))
    expected = f"shape (N, {dims}) for this model (or (N, T, {dims}) event frames)"
    if len(shape) == 0:
        raise DataError(describe(where, expected, "a 0-d array (a single value)"))
    sample = tuple(shape[1:])
    layout_shape = input_shape
    if LAYOUTS[layout] is not None and len(input_shape) == 3:
        c, h, w = input_shape
        layout_shape = (h, w, c)
    if sample == layout_shape:
        return sample, None
    if len(input_shape) > 1 and sample == (int(np.prod(input_shape)),):
        return sample, None
    if len(sample) == len(layout_shape) + 1 and sample[1:] == layout_shape:
        if sample[0] < 1:
            raise DataError(describe(where, "at least one frame per sample", f"shape {tuple(shape)}"))
        return sample, sample[0]
    raise DataError(describe(where, expected, f"{tuple(shape)}",
                             "the model's input.shape is one sample, channels first"
                             + ("" if layout == "nhwc" or len(input_shape) != 3
                                else " (channels-last data: layout='nhwc')")))


# --------------------------------------------------------------------------- readers (one per container)
class _H5Reader:
    """h5py datasets ``x``/``y``, sliced on demand."""

    def __init__(self, path: Path, limit: int):
        import h5py

        self.file = h5py.File(path, "r")
        self.arrays = {}
        for key in KEYS:
            link = self.file.get(key, getlink=True)
            if link is None:
                continue
            if isinstance(link, h5py.ExternalLink):
                raise DataError(describe(f"{path}, '{key}'", "a dataset stored in the file", "an external link"))
            ds = self.file[key]
            if not isinstance(ds, h5py.Dataset):
                raise DataError(describe(f"{path}, '{key}'", "a dataset", "a group"))
            if ds.chunks is not None and np.prod(ds.chunks, dtype=np.float64) * ds.dtype.itemsize > limit:
                raise ResourceLimitError(describe(f"{path}, '{key}'", f"chunks of at most {limit} bytes "
                                                  "(EVSIM_MEMORY_LIMIT)", f"chunks of shape {ds.chunks}"))
            self.arrays[key] = ds

    def info(self, key):
        ds = self.arrays.get(key)
        return None if ds is None else (tuple(ds.shape), ds.dtype)

    def read(self, key, start, stop):
        ds = self.arrays[key]
        return np.asarray(ds[()] if ds.shape == () else ds[start:stop])

    def close(self):
        self.file.close()


class _NpzReader:
    """``.npy`` members of a zip: memory-mapped when stored, streamed when compressed."""

    def __init__(self, path: Path, limit: int):
        self.path, self.limit = path, limit
        self.zip = zipfile.ZipFile(path)
        self.members, self.streams, self.maps = {}, {}, {}
        for key in KEYS:
            try:
                info = self.zip.getinfo(key + ".npy")
            except KeyError:
                continue
            with self.zip.open(info) as member:
                version = np.lib.format.read_magic(member)
                reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0,
                          (3, 0): np.lib.format.read_array_header_2_0}.get(version)
                if reader is None:
                    raise DataError(describe(f"{path}, '{key}'", ".npy format 1.0, 2.0 or 3.0", f"{version}"))
                shape, fortran, dtype = reader(member)
                offset = member.tell()
            self.members[key] = (info, tuple(shape), bool(fortran), dtype, offset)

    def info(self, key):
        member = self.members.get(key)
        return None if member is None else (member[1], member[3])

    def _mapped(self, key):
        if key not in self.maps:
            self.maps[key] = self._map(key)
        return self.maps[key]

    def _map(self, key):
        info, shape, fortran, dtype, offset = self.members[key]
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
            return None
        with open(self.path, "rb") as fh:
            fh.seek(info.header_offset)
            local = fh.read(30)
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            raise DataError(describe(f"{self.path}, '{key}'", "a zip member with a local header", "none"))
        start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + \
            int.from_bytes(local[28:30], "little") + offset
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if start + nbytes > self.path.stat().st_size:
            raise DataError(describe(f"{self.path}, '{key}'", f"{nbytes} bytes of data", "a truncated file"))
        if nbytes == 0:
            return np.zeros(shape, dtype)
        return np.memmap(self.path, dtype=dtype, mode="r", offset=start, shape=shape, order="F" if fortran else "C")

    def read(self, key, start, stop):
        info, shape, fortran, dtype, offset = self.members[key]
        if shape == ():
            with self.zip.open(info) as member:
                return np.lib.format.read_array(member, allow_pickle=False)
        mapped = self._mapped(key)
        if mapped is not None:
            return np.array(mapped[start:stop])
        if fortran:  # rows are not contiguous: the whole member, within the limit
            nbytes = float(np.prod(shape, dtype=np.float64)) * dtype.itemsize
            if nbytes > self.limit:
                raise ResourceLimitError(describe(f"{self.path}, '{key}'", "a C-ordered compressed array, or one "
                                                  f"of at most {self.limit} bytes (Fortran order is read whole)",
                                                  f"{nbytes:.3g} bytes"))
            with self.zip.open(info) as member:
                return np.lib.format.read_array(member, allow_pickle=False)[start:stop]
        row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        stream, position = self.streams.get(key, (None, 0))
        if stream is None or position > start:
            if stream is not None:
                stream.close()
            stream = self.zip.open(info)
            stream.seek(offset)  # zipfile seeks forward by decompressing
            position = 0
        skip = (start - position) * row
        while skip > 0:
            got = len(stream.read(min(skip, _CHUNK_BYTES)))
            if got == 0:
                break
            skip -= got
        want = (stop - start) * row
        data = stream.read(want)
        if len(data) != want:
            raise DataError(describe(f"{self.path}, '{key}'", f"{shape[0]} samples", "a truncated member"))
        self.streams[key] = (stream, stop)
        return np.frombuffer(data, dtype=dtype).reshape((stop - start,) + shape[1:]).copy()

    def close(self):
        for stream, _ in self.streams.values():
            stream.close()
        self.streams.clear()
        self.maps.clear()
        self.zip.close()


#: container registry: file extension -> reader class
READERS = {".npz": _NpzReader, ".h5": _H5Reader, ".hdf5": _H5Reader}


def _unreadable(path, exc: BaseException) -> EvsimError:
    if isinstance(exc, MemoryError):
        from .format import out_of_memory

        return ResourceLimitError(out_of_memory(str(path), exc))
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return DataError(describe(str(path), "a readable data file", f"an unreadable one ({reason})"))


# --------------------------------------------------------------------------- the lazy source
class FileSource:
    """Samples of a data file, read and validated a slice at a time.

    Built by :func:`open_data`.  Attributes: ``path``, ``input_shape``, ``n`` (samples
    available, after ``samples=``), ``has_labels``, ``frames`` (``T_data`` for event-frame
    data, else None), ``n_classes``, ``layout``.  Picklable: a copy re-opens the file by path
    (the file handle is never pickled), so it can be sent to worker processes.
    """

    def __init__(self, path, input_shape, n_classes: int | None = None, samples: int | None = None,
                 layout: str = "nchw", bins: int | None = None):
        self.path = Path(path)
        self.input_shape = tuple(int(d) for d in input_shape)
        self.n_classes = None if n_classes is None else int(n_classes)
        self.layout = layout
        self.bins = bins
        self.aer = False
        self._samples = samples
        self._reader = None
        self._describe()

    # -- opening
    def _open(self):
        if self._reader is None:
            limit = memory_limit()  # outside the try: a bad EVSIM_MEMORY_LIMIT has its own message
            try:
                self._reader = READERS[self.path.suffix.lower()](self.path, limit)
            except EvsimError:
                raise
            except Exception as exc:  # noqa: BLE001 - numpy/h5py/zipfile raise many types for a bad file
                raise _unreadable(self.path, exc) from None
        return self._reader

    def _describe(self) -> None:
        src = str(self.path)
        if self.layout not in LAYOUTS:
            raise DataError(describe(src, "layout " + " or ".join(map(repr, LAYOUTS)), repr(self.layout)))
        if self.path.suffix.lower() not in READERS:
            raise DataError(describe(src, "a data file ending in .npz, .h5 or .hdf5",
                                     repr(self.path.suffix or "none")))
        if not self.path.is_file():
            raise DataError(describe(src, "an existing data file", "nothing at that path"))
        samples = self._samples
        if samples is not None and (isinstance(samples, bool) or not isinstance(samples, (int, np.integer))
                                    or samples < 1):
            raise DataError(describe(src, "--samples an integer >= 1", repr(samples)))
        try:
            self._check_declared(self._open(), src, samples)
        except BaseException:
            self.close()
            raise

    def _check_declared(self, reader, src: str, samples) -> None:
        x_info, y_info = reader.info("x"), reader.info("y")
        if x_info is None and reader.info("events") is not None:
            self._check_aer(reader, src, samples, y_info)
            return
        if self.bins is not None:
            raise DataError(describe(f"{src}, --bins", "AER event lists ('events' and 'offsets') to bin",
                                     "an array 'x'" if x_info is not None else "no 'events'",
                                     "drop --bins: 'x' is used as it is"))
        if x_info is None:
            raise DataError(describe(src, "an array 'x' of inputs (or AER 'events' and 'offsets')", "none",
                                     "store inputs under the key 'x'"))
        shape, dtype = x_info
        if dtype.kind not in _NUMERIC or dtype.hasobject:
            raise DataError(describe(f"{src}, 'x'", "numeric values", f"dtype {dtype}"))
        self._file_sample, self.frames = _match_shape(shape, self.input_shape, self.layout, src)
        total = shape[0]
        if total == 0:
            raise DataError(describe(f"{src}, 'x'", "at least one sample", "none"))
        self._check_label_info(y_info, total, src)
        self.n = int(total if samples is None else min(int(samples), total))
        self.dtype = dtype
        self._sample_bytes = float(np.prod(self._file_sample, dtype=np.float64)) * dtype.itemsize

    def _check_label_info(self, y_info, total: int, src: str) -> None:
        self.has_labels = y_info is not None
        if y_info is not None:
            y_shape, y_dtype = y_info
            if y_dtype.kind not in _NUMERIC or y_dtype.hasobject:
                raise DataError(describe(f"{src}, 'y'", "integer class labels", f"dtype {y_dtype}"))
            if y_shape != (total,):
                raise DataError(describe(f"{src}, 'y'", f"labels of shape ({total},), one per sample",
                                         f"{y_shape}" + (" (a single value)" if y_shape == () else "")))

    def _check_aer(self, reader, src: str, samples, y_info) -> None:
        """AER event lists: ``events`` (E rows of t, x, y, p) and ``offsets`` (N + 1): sample i's
        events are rows ``offsets[i]:offsets[i+1]``; binned into ``bins`` frames as they are read."""
        bins = self.bins
        if bins is None:
            raise DataError(describe(src, "a number of time bins for its AER event lists", "none",
                                     "pass --bins N (open_data(..., bins=N)): each sample's events become N frames"))
        if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
            raise DataError(describe(f"{src}, --bins", "an integer >= 1", repr(bins)))
        if len(self.input_shape) != 3 or self.input_shape[0] not in (1, 2):
            raise DataError(describe(src, "a model input (2, H, W) (one channel per polarity) or (1, H, W) for "
                                     "AER events", f"input shape {self.input_shape}"))
        if self.layout != "nchw":
            raise DataError(describe(f"{src}, --layout", "no layout for AER events (they carry x and y)",
                                     repr(self.layout), "drop --layout"))
        ev_shape, ev_dtype = reader.info("events")
        if ev_dtype.names is not None:
            missing = [f for f in AER_FIELDS if f not in ev_dtype.names]
            bad = [f for f in AER_FIELDS if f not in missing and (ev_dtype[f].kind not in _NUMERIC
                                                                  or ev_dtype[f].shape != ())]
            if missing or bad or len(ev_shape) != 1:
                raise DataError(describe(f"{src}, 'events'", "a 1-D record array with numeric fields t, x, y, p",
                                         f"shape {ev_shape}, fields {list(ev_dtype.names)}"))
        elif ev_dtype.kind not in _NUMERIC or len(ev_shape) != 2 or ev_shape[1] != 4:
            raise DataError(describe(f"{src}, 'events'", "numeric columns t, x, y, p: shape (E, 4), or a record "
                                     "array with those fields", f"shape {ev_shape}, dtype {ev_dtype}"))
        off_info = reader.info("offsets")
        if off_info is None:
            raise DataError(describe(src, "'offsets' (N + 1 integers: sample i's events are events[offsets[i]:"
                                     "offsets[i+1]]) next to 'events'", "none"))
        off_shape, off_dtype = off_info
        if off_dtype.kind not in "iu" or len(off_shape) != 1 or off_shape[0] < 2:
            raise DataError(describe(f"{src}, 'offsets'", "a 1-D integer array of N + 1 >= 2 offsets",
                                     f"shape {off_shape}, dtype {off_dtype}"))
        total = off_shape[0] - 1
        self._check_label_info(y_info, total, src)
        self.aer, self.frames, self._events = True, int(bins), ev_shape[0]
        self.n = int(total if samples is None else min(int(samples), total))
        self.dtype = np.dtype(np.int32)
        self._file_sample = (self.frames,) + self.input_shape
        self._sample_bytes = float(np.prod(self._file_sample, dtype=np.float64)) * 4

    # -- reading
    def read(self, start: int, stop: int):
        """Samples ``[start, stop)``: ``(x, y)``, validated.

        Returns
        -------
        x : ndarray, (B, *input_shape) or (B, frames, *input_shape)
            Raw values in the file's dtype (native byte order), channels first.
        y : ndarray of int64, (B,), or None

        Raises
        ------
        DataError
            A bad range, non-finite values, or a bad label (with its sample index).
        ResourceLimitError
            A slice larger than ``EVSIM_MEMORY_LIMIT`` (read fewer samples at a time).
        """
        src = str(self.path)
        if not (isinstance(start, (int, np.integer)) and isinstance(stop, (int, np.integer))
                and 0 <= start < stop <= self.n):
            raise DataError(describe(src, f"a sample range within [0, {self.n})", f"[{start}, {stop})"))
        return self._read(int(start), int(stop), labels=True)

    def _read(self, start: int, stop: int, labels: bool):
        src = str(self.path)
        limit = memory_limit()
        need = (stop - start) * self._sample_bytes
        if need > limit:
            raise ResourceLimitError(describe(
                src, f"slices of at most {limit} bytes (EVSIM_MEMORY_LIMIT)",
                f"{stop - start} samples of {self._sample_bytes:.3g} bytes = {need:.3g} bytes",
                "use a smaller --batch-size or fewer --samples"))
        reader = self._open()
        try:
            x = self._read_aer(reader, start, stop, limit) if self.aer else reader.read("x", start, stop)
            y = reader.read("y", start, stop) if labels and self.has_labels else None
        except EvsimError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise _unreadable(self.path, exc) from None
        if not self.aer:
            x = self._to_model_layout(x)
            _check_finite(x, src, start)
        if y is not None:
            y = check_labels(y, self.n_classes, src, start)
        return x, y

    def _read_aer(self, reader, start: int, stop: int, limit: int) -> np.ndarray:
        """Samples ``[start, stop)`` of AER event lists as event frames ``(B, bins, C, H, W)`` of counts."""
        src = str(self.path)
        off = reader.read("offsets", start, stop + 1).astype(np.int64)
        counts = np.diff(off)
        expected = f"non-decreasing offsets within [0, {self._events}] (the number of events)"
        if np.any(counts < 0):
            bad = int(np.argmax(counts < 0))
            raise DataError(describe(f"{src}, 'offsets'", expected,
                                     f"offsets[{start + bad}:{start + bad + 2}] = {off[bad:bad + 2].tolist()}"))
        if off[0] < 0 or off[-1] > self._events:
            raise DataError(describe(f"{src}, 'offsets'", expected,
                                     f"a range [{off[0]}, {off[-1]}] for samples [{start}, {stop})"))
        _, ev_dtype = reader.info("events")
        if float(off[-1] - off[0]) * ev_dtype.itemsize > limit:
            raise ResourceLimitError(describe(
                src, f"the events of one batch in at most {limit} bytes (EVSIM_MEMORY_LIMIT)",
                f"{off[-1] - off[0]} events for samples [{start}, {stop})", "use a smaller --batch-size"))
        events = reader.read("events", int(off[0]), int(off[-1])) if off[-1] > off[0] else \
            np.zeros((0,) if ev_dtype.names else (0, 4), ev_dtype)
        columns = [events[f] if ev_dtype.names else events[:, i] for i, f in enumerate(AER_FIELDS)]
        t, x, y, p = (np.asarray(c, dtype=np.float64) for c in columns)
        c, h, w = self.input_shape
        sample = np.repeat(np.arange(stop - start), counts)
        for name, values, bound in (("x", x, w), ("y", y, h)):
            bad = ~((values >= 0) & (values < bound) & (values == np.floor(values)))
            if np.any(bad):
                i = int(np.argmax(bad))
                raise DataError(describe(f"{src}, 'events' of sample {start + int(sample[i])}",
                                         f"integer {name} in [0, {bound}) (the model input is {c}x{h}x{w})",
                                         f"{name} = {values[i]:g} at event {int(off[0]) + i}"))
        bad = ~np.isfinite(t) | ~np.isfinite(p)
        if np.any(bad):
            i = int(np.argmax(bad))
            raise DataError(describe(f"{src}, 'events' of sample {start + int(sample[i])}", "finite t and p",
                                     f"t = {t[i]:g}, p = {p[i]:g} at event {int(off[0]) + i}"))
        return bin_events(t, x.astype(np.int64), y.astype(np.int64), p, counts, self.frames, self.input_shape)

    def _to_model_layout(self, x: np.ndarray) -> np.ndarray:
        if not x.dtype.isnative:
            x = x.astype(x.dtype.newbyteorder("="))
        lead = (len(x),) if self.frames is None else (len(x), self.frames)
        axes = LAYOUTS[self.layout]
        if axes is not None and len(self.input_shape) == 3:
            c, h, w = self.input_shape
            x = x.reshape(lead + (h, w, c)).transpose(tuple(range(len(lead))) + tuple(len(lead) + a for a in axes))
        return np.ascontiguousarray(x.reshape(lead + self.input_shape))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index):
        """``source[a:b]``: the inputs ``x`` of those samples (a step-1 slice), read now; labels untouched."""
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise DataError(describe(str(self.path), "a slice source[a:b] of samples", repr(index)))
        start, stop, _ = index.indices(self.n)
        if stop <= start:
            return np.zeros((0,) + ((self.frames,) if self.frames else ()) + self.input_shape, self.dtype)
        return self._read(start, stop, labels=False)[0]

    # -- lifetime and pickling
    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_reader"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)

    def __repr__(self) -> str:
        frames = f", frames={self.frames}" if self.frames else ""
        return f"FileSource({str(self.path)!r}, n={self.n}, input_shape={self.input_shape}{frames})"


def bin_events(t, x, y, p, counts, bins: int, input_shape) -> np.ndarray:
    """AER events of consecutive samples as event frames ``(B, bins, C, H, W)`` (int32 counts).

    Each sample's time span ``[t_first, t_last]`` is cut into ``bins`` equal bins (the last
    event falls in the last bin; a sample whose events all share one time is one bin 0);
    an event adds 1 at its pixel ``(y, x)`` in channel ``p > 0`` (two channels: OFF, ON) or 0
    (one channel).  ``counts[i]`` events belong to sample ``i``, in order.
    """
    n = len(counts)
    c, h, w = (int(d) for d in input_shape)
    frames = np.zeros((n, bins, c, h, w), np.int32)
    if len(t) == 0:
        return frames
    sample = np.repeat(np.arange(n), counts)
    first, last = np.full(n, np.inf), np.full(n, -np.inf)
    np.minimum.at(first, sample, t)
    np.maximum.at(last, sample, t)
    span = (last - first)[sample]
    rel = t - first[sample]
    b = np.where(span > 0, np.floor(rel * bins / np.where(span > 0, span, 1.0)), 0.0)
    b = np.minimum(b, bins - 1).astype(np.int64)
    channel = (p > 0).astype(np.int64) if c == 2 else np.zeros(len(t), np.int64)
    flat = (((sample * bins + b) * c + channel) * h + y) * w + x
    frames.reshape(-1)[:] = np.bincount(flat, minlength=frames.size).astype(np.int32)
    return frames


def open_data(path, input_shape, n_classes: int | None = None, samples: int | None = None,
              layout: str = "nchw", bins: int | None = None) -> FileSource:
    """Open a data file lazily: only declared shapes and dtypes are read now.

    Parameters
    ----------
    path : str or Path
        ``.npz``, ``.h5`` or ``.hdf5`` with ``x`` and optional ``y``.
    input_shape : tuple of int
        The model's ``input.shape`` (one sample, channels first).
    n_classes : int, optional
        Number of outputs; labels must lie in ``[0, n_classes)``.
    samples : int, optional
        Use only the first ``samples`` samples (``--samples``); the rest is never read.
    layout : {"nchw", "nhwc"}
        How the file stores (C, H, W) samples; ``"nhwc"`` (channels last) is transposed
        on reading.
    bins : int, optional
        For AER event lists (``events`` and ``offsets`` instead of ``x``): the number of
        frames each sample's events are binned into (:func:`bin_events`); required for
        them, refused for ``x`` data.

    Returns
    -------
    FileSource

    Raises
    ------
    DataError
        Missing file or ``x``, non-numeric dtype, shapes that do not fit the model, ``y``
        not one label per sample.
    """
    return FileSource(path, input_shape, n_classes, samples, layout, bins)


def load_data(path, input_shape, n_classes: int | None = None, samples: int | None = None, *,
              labels: bool = True, layout: str = "nchw"):
    """Read and check a data file (only the first ``samples`` samples are read).

    Parameters
    ----------
    path : str or Path
    input_shape : tuple of int
        The model's ``input.shape`` (one sample).
    n_classes : int, optional
        Number of outputs; labels must lie in ``[0, n_classes)``.
    samples : int, optional
        Use only the first ``samples`` samples.
    labels : bool
        False: do not read ``y`` at all (calibration needs inputs only); ``y`` is None.
    layout : {"nchw", "nhwc"}
        How ``x`` stores images: channels first (evsim's layout) or channels last (Keras/TF
        data); ``nhwc`` data is transposed to channels first as it is read.

    Returns
    -------
    x : ndarray, (N, *input_shape) (or (N, T_data, *input_shape) for event frames)
    y : ndarray of int64, (N,), or None

    Raises
    ------
    DataError
        Unreadable file, missing ``x``, wrong shapes, non-finite values, bad labels.
    """
    with open_data(path, input_shape, n_classes, samples, layout=layout) as source:
        return source.read(0, source.n) if labels else (source[0:source.n], None)


def check_data(x, y, input_shape, n_classes: int | None = None, source: str = "data"):
    """Validate in-memory inputs and labels (see :func:`load_data`); returns ``(x, y)``.

    ``x`` of shape ``(N, prod(input_shape))`` is reshaped to ``(N, *input_shape)``.
    ``x`` may also be a :class:`FileSource` of static samples (``y`` None): it is returned
    as is, to be sliced (``x[a:b]``, validated as read) by code that streams over it, such
    as calibration.
    """
    input_shape = tuple(input_shape)
    if isinstance(x, FileSource):
        if x.input_shape != input_shape or x.frames is not None or y is not None:
            found = (f"event frames ({x.frames} per sample)" if x.frames is not None else
                     "labels passed beside it" if y is not None else f"a source for input shape {x.input_shape}")
            raise DataError(describe(f"{source}, {x.path}", f"static samples of shape {input_shape}", found))
        return x, None
    x = np.asarray(x)
    if x.dtype.kind not in _NUMERIC:
        raise DataError(describe(f"{source}, 'x'", "numeric values", f"dtype {x.dtype}"))
    if x.ndim == 0:
        raise DataError(describe(f"{source}, 'x'", f"shape (N, {', '.join(map(str, input_shape))}) for this model",
                                 "a 0-d array (a single value)"))
    if x.ndim == 2 and x.shape[1:] == (int(np.prod(input_shape)),) and len(input_shape) > 1:
        x = x.reshape((len(x),) + input_shape)
    if x.shape[1:] != input_shape:
        raise DataError(describe(f"{source}, 'x'", f"shape (N, {', '.join(map(str, input_shape))}) for this model",
                                 f"{x.shape}", "the model's input.shape is one sample, channels first"))
    if len(x) == 0:
        raise DataError(describe(f"{source}, 'x'", "at least one sample", "none"))
    _check_finite(x, source, 0)
    if y is None:
        return x, None
    y = np.asarray(y)
    if y.shape != (len(x),):
        raise DataError(describe(f"{source}, 'y'", f"labels of shape ({len(x)},)", f"{y.shape}"))
    return x, check_labels(y, n_classes, source)
