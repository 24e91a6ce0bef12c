"""Data files for simulation and calibration: ``.npz`` or ``.h5`` with ``x`` and optional ``y``.

``x`` holds raw values of shape ``(N, *input.shape)`` (or ``(N, prod(input.shape))``,
flattened channels first); the model's input preprocessing is applied later.  ``y``
holds integer class labels of shape ``(N,)``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DataError, EvsimError, describe
from .format import check_declared, read_npz_arrays
from .graph import memory_limit

__all__ = ["load_data", "check_data"]


def _read(path: Path, limit: int) -> dict[str, np.ndarray]:
    suffix = path.suffix.lower()
    if suffix == ".npz":
        arrays = read_npz_arrays(path, limit)
        return {key: arrays[key] for key in ("x", "y") if key in arrays}
    if suffix in (".h5", ".hdf5"):
        import h5py

        out = {}
        with h5py.File(path, "r") as f:
            for key in ("x", "y"):
                if key in f:
                    ds = f[key]
                    if not isinstance(ds, h5py.Dataset):
                        raise DataError(describe(f"{path}, '{key}'", "a dataset", "a group"))
                    check_declared(path, key, ds.shape, ds.dtype, limit)
                    out[key] = np.asarray(ds[()])
        return out
    raise DataError(describe(str(path), "a data file ending in .npz, .h5 or .hdf5", repr(path.suffix or "none")))


def load_data(path, input_shape, n_classes: int | None = None, samples: int | None = None):
    """Read and check a data file.

    Parameters
    ----------
    path : str or Path
    input_shape : tuple of int
        The model's ``input.shape`` (one sample).
    n_classes : int, optional
        Number of outputs; labels must lie in ``[0, n_classes)``.
    samples : int, optional
        Use only the first ``samples`` samples.

    Returns
    -------
    x : ndarray, (N, *input_shape)
    y : ndarray of int64, (N,), or None

    Raises
    ------
    DataError
        Unreadable file, missing ``x``, wrong shapes, non-finite values, bad labels.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(describe(str(path), "an existing data file", "nothing at that path"))
    try:
        arrays = _read(path, memory_limit())
    except EvsimError:
        raise
    except Exception as exc:  # noqa: BLE001 - numpy/h5py/zipfile raise many types for a bad file
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(describe(str(path), "a readable data file", f"an unreadable one ({reason})")) from None
    if "x" not in arrays:
        raise DataError(describe(str(path), "an array 'x' of inputs", "none", "store inputs under the key 'x'"))
    if samples is not None:
        if samples < 1:
            raise DataError(describe(str(path), "--samples >= 1", str(samples)))
        arrays = {k: v[:samples] for k, v in arrays.items()}
    return check_data(arrays["x"], arrays.get("y"), input_shape, n_classes, source=str(path))


def check_data(x, y, input_shape, n_classes: int | None = None, source: str = "data"):
    """Validate in-memory inputs and labels (see :func:`load_data`)."""
    x = np.asarray(x)
    input_shape = tuple(input_shape)
    if x.dtype.kind not in "biuf":
        raise DataError(describe(f"{source}, 'x'", "numeric values", f"dtype {x.dtype}"))
    if x.ndim == 2 and x.shape[1:] == (int(np.prod(input_shape)),) and len(input_shape) > 1:
        x = x.reshape((len(x),) + input_shape)
    if x.shape[1:] != input_shape:
        raise DataError(describe(f"{source}, 'x'", f"shape (N, {', '.join(map(str, input_shape))}) for this model",
                                 f"{x.shape}", "the model's input.shape is one sample, channels first"))
    if len(x) == 0:
        raise DataError(describe(f"{source}, 'x'", "at least one sample", "none"))
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
        if bad.any():
            raise DataError(describe(f"{source}, 'x'", "finite values",
                                     f"NaN/inf in {int(bad.sum())} samples (first: index {int(np.argmax(bad))})"))
    if y is None:
        return x, None
    y = np.asarray(y)
    if y.shape != (len(x),):
        raise DataError(describe(f"{source}, 'y'", f"labels of shape ({len(x)},)", f"{y.shape}"))
    if y.dtype.kind == "f":
        if not (np.isfinite(y).all() and np.all(y == np.round(y))):
            raise DataError(describe(f"{source}, 'y'", "integer class labels", "non-integer values"))
    elif y.dtype.kind not in "iub":
        raise DataError(describe(f"{source}, 'y'", "integer class labels", f"dtype {y.dtype}"))
    y = y.astype(np.int64)
    if len(y) and (y.min() < 0 or (n_classes is not None and y.max() >= n_classes)):
        bad = int(y.min()) if y.min() < 0 else int(y.max())
        raise DataError(describe(f"{source}, 'y'", f"labels in [0, {n_classes})", f"label {bad}",
                                 "labels must index the model's outputs"))
    return x, y
