"""Linear operators of SNN projections: implicit convolutions and materialised matrices.

A path of neuron-free nodes from a source population to a target is *composed* into one
operator (:mod:`evsim.ops` gives each op its composition rule): a :class:`ConvOp` where the
chain stays an exact convolution (checked at the borders), a :class:`MatrixOp` (dense or
CSR) otherwise.  Matrices are channels-first flat, as in the file format.  ``padding`` of
a :class:`ConvOp` is the top/left offset; the output size is explicit, so asymmetric
padding (``pad2d``) is an ordinary operator too.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .errors import ConversionError, describe
from .graph import memory_limit

__all__ = ["ConvOp", "MatrixOp", "identity", "conv_matrix", "then_conv", "as_matrix", "matmul", "depthwise",
           "conv_op", "is_diagonal", "is_identity", "shape3"]

Shape3 = tuple[int, int, int]


def shape3(shape) -> Shape3:
    """(C, H, W), or (F, 1, 1) for a flat shape."""
    return tuple(shape) if len(shape) == 3 else (int(shape[0]), 1, 1)


@dataclass
class ConvOp:
    """An implicit convolution ``(C, H, W) -> (C_out, H_out, W_out)``.

    Source positions at or beyond ``crop`` are never read (treated as zero): they
    lie past the last window of a pooling that was composed into this convolution.
    """

    weight: np.ndarray  # (C_out, C_in/groups, kH, kW), float64
    groups: int
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    in_shape: Shape3
    crop: tuple[int, int]
    out_shape: Shape3

    @property
    def depthwise(self) -> bool:
        return self.groups == self.in_shape[0] == self.out_shape[0]


@dataclass
class MatrixOp:
    """A materialised linear map; ``matrix`` is (F_in, F_out), channels-first flat."""

    matrix: object  # ndarray or scipy.sparse.csr_matrix
    in_shape: Shape3
    out_shape: Shape3


def conv_op(weight, groups, stride, padding, dilation, in_shape) -> ConvOp:
    c_out, _, kh, kw = weight.shape
    _, h, w = in_shape
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return ConvOp(np.asarray(weight, dtype=np.float64), groups, tuple(stride), tuple(padding), tuple(dilation),
                  in_shape, (in_shape[1], in_shape[2]), (c_out, ho, wo))


def depthwise(per_channel: np.ndarray, kernel, stride, padding, in_shape) -> ConvOp:
    c = in_shape[0]
    weight = np.broadcast_to(per_channel.reshape(c, 1, 1, 1), (c, 1) + tuple(kernel)).copy()
    return conv_op(weight, c, stride, padding, (1, 1), in_shape)


def identity(shape) -> ConvOp:
    """The identity map as a 1x1 depthwise convolution."""
    s = shape3(shape)
    return depthwise(np.ones(s[0]), (1, 1), (1, 1), (0, 0), s)


def conv_matrix(op: ConvOp) -> sp.csr_matrix:
    """The (F_in, F_out) sparse matrix of a :class:`ConvOp`, channels-first flat."""
    c_in, h, w = op.in_shape
    c_out, ho, wo = op.out_shape
    _, cig, kh, kw = op.weight.shape
    cog = c_out // op.groups
    nnz = c_out * cig * kh * kw * ho * wo
    if nnz * 16 > memory_limit():
        raise ConversionError(describe("projection", f"a composed connectivity of at most {memory_limit()} bytes",
                                       f"{nnz} synapses", "raise EVSIM_MEMORY_LIMIT or simplify the network"))
    co = np.arange(c_out)[:, None, None, None]
    ci = (co // cog) * cig + np.arange(cig)[None, :, None, None]
    oy = np.arange(ho)[None, None, :, None]
    ox = np.arange(wo)[None, None, None, :]
    rows, cols, vals = [], [], []
    for ky in range(kh):
        for kx in range(kw):
            y = oy * op.stride[0] - op.padding[0] + ky * op.dilation[0]
            x = ox * op.stride[1] - op.padding[1] + kx * op.dilation[1]
            ok = (y >= 0) & (y < op.crop[0]) & (x >= 0) & (x < op.crop[1])
            ok = np.broadcast_to(ok, (c_out, cig, ho, wo))
            src = (ci * h + y) * w + x
            dst = (co * ho + oy) * wo + ox
            val = np.broadcast_to(op.weight[:, :, ky, kx][:, :, None, None], ok.shape)
            rows.append(np.broadcast_to(src, ok.shape)[ok])
            cols.append(np.broadcast_to(dst, ok.shape)[ok])
            vals.append(val[ok])
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(c_in * h * w, c_out * ho * wo))


def as_matrix(op) -> object:
    return op.matrix if isinstance(op, MatrixOp) else conv_matrix(op)


def matmul(a, b):
    if sp.issparse(a):
        return a @ b
    if sp.issparse(b):
        return np.asarray((b.T @ a.T).T)
    return a @ b


def _exact_1d(n_crop: int, k: int, s: int, p: int, d: int, m: int, kb: int, sb: int, pb: int, db: int,
              mb: int) -> bool:
    """Whether conv b after conv a (one axis) equals the composed conv at the borders.

    b reads a's output at t = q*sb - pb + j*db; positions t outside [0, m) are zero
    padding for b, but the composed conv would evaluate a there: exact iff every
    such evaluation reads only cropped-away source positions.
    """
    if d != 1 or db != 1:
        return False
    for q in range(mb):
        for j in range(kb):
            t = q * sb - pb + j
            if 0 <= t < m:
                continue
            if any(0 <= t * s - p + r < n_crop for r in range(k)):
                return False
    return True


def _compose_convs(a: ConvOp, b: ConvOp) -> ConvOp | None:
    """b ∘ a as one convolution, or None where that would not be exact or simple."""
    kah, kaw = a.weight.shape[2:]
    kbh, kbw = b.weight.shape[2:]
    # source positions past a's last window are never read: crop them first
    crop = tuple(min(a.crop[i], (a.out_shape[1 + i] - 1) * a.stride[i] - a.padding[i]
                     + a.dilation[i] * (a.weight.shape[2 + i] - 1) + 1) for i in (0, 1))
    for axis in (0, 1):
        ka, kb = (kah, kbh) if axis == 0 else (kaw, kbw)
        if not _exact_1d(crop[axis], ka, a.stride[axis], a.padding[axis], a.dilation[axis], a.out_shape[1 + axis],
                         kb, b.stride[axis], b.padding[axis], b.dilation[axis], b.out_shape[1 + axis]):
            return None
    (sah, saw) = a.stride
    kh, kw = kah + (kbh - 1) * sah, kaw + (kbw - 1) * saw
    c_out = b.out_shape[0]
    if a.depthwise:
        cig = b.weight.shape[1]
        cog = c_out // b.groups
        ch = (np.arange(c_out)[:, None] // cog) * cig + np.arange(cig)[None, :]
        inner, groups = a.weight[ch, 0], b.groups  # (C_out, cig, kah, kaw)
        mix = lambda jy, jx: b.weight[:, :, jy, jx][:, :, None, None] * inner  # noqa: E731
    elif b.depthwise:
        cig, groups = a.weight.shape[1], a.groups
        mix = lambda jy, jx: b.weight[:, 0, jy, jx][:, None, None, None] * a.weight  # noqa: E731
    elif a.groups == b.groups == 1:
        cig, groups = a.weight.shape[1], 1
        mix = lambda jy, jx: np.einsum("om,mihw->oihw", b.weight[:, :, jy, jx], a.weight)  # noqa: E731
    else:
        return None
    weight = np.zeros((c_out, cig, kh, kw))
    for jy in range(kbh):
        for jx in range(kbw):
            weight[:, :, jy * sah:jy * sah + kah, jx * saw:jx * saw + kaw] += mix(jy, jx)
    stride = (a.stride[0] * b.stride[0], a.stride[1] * b.stride[1])
    padding = (b.padding[0] * a.stride[0] + a.padding[0], b.padding[1] * a.stride[1] + a.padding[1])
    return ConvOp(weight, groups, stride, padding, (1, 1), a.in_shape, crop, b.out_shape)


def is_diagonal(op) -> bool:
    """One weight per channel from each neuron to the neuron at the same position (identity, BN)."""
    return (isinstance(op, ConvOp) and op.depthwise and op.weight.shape[2:] == (1, 1) and op.stride == (1, 1)
            and op.padding == (0, 0) and op.crop == op.in_shape[1:] and op.out_shape == op.in_shape)


def is_identity(op) -> bool:
    return is_diagonal(op) and bool(np.all(op.weight == 1))


def then_conv(op, conv: ConvOp):
    if is_identity(op):
        return conv
    if isinstance(op, ConvOp):
        composed = _compose_convs(op, conv)
        if composed is not None:
            return composed
    return MatrixOp(matmul(as_matrix(op), conv_matrix(conv)), op.in_shape, conv.out_shape)
