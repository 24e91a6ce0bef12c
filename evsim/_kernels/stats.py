"""Event statistics for synaptic-operation (SOP) counting (methods.md 5), and spike counts."""
import numba

from ._flags import PJIT


@numba.njit(**PJIT)
def event_stats(ev_idx, ev_cnt, nev, fanout, out):
    """Accumulate spike, event and synaptic-operation counts of work items (sample, step).

    An event of count ``k`` from neuron ``n`` costs ``|k| * fanout[n]`` SOPs (binary-spike
    hardware sends ``|k|`` spikes, each reaching every target of ``n``).  The neuron kernels
    count their own events; this kernel counts derived sources (max-pooling gates).

    Parameters
    ----------
    ev_idx, ev_cnt : ndarray, (items, E)
        Events (neuron index, signed count).
    nev : ndarray, (items,) int64
        Number of events per item.
    fanout : ndarray, (N_src,) int64
        Structural fan-out (number of targets) per source neuron.
    out : ndarray, (items, 3) int64
        Updated in place: ``out[i, 0] += sum |k|`` (spikes), ``out[i, 1] += nev[i]`` (events),
        ``out[i, 2] += sum |k| * fanout[n]`` (SOPs).
    """
    n_items = out.shape[0]
    for i in numba.prange(n_items):
        spikes = 0
        sops = 0
        for e in range(nev[i]):
            magnitude = abs(numba.int64(ev_cnt[i, e]))
            spikes += magnitude
            sops += magnitude * fanout[ev_idx[i, e]]
        out[i, 0] += spikes
        out[i, 1] += nev[i]
        out[i, 2] += sops


@numba.njit(**PJIT)
def accumulate_counts(ev_idx, ev_cnt, nev, counts):
    """Add the signed spike counts of all steps to a per-neuron total.

    Parameters
    ----------
    ev_idx, ev_cnt : ndarray, (B, T, E)
        Events (neuron index, signed count).
    nev : ndarray, (B, T) int64
        Number of events per sample and step.
    counts : ndarray, (B, N) int64
        Updated in place: ``counts[b, n] += sum_t count``.
    """
    n_batch, n_steps = nev.shape
    for b in numba.prange(n_batch):
        for t in range(n_steps):
            for e in range(nev[b, t]):
                counts[b, ev_idx[b, t, e]] += ev_cnt[b, t, e]
