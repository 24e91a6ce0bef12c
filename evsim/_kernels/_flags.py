"""The one place where the numba compilation flags of all kernels live.

- ``numba.njit`` always compiles in nopython mode (no silent, slow object-mode fallback).
- ``nogil``: callers may run kernels from several Python threads.
- ``cache``: compiled machine code is reused across processes (first-call latency).
- ``error_model="numpy"``: kernels never raise; division by zero gives inf/nan like NumPy instead
  of a ZeroDivisionError check on every division (callers validate their inputs).
- No ``fastmath``: kernels decide spikes with floating-point comparisons, which must be
  reproducible and identical to the NumPy reference implementations.
"""

JIT = dict(nogil=True, cache=True, error_model="numpy")
PJIT = dict(JIT, parallel=True)
#: scalar neuron steps: plain functions that LLVM inlines into the factory's kernels
STEP_JIT = JIT

__all__ = ["JIT", "PJIT", "STEP_JIT"]
