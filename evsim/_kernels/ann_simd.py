"""Vector epilogues of the ANN executor's direct convolution (:func:`evsim._kernels.dense.direct_conv`).

Lane-wise operations on the :class:`evsim._kernels.simd.Vector` accumulators, each the exact IEEE
operation sequence of the scalar (NumPy) pass it replaces, so that fusing them into the
convolution changes no value: the per-channel affine map ``a * s + t`` (a multiplication then an
addition, no fused multiply-add, as :func:`evsim._kernels.dense.channel_affine`), ReLU and QCFS
(as :func:`evsim._kernels.dense.qcfs_forward`).  Only the ANN executor uses them.
"""
from llvmlite import ir
from numba.extending import intrinsic

from .simd import Vector, call_intrinsic, splat

__all__ = ["vaffine", "vqcfs", "vrelu"]


@intrinsic
def vaffine(typingctx, a, s, t):
    """Lane-wise ``a * s + t`` for scalars ``s``, ``t`` of the vector's dtype: two roundings."""
    if not isinstance(a, Vector) or s != a.dtype or t != a.dtype:
        return None
    sig = a(a, s, t)

    def codegen(context, builder, sig, args):
        vt = args[0].type
        return builder.fadd(builder.fmul(args[0], splat(builder, vt, args[1])), splat(builder, vt, args[2]))
    return sig, codegen


@intrinsic
def vrelu(typingctx, a):
    """Lane-wise ``0 if a < 0 else a`` (NaN stays NaN)."""
    if not isinstance(a, Vector):
        return None
    sig = a(a)

    def codegen(context, builder, sig, args):
        zero = ir.Constant(args[0].type, None)
        return builder.select(builder.fcmp_ordered("<", args[0], zero), zero, args[0])
    return sig, codegen


@intrinsic
def vqcfs(typingctx, a, levels, lam):
    """Lane-wise QCFS ``lam * clip(floor(a * L / lam + 1/2) / L, 0, 1)`` with ``L = levels`` (a scalar
    of the vector's dtype), in the order of :func:`evsim._kernels.dense.qcfs_forward` (NaN stays NaN)."""
    if not isinstance(a, Vector) or levels != a.dtype or lam != a.dtype:
        return None
    sig = a(a, levels, lam)

    def codegen(context, builder, sig, args):
        vt = args[0].type
        big_l, lc = splat(builder, vt, args[1]), splat(builder, vt, args[2])
        element = vt.element
        half = ir.Constant(vt, [ir.Constant(element, 0.5)] * vt.count)
        zero = ir.Constant(vt, None)
        one = ir.Constant(vt, [ir.Constant(element, 1.0)] * vt.count)
        scaled = builder.fadd(builder.fdiv(builder.fmul(args[0], big_l), lc), half)
        q = builder.fdiv(call_intrinsic(builder, "floor", scaled), big_l)
        q = builder.select(builder.fcmp_ordered("<", q, zero), zero, q)
        q = builder.select(builder.fcmp_ordered(">", q, one), one, q)
        return builder.fmul(lc, q)
    return sig, codegen
