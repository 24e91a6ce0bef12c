"""The OpenMP wait policy of Numba's workers, settled as early as ``import evsim``.

evsim wants ``OMP_WAIT_POLICY=passive`` (workers sleep at a barrier; a spinning worker holds a core
that the thread it waits for needs when the machine is busy: docs/performance.md, "Sharing the
machine").  The OpenMP runtime reads the variable once, when Numba starts its threads; if that
happened before evsim was imported, the policy in force is whatever the environment said then.
This module records that, before setting the default, and nothing else (no Numba import).
"""
import os
import sys

#: Numba's thread pool was already running when evsim was imported
STARTED_BEFORE = bool(getattr(sys.modules.get("numba.np.ufunc.parallel"), "_is_initialized", False))
#: OMP_WAIT_POLICY as it was before evsim set its default (None: unset)
POLICY_BEFORE = os.environ.get("OMP_WAIT_POLICY")
os.environ.setdefault("OMP_WAIT_POLICY", "passive")


def policy_in_force() -> str:
    """The wait policy Numba's OpenMP workers run with (``"default"`` when unset: they spin first)."""
    policy = POLICY_BEFORE if STARTED_BEFORE else os.environ.get("OMP_WAIT_POLICY")
    return (policy or "default").strip().lower()
