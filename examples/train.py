#!/usr/bin/env python
"""Train the three small MNIST CNNs shipped in ``data/`` and export them in the evsim model format v1.

What it does (CPU, seeded, a few minutes on 2 cores):

1. loads mlxtend's bundled 5,000-sample MNIST subset (``mlxtend.data.mnist_data()``, 500 per class) and
   splits it reproducibly: a stratified held-out **test** split (100 per class, 1,000 samples), the rest
   is the **training** part (4,000 samples), and a stratified **calibration** split (50 per class, 500
   samples) is drawn *from the training part* (calibration samples are also used for training);
   writes ``mnist_test.npz`` and ``mnist_calib.npz`` (``x`` uint8 (N, 1, 28, 28) raw pixels, ``y`` int64);
2. trains one architecture three times, differing only in the activation:
   layer-wise QCFS (one trainable λ per layer), CS-QCFS (λ_c = softplus(p_c) per channel) and plain
   ReLU.  The QCFS models are trained with the number of quantisation levels drawn afresh for every
   batch from ``TRAIN_LEVELS`` = (2, 4, 8, 16) and exported with L = 4 (see ``train_one`` for why);
   after training each QCFS model is evaluated at L = 1, 2, 4, 8, 16, 64;
3. exports each to ``mnist_qcfs.npz``, ``mnist_csqcfs.npz``, ``mnist_relu.npz`` (docs/format.md: JSON
   manifest in entry ``__evsim__``, one float32 array per entry, BatchNorm kept as separate nodes);
4. re-loads every export with NumPy alone (``allow_pickle=False``), runs :func:`numpy_forward` on the
   test split and checks logits and accuracy against PyTorch.

Usage::

    pip install torch==2.13.0 mlxtend
    python examples/train.py [--out data/] [--seed 0]
"""
from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import os
import time
from pathlib import Path

import numpy as np

SEED = 0
LEVELS = 4  # L written to the exported qcfs nodes (the ANN accuracy is measured at this L)
TRAIN_LEVELS = (2, 4, 8, 16)  # QCFS models: L drawn per training batch from these (uniformly, seeded)
EVAL_LEVELS = (1, 2, 4, 8, 16, 64)  # the L table printed after training
N_TEST_PER_CLASS = 100
N_CALIB_PER_CLASS = 50
MNIST_MEAN = 0.1307  # standard MNIST statistics of x/255, used for input normalisation
MNIST_STD = 0.3081
BN_EPS = 1e-5
EPOCHS = {"qcfs": 30, "csqcfs": 20, "relu": 20}  # measured: CS-QCFS 98.3 % at L = 4 after 30 epochs, 98.6 % after 20
BATCH = 64
LR = 2e-3
WEIGHT_DECAY = 1e-4
LAMBDA_INIT = 4.0
SHIFT = 2  # random-translation augmentation, pixels


# ============================================================================ data
def make_splits(seed: int):
    """Return (x_train, y_train, x_test, y_test, x_calib, y_calib); x uint8 (N,1,28,28), y int64."""
    from mlxtend.data import mnist_data

    X, y = mnist_data()  # float64 (5000, 784) holding integers 0..255; int labels, 500 per class
    assert X.shape == (5000, 784) and np.all(X == np.round(X)) and X.min() >= 0 and X.max() <= 255
    x = X.astype(np.uint8).reshape(-1, 1, 28, 28)
    y = y.astype(np.int64)
    rng = np.random.default_rng(seed)
    test_idx, train_idx = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        test_idx.append(idx[:N_TEST_PER_CLASS])
        train_idx.append(idx[N_TEST_PER_CLASS:])
    calib_idx = [rng.permutation(t)[:N_CALIB_PER_CLASS] for t in train_idx]
    test_idx = np.sort(np.concatenate(test_idx))
    train_idx = np.sort(np.concatenate(train_idx))
    calib_idx = np.sort(np.concatenate(calib_idx))
    assert len(np.intersect1d(test_idx, train_idx)) == 0 and np.all(np.isin(calib_idx, train_idx))
    return (x[train_idx], y[train_idx], x[test_idx], y[test_idx], x[calib_idx], y[calib_idx])


def preprocess(x_uint8: np.ndarray, mean: float = MNIST_MEAN, std: float = MNIST_STD) -> np.ndarray:
    return ((x_uint8.astype(np.float32) / np.float32(255.0)) - np.float32(mean)) / np.float32(std)


