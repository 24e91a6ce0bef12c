"""How work is cut for the parallel kernels (measured on 2-core x86_64, docs/performance.md).

Kept beside the kernels because the engine's scheduling and the projections' scatter
calls both follow them.
"""
import numba

#: a neuron kernel splits a population into parts so that there are about this many work
#: items per thread (load balance), but no part is smaller than ``MIN_PART`` neurons
ITEMS_PER_THREAD = 4
MIN_PART = 2048
#: bytes of convolution weights one block of source channels may hold: about half of a
#: server core's L2 (1-2 MB), the rest is left for the currents being written
L2_BUDGET = 512 * 1024
#: a block of source channels costs one parallel region: only worth it when this many items re-use it
MIN_BLOCK_ITEMS = 16


def splits(items: int) -> int:
    """How many parts to cut each of ``items`` work items into for about ``ITEMS_PER_THREAD``
    items per thread (items differ in size; dynamic scheduling evens them out)."""
    return max(1, -(-ITEMS_PER_THREAD * numba.get_num_threads() // items))

#: a call whose estimated work is below this many nanoseconds runs on one thread (no parallel
#: region: its barrier costs tens of microseconds on an idle machine and a scheduler time slice,
#: milliseconds, when the other thread is descheduled on a busy one); estimates per unit of work:
MIN_PARALLEL_NS = 100_000
NS_PER_NEURON_STEP = 1.0  # neuron update + compaction, per neuron and step (measured ~0.5-1 ns)
NS_PER_SOP = 0.07  # scatter / gather, per synaptic operation (9-18 GSOP/s per core)
NS_PER_FILL = 0.3  # pre-loading one current
