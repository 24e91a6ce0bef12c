"""Spiking max pooling, gated by accumulated spike counts.

Max pooling has no exact spiking equivalent (methods.md 3). This kernel implements the usual
approximation: each pooling window passes on the events of the one input that has emitted the
most spikes so far (largest accumulated signed count, including this step), and drops the
events of all other inputs. The result is approximate by nature: the winner can change over
time and spikes emitted before a neuron became the winner are never passed on.
"""
import numba
import numpy as np

from ._flags import JIT, PJIT


@numba.njit(**JIT)
def _window_winner(cum_row, oy, ox, c, src_h, src_w, src_c, k_h, k_w,
                   stride_h, stride_w, pad_h, pad_w):
    """Source neuron index with the largest ``cum`` in window ``(oy, ox)`` of channel ``c``.

    Padding positions are ignored; ties go to the first position in row-major ``(ky, kx)``
    order. Returns -1 if the window holds no source position.
    """
    winner = -1
    best = 0
    y0 = oy * stride_h - pad_h
    x0 = ox * stride_w - pad_w
    for ky in range(k_h):
        y = y0 + ky
        if y < 0 or y >= src_h:
            continue
        for kx in range(k_w):
            x = x0 + kx
            if x < 0 or x >= src_w:
                continue
            n = (y * src_w + x) * src_c + c
            if winner < 0 or cum_row[n] > best:  # strict '>': first maximum wins ties
                winner = n
                best = cum_row[n]
    return winner


@numba.njit(**PJIT)
def maxpool_gate(ev_idx, ev_cnt, nev, cum, src_h, src_w, src_c, out_h, out_w,
                 k_h, k_w, stride_h, stride_w, pad_h, pad_w, out_idx, out_cnt, out_nev):
    """Gate the events of T steps through spiking max-pooling windows, step by step.

    Per step, pass 1 adds the step's events to ``cum``. Pass 2, for every event of neuron ``n``
    at ``(y, x, c)`` and every window ``(oy, ox)`` of channel ``c`` containing it, emits an output
    event ``(oy*out_w + ox)*src_c + c`` with the same count if ``n`` is the window's winner (see
    ``_window_winner``). A window has one winner, so each output index occurs at most once.

    Events are produced in source order, which is not output order when a source row feeds
    several window positions; the output of each step is therefore sorted afterwards (skipped
    when it is already sorted). This costs O(m log m) in the m output events, and no scratch
    row the size of the output population has to be cleared.

    Parameters
    ----------
    ev_idx, ev_cnt : ndarray, (B, T, E)
        Source events (HWC neuron index, signed count).
    nev : ndarray, (B, T) int64
        Number of source events per sample and step.
    cum : ndarray, (B, src_h*src_w*src_c) int32
        Accumulated signed spike count per source neuron, updated in place.
    src_h, src_w, src_c : int
        Source population shape (pooling keeps the channels: out_c = src_c).
    out_h, out_w : int
        Output spatial shape.
    k_h, k_w, stride_h, stride_w, pad_h, pad_w : int
        Pooling window size, stride and padding (padding positions never win).
    out_idx, out_cnt : ndarray, (B, T, out_h*out_w*src_c)
        Output events (increasing index, signed count), written.
    out_nev : ndarray, (B, T) int64
        Number of output events per sample and step, written.
    """
    n_batch, n_steps = nev.shape
    for b in numba.prange(n_batch):
        for t in range(n_steps):
            ib = ev_idx[b, t]
            kb = ev_cnt[b, t]
            n_in = nev[b, t]
            for e in range(n_in):
                cum[b, ib[e]] += kb[e]

            oi = out_idx[b, t]
            ok = out_cnt[b, t]
            n_out = 0
            for e in range(n_in):
                n = ib[e]
                c = n % src_c
                pixel = n // src_c
                x = pixel % src_w
                y = pixel // src_w
                for ky in range(k_h):
                    ty = y + pad_h - ky
                    if ty < 0:
                        break
                    oy = ty // stride_h
                    if oy * stride_h != ty or oy >= out_h:
                        continue
                    for kx in range(k_w):
                        tx = x + pad_w - kx
                        if tx < 0:
                            break
                        ox = tx // stride_w
                        if ox * stride_w != tx or ox >= out_w:
                            continue
                        winner = _window_winner(cum[b], oy, ox, c, src_h, src_w, src_c,
                                                k_h, k_w, stride_h, stride_w, pad_h, pad_w)
                        if winner == n:
                            oi[n_out] = (oy * out_w + ox) * src_c + c
                            ok[n_out] = kb[e]
                            n_out += 1

            is_sorted = True
            for j in range(1, n_out):
                if oi[j - 1] > oi[j]:
                    is_sorted = False
                    break
            if not is_sorted:
                indices = oi[:n_out].copy()
                counts = ok[:n_out].copy()
                order = np.argsort(indices)  # output indices are unique: stability is irrelevant
                for j in range(n_out):
                    oi[j] = indices[order[j]]
                    ok[j] = counts[order[j]]
            out_nev[b, t] = n_out