# ============================================================================ model (PyTorch)
@functools.lru_cache(maxsize=None)
def build_torch_parts():
    """Define the PyTorch classes (torch is imported lazily so the NumPy part works without it)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class FloorSTE(torch.autograd.Function):
        """floor() in the forward pass, identity gradient (straight-through estimator)."""

        @staticmethod
        def forward(ctx, x):
            return torch.floor(x)

        @staticmethod
        def backward(ctx, g):
            return g

    class QCFS(nn.Module):
        """a = λ·clip(floor(z·L/λ + 1/2)/L, 0, 1) — written as in the QCFS reference code:
        u = clamp(z/λ, 0, 1); a = λ·floor_ste(u·L + 1/2)/L, identical in the forward pass."""

        def __init__(self, channels: int, levels: int, channelwise: bool, init: float):
            super().__init__()
            self.levels = levels
            self.channelwise = channelwise
            if channelwise:  # CS-QCFS: λ_c = softplus(p_c)
                p0 = math.log(math.expm1(init))
                self.p = nn.Parameter(torch.full((channels,), p0))
            else:
                self.lam = nn.Parameter(torch.tensor(float(init)))

        def threshold(self):
            return F.softplus(self.p) if self.channelwise else self.lam

        def forward(self, z):
            lam = self.threshold()
            if self.channelwise:
                lam = lam.view(1, -1, 1, 1)
            u = torch.clamp(z / lam, 0.0, 1.0)
            return FloorSTE.apply(u * self.levels + 0.5) / self.levels * lam

    class Net(nn.Module):
        """conv-BN-act-pool, conv-BN-act, residual block (conv-BN-act-conv-BN + skip, act), pool, fc."""

        def __init__(self, act: str, levels: int = LEVELS, lam_init: float = LAMBDA_INIT, c1=16, c2=32):
            super().__init__()

            def make_act(c):
                if act == "relu":
                    return nn.ReLU()
                return QCFS(c, levels, channelwise=(act == "csqcfs"), init=lam_init)

            self.conv1, self.bn1, self.act1 = nn.Conv2d(1, c1, 3, padding=1, bias=False), nn.BatchNorm2d(c1), make_act(c1)
            self.conv2, self.bn2, self.act2 = nn.Conv2d(c1, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2), make_act(c2)
            self.res_conv1, self.res_bn1 = nn.Conv2d(c2, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2)
            self.res_act1 = make_act(c2)
            self.res_conv2, self.res_bn2 = nn.Conv2d(c2, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2)
            self.res_act2 = make_act(c2)
            self.fc = nn.Linear(c2 * 7 * 7, 10)

        def forward(self, x):
            x = F.avg_pool2d(self.act1(self.bn1(self.conv1(x))), 2)  # 28 -> 14
            x = self.act2(self.bn2(self.conv2(x)))
            h = self.res_act1(self.res_bn1(self.res_conv1(x)))
            h = self.res_bn2(self.res_conv2(h))
            x = self.res_act2(h + x)
            x = F.avg_pool2d(x, 2)  # 14 -> 7
            return self.fc(torch.flatten(x, 1))

    return Net, QCFS


# ============================================================================ export
# (name, op, inputs, torch attribute or None) in topological order; the graph of Net.forward above.
GRAPH = [
    ("conv1", "conv2d", ["input"], "conv1"),
    ("bn1", "batchnorm", ["conv1"], "bn1"),
    ("act1", "ACT", ["bn1"], "act1"),
    ("pool1", "avgpool2d", ["act1"], None),
    ("conv2", "conv2d", ["pool1"], "conv2"),
    ("bn2", "batchnorm", ["conv2"], "bn2"),
    ("act2", "ACT", ["bn2"], "act2"),
    ("res_conv1", "conv2d", ["act2"], "res_conv1"),
    ("res_bn1", "batchnorm", ["res_conv1"], "res_bn1"),
    ("res_act1", "ACT", ["res_bn1"], "res_act1"),
    ("res_conv2", "conv2d", ["res_act1"], "res_conv2"),
    ("res_bn2", "batchnorm", ["res_conv2"], "res_bn2"),
    ("res_add", "add", ["res_bn2", "act2"], None),
    ("res_act2", "ACT", ["res_add"], "res_act2"),
    ("pool2", "avgpool2d", ["res_act2"], None),
    ("flatten", "flatten", ["pool2"], None),
    ("fc", "linear", ["flatten"], "fc"),
]


def export_model(model, act: str, path: Path, metadata: dict) -> tuple[dict, dict]:
    """Write ``model`` (eval mode) as an evsim v1 ``.npz``; return (manifest, arrays)."""
    import torch

    def f32(t):
        return np.array(t.detach().cpu().numpy(), dtype=np.float32, order="C")  # keeps 0-d shape ()

    arrays: dict[str, np.ndarray] = {}
    nodes = []
    for name, op, inputs, attr in GRAPH:
        mod = getattr(model, attr) if attr else None
        node = {"name": name, "op": op, "inputs": list(inputs)}
        if op == "conv2d":
            arrays[f"{name}.weight"] = f32(mod.weight)
            node.update(weight=f"{name}.weight", stride=list(mod.stride), padding=list(mod.padding),
                        dilation=list(mod.dilation), groups=mod.groups)
            if mod.bias is not None:
                arrays[f"{name}.bias"] = f32(mod.bias)
                node["bias"] = f"{name}.bias"
        elif op == "batchnorm":
            for role, t in (("mean", mod.running_mean), ("var", mod.running_var),
                            ("gamma", mod.weight), ("beta", mod.bias)):
                arrays[f"{name}.{role}"] = f32(t)
                node[role] = f"{name}.{role}"
            node["eps"] = float(mod.eps)
        elif op == "ACT":
            if act == "relu":
                node["op"] = "relu"
            else:
                node["op"] = "qcfs"
                with torch.no_grad():
                    lam = f32(mod.threshold())  # λ itself (softplus already applied for CS-QCFS)
                assert lam.shape == ((mod.p.shape[0],) if act == "csqcfs" else ()) and np.all(lam > 0)
                arrays[f"{name}.threshold"] = lam
                node.update(threshold=f"{name}.threshold", levels=mod.levels)
        elif op == "avgpool2d":
            node.update(kernel=[2, 2], stride=[2, 2], padding=[0, 0])
        elif op == "linear":
            arrays[f"{name}.weight"] = f32(mod.weight)
            arrays[f"{name}.bias"] = f32(mod.bias)
            node.update(weight=f"{name}.weight", bias=f"{name}.bias")
        nodes.append(node)
    manifest = {
        "format": "evsim-model",
        "version": 1,
        "kind": "ann",
        "input": {"shape": [1, 28, 28], "scale": 1.0 / 255.0, "mean": [MNIST_MEAN], "std": [MNIST_STD]},
        "nodes": nodes,
        "output": "fc",
        "metadata": metadata,
    }
    text = json.dumps(manifest, indent=1)
    np.savez_compressed(path, __evsim__=np.array(text), **arrays)
    return manifest, arrays


# ============================================================================ NumPy reference
def load_npz(path) -> tuple[dict, dict]:
    """Load an evsim ``.npz`` with NumPy alone; return (manifest, arrays)."""
    with np.load(path, allow_pickle=False) as z:
        entries = {k: z[k] for k in z.files}
    text = entries.pop("__evsim__")
    assert text.shape == () and text.dtype.kind == "U", "__evsim__ must be a 0-d unicode array"
    return json.loads(text.item()), entries


def _conv2d(x, w, b, stride, padding, dilation, groups):
    """x (N, C, H, W), w (O, C/groups, kH, kW) -> (N, O, H', W'), via strided im2col views + einsum."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    s = xp.strides
    cols = np.lib.stride_tricks.as_strided(
        xp, shape=(n, c, kh, kw, ho, wo),
        strides=(s[0], s[1], s[2] * dh, s[3] * dw, s[2] * sh, s[3] * sw), writeable=False)
    og = o // groups
    out = np.concatenate([
        np.einsum("ncklhw,ockl->nohw", cols[:, g * cg:(g + 1) * cg], w[g * og:(g + 1) * og], optimize=True)
        for g in range(groups)], axis=1)
    if b is not None:
        out = out + b.reshape(1, -1, 1, 1)
    return out


