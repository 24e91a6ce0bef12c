"""Event statistics for synaptic-operation (SOP) counting (methods.md 5)."""
import numba

from ._flags import PJIT


@numba.njit(**PJIT)
def event_stats(ev_idx, ev_cnt, nev, fanout, out):
    """Accumulate spike, event and synaptic-operation counts of one step.

    An event of count ``k`` from neuron ``n`` costs ``|k| * fanout[n]`` SOPs (binary-spike
    hardware sends ``|k|`` spikes, each reaching every target of ``n``).

    Parameters
    ----------
    ev_idx, ev_cnt : ndarray, (B, E) int32
        Events (neuron index, signed count).
    nev : ndarray, (B,) int64
        Number of events per sample.
    fanout : ndarray, (N_src,) int64
        Structural fan-out (number of targets) per source neuron.
    out : ndarray, (B, 3) int64
        Updated in place: ``out[b, 0] += sum |k|`` (spikes), ``out[b, 1] += nev[b]`` (events),
        ``out[b, 2] += sum |k| * fanout[n]`` (SOPs).
    """
    n_batch = out.shape[0]
    for b in numba.prange(n_batch):
        spikes = 0
        sops = 0
        for e in range(nev[b]):
            magnitude = abs(numba.int64(ev_cnt[b, e]))
            spikes += magnitude
            sops += magnitude * fanout[ev_idx[b, e]]
        out[b, 0] += spikes
        out[b, 1] += nev[b]
        out[b, 2] += sops
