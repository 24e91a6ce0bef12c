"""Explicit SIMD vectors inside Numba kernels: a vector type and a few LLVM intrinsics.

Numba does not keep a block of accumulators in registers by itself (measured: a loop that adds
many weight rows into one output row re-loads and re-stores the output at every row).  These
intrinsics give kernels an LLVM vector value ``<W x float>`` that lives in registers: ``W`` may be
any width (64 float32 = four 512-bit registers); LLVM splits a wide vector into the machine's
registers (AVX-512, AVX2, SSE or scalar code), so the same kernel runs on every x86-64 (and any
other) CPU, and every lane does exactly the IEEE operation the scalar code would do (no fused
multiply-add, no reassociation): results are bit-identical to the scalar loop.

Everything is pure Python + llvmlite (shipped with Numba): nothing to compile at install time.
Kernels using these intrinsics are cacheable like any other (``cache=True``).
"""
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, models, register_model

__all__ = ["Vector", "vload", "vstore", "vadd", "vscale", "vzeros", "vfma"]


class Vector(types.Type):
    """``width`` lanes of ``dtype`` (a Numba float type), held as one LLVM vector value."""

    def __init__(self, dtype, width: int):
        self.dtype, self.width = dtype, int(width)
        super().__init__(name=f"Vector({dtype}x{self.width})")


@register_model(Vector)
class _VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        element = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(element, fe_type.width))


def splat(builder, vector_type, scalar):
    """IR: a vector of ``vector_type`` with ``scalar`` in every lane."""
    vec = builder.insert_element(ir.Constant(vector_type, ir.Undefined), scalar, ir.Constant(ir.IntType(32), 0))
    mask = ir.Constant(ir.VectorType(ir.IntType(32), vector_type.count), [0] * vector_type.count)
    return builder.shuffle_vector(vec, ir.Constant(vector_type, ir.Undefined), mask)


def call_intrinsic(builder, name: str, *operands):
    """IR: call the LLVM vector intrinsic ``llvm.NAME`` on operands of one vector type (declared once
    per module), e.g. ``call_intrinsic(builder, "fma", a, b, c)``."""
    vector_type = operands[0].type
    element = "f32" if vector_type.element == ir.FloatType() else "f64"
    full = f"llvm.{name}.v{vector_type.count}{element}"
    fn = builder.module.globals.get(full) or ir.Function(
        builder.module, ir.FunctionType(vector_type, [vector_type] * len(operands)), name=full)
    return builder.call(fn, list(operands))


def _address(context, builder, array_type, array, index):
    data = context.make_array(array_type)(context, builder, array).data
    return builder.gep(data, [index])


@intrinsic
def vload(typingctx, array, index, width):
    """``array[index:index + width]`` as a vector (unaligned load, no bounds check).  ``array`` is a
    C-contiguous 1-D float array, ``width`` a compile-time constant."""
    if not isinstance(width, types.IntegerLiteral) or not isinstance(array, types.Array):
        return None
    sig = Vector(array.dtype, width.literal_value)(array, index, width)

    def codegen(context, builder, sig, args):
        pointer = _address(context, builder, sig.args[0], args[0], args[1])
        vector_type = context.get_value_type(sig.return_type)
        return builder.load(builder.bitcast(pointer, vector_type.as_pointer()), align=sig.args[0].dtype.bitwidth // 8)
    return sig, codegen


@intrinsic
def vstore(typingctx, array, index, vector):
    """``array[index:index + width] = vector`` (unaligned store, no bounds check)."""
    if not isinstance(vector, Vector):
        return None
    sig = types.void(array, index, vector)

    def codegen(context, builder, sig, args):
        pointer = _address(context, builder, sig.args[0], args[0], args[1])
        builder.store(args[2], builder.bitcast(pointer, args[2].type.as_pointer()),
                      align=sig.args[0].dtype.bitwidth // 8)
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def vadd(typingctx, a, b):
    """Lane-wise ``a + b``."""
    if not isinstance(a, Vector) or a != b:
        return None
    sig = a(a, b)

    def codegen(context, builder, sig, args):
        return builder.fadd(args[0], args[1])
    return sig, codegen


@intrinsic
def vscale(typingctx, a, k):
    """Lane-wise ``a * k`` for a scalar ``k`` of the vector's dtype (a multiplication, rounded, as
    the scalar ``k * w`` is)."""
    if not isinstance(a, Vector) or k != a.dtype:
        return None
    sig = a(a, k)

    def codegen(context, builder, sig, args):
        return builder.fmul(args[0], splat(builder, args[0].type, args[1]))
    return sig, codegen


@intrinsic
def vzeros(typingctx, like, width):
    """A vector of ``width`` zeros of the dtype of the scalar ``like``."""
    if not isinstance(width, types.IntegerLiteral) or not isinstance(like, types.Float):
        return None
    sig = Vector(like, width.literal_value)(like, width)

    def codegen(context, builder, sig, args):
        return ir.Constant(context.get_value_type(sig.return_type), None)
    return sig, codegen


@intrinsic
def vfma(typingctx, a, k, c):
    """Lane-wise ``a * k + c`` with one rounding (fused multiply-add) for a scalar ``k``.  Only for
    the ANN executor's dense convolutions: spike decisions never use it (the simulation's kernels
    multiply and add separately, as the NumPy references do)."""
    if not isinstance(a, Vector) or a != c or k != a.dtype:
        return None
    sig = a(a, k, c)

    def codegen(context, builder, sig, args):
        return call_intrinsic(builder, "fma", args[0], splat(builder, args[0].type, args[1]), args[2])
    return sig, codegen