def _channel(v, ndim):
    """Broadcast a per-channel vector (C,) against (N, C, ...) of ``ndim`` dims (scalars pass through)."""
    v = np.asarray(v)
    return v if v.ndim == 0 else v.reshape((1, -1) + (1,) * (ndim - 2))


def numpy_forward(manifest: dict, arrays: dict, x: np.ndarray) -> np.ndarray:
    """Forward pass of a kind-"ann" evsim model in plain NumPy (float64). ``x``: raw batch (N, *input.shape),
    e.g. uint8 pixels; the manifest's preprocessing (scale, mean, std) is applied here. Returns logits."""
    assert manifest["format"] == "evsim-model" and manifest["version"] == 1 and manifest["kind"] == "ann"
    spec = manifest["input"]
    v = np.asarray(x, dtype=np.float64)
    assert v.shape[1:] == tuple(spec["shape"]), (v.shape, spec["shape"])
    v = v * spec.get("scale", 1.0)
    if spec.get("mean") is not None:
        v = v - _channel(np.asarray(spec["mean"], np.float64), v.ndim)
    if spec.get("std") is not None:
        v = v / _channel(np.asarray(spec["std"], np.float64), v.ndim)
    A = {k: np.asarray(a, dtype=np.float64) for k, a in arrays.items()}
    used = set()

    def arr(node, role):
        used.add(node[role])
        return A[node[role]]

    vals = {"input": v}
    for node in manifest["nodes"]:
        op, ins = node["op"], [vals[i] for i in node["inputs"]]
        z = ins[0]
        if op == "conv2d":
            out = _conv2d(z, arr(node, "weight"), arr(node, "bias") if "bias" in node else None,
                          node.get("stride", [1, 1]), node.get("padding", [0, 0]),
                          node.get("dilation", [1, 1]), node.get("groups", 1))
        elif op == "linear":
            out = z @ arr(node, "weight").T
            if "bias" in node:
                out = out + arr(node, "bias")
        elif op == "batchnorm":  # eval mode: running statistics
            mean, var, gamma, beta = (_channel(arr(node, r), z.ndim) for r in ("mean", "var", "gamma", "beta"))
            out = (z - mean) / np.sqrt(var + node.get("eps", 1e-5)) * gamma + beta
        elif op == "relu":
            out = np.maximum(z, 0.0)
        elif op == "qcfs":
            lam, L = _channel(arr(node, "threshold"), z.ndim), node["levels"]
            out = lam * np.clip(np.floor(z * L / lam + 0.5) / L, 0.0, 1.0)
        elif op in ("avgpool2d", "maxpool2d"):
            (kh, kw), (ph, pw) = node["kernel"], node.get("padding", [0, 0])
            sh, sw = node.get("stride", node["kernel"])
            fill = 0.0 if op == "avgpool2d" else -np.inf  # avgpool: zero padding counted (PyTorch default)
            zp = np.pad(z, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
            n, c, h, w = zp.shape
            ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
            s = zp.strides
            win = np.lib.stride_tricks.as_strided(zp, (n, c, ho, wo, kh, kw),
                                                  (s[0], s[1], s[2] * sh, s[3] * sw, s[2], s[3]), writeable=False)
            out = win.mean(axis=(4, 5)) if op == "avgpool2d" else win.max(axis=(4, 5))
        elif op == "global_avgpool":
            out = z.mean(axis=(2, 3))
        elif op == "add":
            out = sum(ins[1:], ins[0])
        elif op == "flatten":
            out = z.reshape(z.shape[0], -1)
        else:
            raise ValueError(f"node '{node['name']}': unsupported op {op!r}")
        vals[node["name"]] = out
    unused = set(arrays) - used
    assert not unused, f"arrays not referenced by the manifest: {sorted(unused)}"
    return vals[manifest["output"]]


# ============================================================================ training
def train_one(act: str, data, seed: int, epochs: int):
    """Train one model; for the QCFS models the quantisation level L is drawn per batch from TRAIN_LEVELS.

    Why several L: MNIST is ~81 % constant black background, so the first convolution gives one constant
    pre-activation per channel on most pixels.  Trained at a fixed L = 4, the network parks several
    channels' background value just below the first rounding edge λ/(2L) = λ/8 (u = z/λ ≈ 0.11): zero at
    L = 4, but λ/8 at L = 8 and a steady firing rate ≈ u in an IF neuron at large T — a systematic
    offset on most of the image that the rest of the network never saw (ANN 98.8 % at L = 4, 79 % at
    L = 8, 86 % at L = 64).  With L changing from batch to batch the network sees the background (and
    every other pre-activation) quantised differently from batch to batch and cannot lean on one L: the
    ANN then works at every L, as an SNN needs for every T.  The ReLU model is trained exactly as
    before (no draw of L, same random stream).
    """
    import torch
    import torch.nn.functional as F

    Net, _ = build_torch_parts()
    x_train, y_train = data
    torch.manual_seed(seed)
    model = Net(act)
    opt = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    steps_per_epoch = math.ceil(len(x_train) / BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=epochs * steps_per_epoch,
                                                pct_start=0.15)
    g = torch.Generator().manual_seed(seed)
    xt = torch.from_numpy(preprocess(x_train))
    yt = torch.from_numpy(y_train)
    bg = float((0.0 - MNIST_MEAN) / MNIST_STD)  # background (black) value after normalisation
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=g)
        for i in range(steps_per_epoch):
            idx = perm[i * BATCH:(i + 1) * BATCH]
            xb, yb = xt[idx], yt[idx]
            if SHIFT:  # random translation by up to SHIFT pixels (one shift per batch sample)
                pad = F.pad(xb, (SHIFT,) * 4, value=bg)
                dx = torch.randint(0, 2 * SHIFT + 1, (len(xb),), generator=g)
                dy = torch.randint(0, 2 * SHIFT + 1, (len(xb),), generator=g)
                xb = torch.stack([pad[j, :, dy[j]:dy[j] + 28, dx[j]:dx[j] + 28] for j in range(len(xb))])
            if act != "relu":  # draw this batch's L (after the shifts, from the same seeded stream)
                levels = TRAIN_LEVELS[int(torch.randint(0, len(TRAIN_LEVELS), (1,), generator=g))]
                set_levels(model, levels)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    set_levels(model, LEVELS)
    model.eval()
    return model


