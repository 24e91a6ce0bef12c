"""A plain NumPy executor for the ANN graph (no deep-learning framework).

Used for the ANN's own accuracy, for calibration (it records activations), and by
the SNN compiler for the constant per-step currents (bias and analog input).  Each op's
forward function sits in its entry of the op registry (:data:`evsim.ops.OPS`); it takes
the node and its input values (batch first) and returns the node's value.
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .errors import ConversionError, describe
from .graph import Graph, Node

__all__ = ["forward", "predict", "conv2d", "qcfs", "windows"]


def _channel(param: np.ndarray, ndim: int) -> np.ndarray:
    """Broadcast a scalar or per-channel parameter along axis 1 of a batch of ``ndim`` dims."""
    return param.reshape((1, -1) + (1,) * (ndim - 2)) if param.ndim == 1 else param


def windows(x: np.ndarray, kernel, stride, padding, dilation=(1, 1), fill=0.0) -> np.ndarray:
    """View of shape (B, C, H_out, W_out, kH, kW) over the padded input."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    view = sliding_window_view(x, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(2, 3))
    return view[:, :, ::sh, ::sw, ::dh, ::dw]


def conv2d(x: np.ndarray, weight: np.ndarray, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
           groups: int = 1) -> np.ndarray:
    """2-D cross-correlation with zero padding, PyTorch semantics, on a batch (B, C, H, W)."""
    c_out, c_in_g, kh, kw = weight.shape
    win = windows(x, (kh, kw), stride, padding, dilation)
    b, c, ho, wo = win.shape[:4]
    win = win.reshape(b, groups, c_in_g, ho, wo, kh, kw)
    w = weight.reshape(groups, c_out // groups, c_in_g, kh, kw).astype(x.dtype, copy=False)
    out = np.einsum("bgihwkl,goikl->bgohw", win, w, optimize=True).reshape(b, c_out, ho, wo)
    if bias is not None:
        out += bias.astype(x.dtype, copy=False).reshape(1, -1, 1, 1)
    return out


def qcfs(z: np.ndarray, threshold: np.ndarray, levels: int) -> np.ndarray:
    """QCFS activation ``λ·clip(floor(z·L/λ + 1/2)/L, 0, 1)`` (λ scalar or per channel)."""
    lam = _channel(threshold.astype(z.dtype, copy=False), z.ndim)
    return lam * np.clip(np.floor(z * levels / lam + 0.5) / levels, 0, 1)


def forward(graph: Graph, x: np.ndarray | None, wanted: Iterable[str] | None = None,
            fixed: Mapping[str, np.ndarray] | None = None, dtype=np.float64,
            preprocessed: bool = False) -> dict[str, np.ndarray]:
    """Evaluate the graph on a batch.

    Parameters
    ----------
    graph : Graph
        A validated graph.
    x : ndarray or None
        Raw input batch ``(B, *input.shape)``; preprocessing of ``graph.input`` is
        applied unless ``preprocessed``.  ``None`` when only ``fixed`` values are needed.
    wanted : iterable of str, optional
        Node names to return; only what they depend on is computed (default: output).
    fixed : mapping, optional
        Values to use for some nodes instead of computing them (e.g. zeros for neuron
        populations, or cached sample-independent values).
    dtype : numpy dtype
        Arithmetic precision.

    Returns
    -------
    dict
        Node name -> value for every node in ``wanted``.
    """
    from .ops import OPS

    wanted = [graph.output] if wanted is None else list(wanted)
    values: dict[str, np.ndarray] = dict(fixed or {})
    if x is not None and "input" not in values:
        values["input"] = np.asarray(x, dtype=dtype) if preprocessed else graph.input.preprocess(x, dtype)
    needed = set(wanted)
    for node in reversed(graph.nodes):
        if node.name in needed and node.name not in values:
            needed.update(node.inputs)
    for node in graph.nodes:
        if node.name not in needed or node.name in values:
            continue
        fn = OPS[node.op].forward
        if fn is None:
            raise ConversionError(describe(f"node '{node.name}'", "an op the ANN executor can evaluate",
                                           repr(node.op), "evaluate the ANN model, not the SNN file"))
        values[node.name] = fn(node, [values[name] for name in node.inputs])
    return {name: values[name] for name in wanted}


def predict(graph: Graph, x: np.ndarray, batch_size: int = 256, dtype=np.float64) -> np.ndarray:
    """Class predictions (argmax of the flattened output) of the ANN for raw inputs ``x``."""
    out = []
    for start in range(0, len(x), batch_size):
        logits = forward(graph, x[start:start + batch_size], dtype=dtype)[graph.output]
        out.append(logits.reshape(len(logits), -1).argmax(axis=1))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
