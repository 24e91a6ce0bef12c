"""AER event lists (``events`` + ``offsets``) binned into event frames with ``--bins`` (issue 13, item 1).

The binning is checked against a per-event loop, the run against the same frames given as ``x``
(the Sinabs N-MNIST NIR graph), and every malformed list is refused naming the sample.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest

pytest.importorskip("nir")

import evsim  # noqa: E402
from evsim.data_io import bin_events, open_data  # noqa: E402
from evsim.errors import DataError  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
SINABS = FIXTURES / "nir" / "cnn_sinabs.nir"
EVSIM = os.environ.get("EVSIM_COMMAND", "evsim")
DTYPE = [("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "u1")]  # tonic's N-MNIST record layout


def aer_set(rng, n, shape, mean_events=300, duration=300_000):
    """Random AER samples for a (C, H, W) sensor: (events record array, offsets, labels); sample 1 is empty."""
    c, h, w = shape
    counts = rng.poisson(mean_events, n)
    counts[1] = 0
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    ev = np.zeros(offsets[-1], DTYPE)
    for i in range(n):
        part = ev[offsets[i]:offsets[i + 1]]
        part["t"] = np.sort(rng.integers(0, duration, len(part)))
        part["x"], part["y"] = rng.integers(0, w, len(part)), rng.integers(0, h, len(part))
        part["p"] = rng.integers(0, 2, len(part))
    return ev, offsets, rng.integers(0, 10, n)


def frames_by_loop(ev, offsets, bins, shape):
    """The definition, one event at a time: equal time bins over each sample's [t_first, t_last]."""
    c, h, w = shape
    out = np.zeros((len(offsets) - 1, bins, c, h, w), np.int64)
    for i in range(len(offsets) - 1):
        part = ev[offsets[i]:offsets[i + 1]]
        if len(part) == 0:
            continue
        t0, t1 = int(part["t"].min()), int(part["t"].max())
        for e in part:
            b = 0 if t1 == t0 else min(bins - 1, int((int(e["t"]) - t0) * bins // (t1 - t0)))
            out[i, b, int(e["p"] > 0) if c == 2 else 0, e["y"], e["x"]] += 1
    return out


@pytest.mark.parametrize("shape, bins", [((2, 6, 5), 1), ((2, 6, 5), 7), ((1, 4, 4), 3)])
def test_binning_equals_the_definition(shape, bins):
    rng = np.random.default_rng(bins)
    ev, offsets, _ = aer_set(rng, 6, shape, mean_events=40)
    ev["t"][offsets[3]:offsets[4]] = 1234  # one sample whose events share one time: all in bin 0
    counts = np.diff(offsets)
    got = bin_events(ev["t"].astype(float), ev["x"].astype(np.int64), ev["y"].astype(np.int64),
                     ev["p"].astype(float), counts, bins, shape)
    np.testing.assert_array_equal(got, frames_by_loop(ev, offsets, bins, shape))
    assert got.sum() == len(ev)  # conservation: every event in exactly one frame


@pytest.mark.parametrize("suffix", [".h5", ".npz"])
def test_run_on_aer_equals_run_on_the_same_frames(tmp_path, suffix):
    rng = np.random.default_rng(0)
    ev, offsets, y = aer_set(rng, 12, (2, 34, 34))
    aer = tmp_path / f"aer{suffix}"
    if suffix == ".h5":
        with h5py.File(aer, "w") as f:
            f["events"], f["offsets"], f["y"] = ev, offsets, y
    else:
        np.savez(aer, events=ev, offsets=offsets, y=y)
    frames = tmp_path / "frames.npz"
    np.savez(frames, x=frames_by_loop(ev, offsets, 5, (2, 34, 34)).astype(np.uint8), y=y)

    def run(*args):
        out = subprocess.run([EVSIM, "run", str(SINABS), *map(str, args), "--json", "--batch-size", "5"],
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    binned, given = run("--data", aer, "--bins", 5), run("--data", frames)
    assert binned["T"] == 5 and binned["settings"]["input"] == {"kind": "event frames", "frames": 5}
    for key in ("accuracy", "layers", "totals"):
        assert binned[key] == given[key], key
    assert binned["layers"][0]["name"] == "input" and binned["layers"][0]["sops"] > 0


def _write(tmp_path, **arrays):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return path


def test_malformed_event_lists_are_refused(tmp_path):
    rng = np.random.default_rng(1)
    ev, offsets, y = aer_set(rng, 4, (2, 8, 8), mean_events=10)
    shape = (2, 8, 8)
    with pytest.raises(DataError, match="--bins N"):  # bins are required
        open_data(_write(tmp_path, events=ev, offsets=offsets, y=y), shape, 10)
    with pytest.raises(DataError, match="'offsets'"):
        open_data(_write(tmp_path, events=ev, y=y), shape, 10, bins=3)
    far = ev.copy()
    far["x"][offsets[2]] = 8
    with pytest.raises(DataError, match=r"sample 2.*integer x in \[0, 8\).*x = 8"):
        open_data(_write(tmp_path, events=far, offsets=offsets, y=y), shape, 10, bins=3).read(0, 4)
    back = offsets.copy()
    back[2] = back[3] + 1
    with pytest.raises(DataError, match="non-decreasing offsets"):
        open_data(_write(tmp_path, events=ev, offsets=back, y=y), shape, 10, bins=3).read(0, 4)
    beyond = offsets.copy()
    beyond[-1] = len(ev) + 5
    with pytest.raises(DataError, match="within"):
        open_data(_write(tmp_path, events=ev, offsets=beyond, y=y), shape, 10, bins=3).read(0, 4)
    with pytest.raises(DataError, match="fields t, x, y, p"):
        open_data(_write(tmp_path, events=np.zeros(3, [("t", "<i8"), ("x", "<i2")]), offsets=offsets, y=y),
                  shape, 10, bins=3)
    with pytest.raises(DataError, match="one channel per polarity"):
        open_data(_write(tmp_path, events=ev, offsets=offsets, y=y), (3, 8, 8), 10, bins=3)
    with pytest.raises(DataError, match="drop --bins"):
        open_data(_write(tmp_path, x=np.zeros((2, 2, 8, 8)), y=y[:2]), shape, 10, bins=3)
    columns = np.stack([ev["t"], ev["x"], ev["y"], ev["p"]], axis=1).astype(np.float64)  # (E, 4) also reads
    x, _ = open_data(_write(tmp_path, events=columns, offsets=offsets, y=y), shape, 10, bins=3).read(0, 4)
    assert x.shape == (4, 3, 2, 8, 8) and x.sum() == len(ev)


def test_cli_says_what_an_aer_file_needs(tmp_path):
    rng = np.random.default_rng(2)
    ev, offsets, y = aer_set(rng, 3, (2, 34, 34), mean_events=20)
    path = _write(tmp_path, events=ev, offsets=offsets, y=y)
    out = subprocess.run([EVSIM, "run", str(SINABS), "--data", str(path)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode != 0 and "--bins" in out.stderr and "Traceback" not in out.stderr