def set_levels(model, levels: int) -> None:
    """Set the quantisation level L of every QCFS activation of ``model``."""
    _, QCFS = build_torch_parts()
    for mod in model.modules():
        if isinstance(mod, QCFS):
            mod.levels = levels


def torch_logits(model, x_uint8, dtype=None):
    import torch

    x = torch.from_numpy(preprocess(x_uint8))
    if dtype is not None:
        x = torch.from_numpy(((x_uint8.astype(np.float64) / 255.0) - MNIST_MEAN) / MNIST_STD)
    with torch.no_grad():
        return model(x).double().numpy()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="data/", help="output directory (default: data/)")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--models", default="qcfs,csqcfs,relu",
                    help="comma-separated subset of qcfs,csqcfs,relu to train (each model is trained from the seed "
                         "alone, so separate processes give the same files as one)")
    ap.add_argument("--epochs", type=int, default=None,
                    help="epochs for every model (default: 30 for QCFS, 20 for CS-QCFS and ReLU)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)  # the arrays depend on the thread count; 1 is also the fastest on a busy machine
    torch.use_deterministic_algorithms(True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    x_train, y_train, x_test, y_test, x_calib, y_calib = make_splits(args.seed)
    np.savez_compressed(out / "mnist_test.npz", x=x_test, y=y_test)
    np.savez_compressed(out / "mnist_calib.npz", x=x_calib, y=y_calib)
    print(f"splits: train {len(x_train)}, test {len(x_test)} (100/class), calib {len(x_calib)} "
          f"(50/class, subset of train), seed {args.seed}")

    recipes = {
        "qcfs": f"layer-wise QCFS, L drawn per batch from {TRAIN_LEVELS}, exported with L={LEVELS}, one "
                f"trainable lambda per layer (init {LAMBDA_INIT}, weight decay on it too), floor with "
                "straight-through estimator",
        "csqcfs": f"CS-QCFS, L drawn per batch from {TRAIN_LEVELS}, exported with L={LEVELS}, per-channel "
                  f"lambda_c = softplus(p_c) (init lambda {LAMBDA_INIT}, weight decay on p_c too); exported "
                  "threshold is lambda (softplus applied)",
        "relu": "plain ReLU",
    }
    common = (f"Adam lr {LR} one-cycle, weight decay {WEIGHT_DECAY}, batch {BATCH}, {{epochs}} epochs on "
              f"{len(x_train)} samples, random shifts up to {SHIFT} px, input (x/255 - {MNIST_MEAN})/{MNIST_STD}")
    _, QCFS = build_torch_parts()
    rows = []
    chosen = args.models.split(",")
    unknown = set(chosen) - {"qcfs", "csqcfs", "relu"}
    if unknown:
        ap.error(f"--models: unknown model(s) {sorted(unknown)}; choose among qcfs, csqcfs, relu")
    for act, fname in (("qcfs", "mnist_qcfs.npz"), ("csqcfs", "mnist_csqcfs.npz"), ("relu", "mnist_relu.npz")):
        if act not in chosen:
            continue
        t0 = time.perf_counter()
        epochs = EPOCHS[act] if args.epochs is None else args.epochs
        model = train_one(act, (x_train, y_train), args.seed, epochs)
        t_train = time.perf_counter() - t0
        logits_t = torch_logits(model, x_test)
        acc_t = float(np.mean(logits_t.argmax(1) == y_test))
        metadata = {
            "source": {"framework": f"PyTorch {torch.__version__}",
                       "recipe": f"{recipes[act]}; {common.format(epochs=epochs)}",
                       "script": "examples/train.py", "seed": args.seed, "epochs": epochs},
            "dataset": "MNIST (mlxtend 5k subset), test split data/mnist_test.npz",
            "test_accuracy": acc_t,
        }
        if act != "relu":
            metadata["levels"] = LEVELS
            metadata["train_levels"] = list(TRAIN_LEVELS)
            # the L table: the exported network evaluated with every qcfs node at L (NumPy, float64)
            manifest, arrays = export_model(model, act, out / fname, metadata)
            by_levels = {}
            for levels in EVAL_LEVELS:
                m = copy.deepcopy(manifest)
                for node in m["nodes"]:
                    if node["op"] == "qcfs":
                        node["levels"] = levels
                by_levels[str(levels)] = float(np.mean(numpy_forward(m, arrays, x_test).argmax(1) == y_test))
            metadata["accuracy_by_levels"] = by_levels
            print(f"{fname}: ANN accuracy by L (float64): "
                  + ", ".join(f"L={k} {100 * v:.1f} %" for k, v in by_levels.items()))
        export_model(model, act, out / fname, metadata)

        # ---- verify: numpy only, from the file
        manifest, arrays = load_npz(out / fname)
        assert all(a.dtype == np.float32 for a in arrays.values())
        logits_n = numpy_forward(manifest, arrays, x_test)
        acc_n = float(np.mean(logits_n.argmax(1) == y_test))
        # QCFS is discontinuous (floor): float32 vs float64 rounding can move a pre-activation that sits
        # at a level boundary to the next level, so the exact check is against PyTorch in float64.
        model64 = copy.deepcopy(model).double()
        for name, mod in model64.named_modules():  # use exactly the exported λ (float32 -> float64)
            if isinstance(mod, QCFS):
                lam64 = torch.from_numpy(arrays[f"{name}.threshold"].astype(np.float64))
                mod.threshold = lambda lam64=lam64: lam64
        logits_t64 = torch_logits(model64, x_test, torch.float64)
        diff64 = float(np.max(np.abs(logits_n - logits_t64)))
        diff32 = float(np.max(np.abs(logits_n - logits_t)))
        n_flip = int(np.sum(logits_n.argmax(1) != logits_t.argmax(1)))
        print(f"{fname}: torch acc {acc_t:.4f}, numpy acc {acc_n:.4f}; max |logit diff| numpy vs torch-float64 "
              f"{diff64:.1e}, vs torch-float32 {diff32:.1e}; {n_flip} prediction(s) differ")
        assert diff64 < 1e-6, "NumPy re-implementation disagrees with PyTorch (float64)"
        assert acc_n == acc_t, "NumPy accuracy differs from PyTorch accuracy"
        if act != "relu":
            lams = {n["name"]: arrays[n["threshold"]] for n in manifest["nodes"] if n["op"] == "qcfs"}
            for k, lam in lams.items():
                print(f"   {k:9s} lambda " + (f"{float(lam):.4f}" if lam.ndim == 0 else
                      f"per-channel ({lam.size}): min {lam.min():.3f} mean {lam.mean():.3f} max {lam.max():.3f}"))
        n_trainable = sum(p.numel() for p in model.parameters())
        n_stored = sum(a.size for a in arrays.values())  # every stored array, BatchNorm running statistics too
        rows.append((fname, act, n_stored, n_trainable, acc_t, acc_n, t_train, os.path.getsize(out / fname)))

    print()
    print(f"{'file':18s} {'model':7s} {'stored':>7s} {'trained':>7s} {'ANN acc':>8s} {'numpy acc':>9s} "
          f"{'train s':>8s} {'bytes':>8s}")
    for fname, act, n_stored, n_trainable, acc_t, acc_n, t, size in rows:
        print(f"{fname:18s} {act:7s} {n_stored:7d} {n_trainable:7d} {acc_t:8.4f} {acc_n:9.4f} {t:8.1f} {size:8d}")
    total = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"total size of {out}/: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
