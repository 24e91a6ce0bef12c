"""PyTorch exporter: an ``nn.Module`` as an evsim model file, through ``torch.fx`` (extra ``evsim[torch]``).

``export(module, example_input, path)`` traces the module symbolically, propagates the example's
shapes and writes the graph in the evsim format v1.  torch is imported only inside these functions;
the evsim core never imports this module.

Supported: ``nn.Conv2d`` (zero padding, ints or 'same'/'valid'), ``nn.Linear``, ``nn.BatchNorm1d/2d``
(running statistics), ``nn.ReLU`` / ``F.relu`` / ``.relu()``, ``nn.ReLU6`` / ``nn.Hardtanh(0, λ)`` /
``clamp(0, λ)`` (a ReLU with a maximum: ``metadata["relu_max"]``), ``nn.AvgPool2d``, ``nn.AdaptiveAvgPool2d``
(output 1, or dividing the input), ``nn.MaxPool2d``, ``nn.Flatten`` / ``torch.flatten`` /
``x.view(x.size(0), -1)`` / ``reshape``, ``nn.Dropout``, ``nn.Identity``, residual ``+`` /
``torch.add``, and elementwise arithmetic with constants (``x / 255``, ``(x - mean) / std``, which
becomes the input preprocessing when it comes first).  Functions of constants only (e.g.
``F.softplus(self.p)``) are evaluated.

QCFS-style activation modules are recognised by duck typing, the way the seeds' public code
defines them: a threshold attribute named ``thresh``, ``up`` or ``threshold`` (scalar or per
channel) and a level count ``L``, ``t`` or ``levels``.  The module is run on probe inputs and must
compute ``λ·clip(floor(z·L/λ + ½)/L, 0, 1)`` with λ the threshold or ``softplus`` of it.  Any other
module class can be mapped with ``activations={ModuleClass: spec}``, where ``spec`` is ``"relu"``,
``"qcfs:ATTRIBUTE,LEVELS"`` or a callable ``spec(module) -> "relu" | ("qcfs", threshold, levels)``.
"""
from __future__ import annotations

import math
import operator
from pathlib import Path

import numpy as np

from evsim.errors import ConversionError, MissingDependencyError, describe

from ._builder import (GraphBuilder, Pending, Values, View, add_conv, add_linear, add_pool, as_float_array,
                       channel_constant, parse_activation, same_pads)

__all__ = ["export", "THRESHOLD_NAMES", "LEVEL_NAMES"]

#: attribute names of a QCFS threshold and of its level count, as in the seeds' public code
THRESHOLD_NAMES = ("thresh", "up", "threshold")
LEVEL_NAMES = ("L", "t", "levels")


def _torch():
    try:
        import torch
    except ImportError:
        raise MissingDependencyError(describe("evsim.converters.torch", "PyTorch", "it is not installed",
                                              'pip install "evsim[torch]"')) from None
    return torch


def _qcfs_attrs(module):
    """``(threshold tensor, levels)`` if the module looks like a QCFS activation, else None.

    Reads the module's own parameters, buffers and attributes directly (``getattr`` on a module
    being traced by torch.fx returns a proxy).
    """
    torch = _torch()
    stored = {**module.__dict__, **module._buffers, **module._parameters}
    theta = next((stored[n] for n in THRESHOLD_NAMES if isinstance(stored.get(n), (torch.Tensor, float))), None)
    levels = next((stored[n] for n in LEVEL_NAMES if isinstance(stored.get(n), int) and not isinstance(stored[n], bool)),
                  None)
    if theta is None or levels is None or levels < 1:
        return None
    return torch.as_tensor(theta).detach().to("cpu", torch.float64), levels


def export(module, example_input, path=None, activations=None):
    """Trace a PyTorch module and write it as an evsim model.

    Parameters
    ----------
    module : torch.nn.Module
        The trained network (evaluated in ``eval()`` mode; its mode is restored afterwards).
    example_input : torch.Tensor or ndarray
        A batch ``(N, C, H, W)`` or ``(N, F)`` of raw inputs, for the shapes.
    path : str or Path, optional
        Where to write the model (``.npz`` or ``.h5``); nothing is written when None.
    activations : dict, optional
        ``{ModuleClass: spec}`` for activation modules evsim does not know: ``"relu"``,
        ``"qcfs:ATTRIBUTE,LEVELS"`` or a callable ``spec(module) -> "relu" | ("qcfs", threshold, levels)``.

    Returns
    -------
    evsim.Graph
        The validated graph that was written.

    Raises
    ------
    ConversionError
        A module or function evsim cannot express, naming its path in the module tree.
    MissingDependencyError
        PyTorch is not installed.
    """
    torch = _torch()
    from torch import fx
    from torch.fx.passes.shape_prop import ShapeProp

    activations = dict(activations or {})
    for cls in activations:
        if not isinstance(cls, type):
            raise ConversionError(describe("activations", "a dict {ModuleClass: spec}", f"key {cls!r}"))
    leaf_types = tuple(activations)

    class Tracer(fx.Tracer):
        def is_leaf_module(self, m, qualname):
            if isinstance(m, leaf_types) or _qcfs_attrs(m) is not None:
                return True
            return super().is_leaf_module(m, qualname)

    example = torch.as_tensor(np.asarray(example_input)) if not isinstance(example_input, torch.Tensor) \
        else example_input
    example = example.detach().to("cpu", torch.float32)
    training = module.training
    module.eval()
    try:
        tracer = Tracer()
        try:
            graph = tracer.trace(module)
        except Exception as exc:  # noqa: BLE001 - torch.fx raises many types for untraceable code
            raise ConversionError(describe(f"{type(module).__name__}", "a module torch.fx can trace",
                                           f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                                           "remove data-dependent control flow from forward()")) from None
        gm = fx.GraphModule(tracer.root, graph)
        with torch.no_grad():
            ShapeProp(gm).propagate(example)
            result = _FxGraph(gm, activations, type(module).__name__).run()
    finally:
        module.train(training)
    if path is not None:
        import evsim

        evsim.save(result, Path(path))
    return result


class _Opaque:
    """A non-tensor value computed from the data (``x.size(0)``, ``x.shape``): only used by reshapes."""


class _FxGraph:
    def __init__(self, gm, activations, label):
        self.gm, self.activations, self.label = gm, activations, label
        self.modules = dict(gm.named_modules())
        self.uses = {n: len(n.users) for n in gm.graph.nodes}
        self.env = Values(label, self.uses)

    def where(self, node) -> str:
        if node.op == "call_module":
            return f"{self.label}, module '{node.target}' ({type(self.modules[node.target]).__name__})"
        target = getattr(node.target, "__name__", str(node.target))
        return f"{self.label}, node '{node.name}' ({target})"

    def refuse(self, node, expected, found, fix=None):
        raise ConversionError(describe(self.where(node), expected, found, fix))

    # ---------------------------------------------------------------- values
    def value(self, arg):
        torch = _torch()
        if isinstance(arg, torch.fx.Node):
            return self.env[arg]
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.value(a) for a in arg)
        if isinstance(arg, dict):
            return {k: self.value(v) for k, v in arg.items()}
        return arg

    def concrete(self, key, wanted=None) -> View:
        return self.env.concrete(key, wanted)

    def extend(self, node, src, *steps):
        self.env.extend(node, src, node.name, *steps)

    def const(self, node, value, view) -> np.ndarray:
        torch = _torch()
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().double().numpy()
        return channel_constant(self.builder, view, value, self.where(node))

    def set(self, node, name):
        self.env[node] = Pending(self.out_view(name))

    def out_view(self, name):
        return View.of(name, self.builder.shape(name))

    @staticmethod
    def sample_shape(node):
        meta = node.meta.get("tensor_meta")
        return tuple(int(d) for d in meta.shape[1:]) if meta is not None and hasattr(meta, "shape") else None

    # ---------------------------------------------------------------- walk
    def run(self):
        torch = _torch()
        output = None
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                shape = self.sample_shape(node)
                if shape is None or len(shape) not in (1, 3):
                    self.refuse(node, "an input of shape (N, C, H, W) or (N, F)", str(shape))
                if hasattr(self, "builder"):
                    self.refuse(node, "one input", "several")
                self.builder = self.env.builder = GraphBuilder(self.label, shape)
                self.env[node] = Pending(View.of("input", shape))
            elif node.op == "get_attr":
                obj = self.gm
                for part in node.target.split("."):
                    obj = getattr(obj, part)
                self.env[node] = obj.detach() if isinstance(obj, torch.Tensor) else obj
            elif node.op == "output":
                output = node.args[0]
            else:
                self.visit(node)
        if not isinstance(output, torch.fx.Node) or not isinstance(self.env.get(output), Pending):
            raise ConversionError(describe(f"{self.label}, output", "one tensor computed from the input",
                                           type(output).__name__))
        view = self.concrete(output)
        if view.node == "input" or not view.flat_order_kept:
            raise ConversionError(describe(f"{self.label}, output", "logits computed by layers",
                                           f"a tensor of shape {view.shape}"))
        return self.builder.finish(view.node, {"source": f"PyTorch {self.label} (evsim.converters.torch.export)",
                                               "imported_from": {"importer": "torch.fx", "module": self.label,
                                                                 "torch": torch.__version__}})

    def visit(self, node):
        args = self.value(node.args)
        kwargs = self.value(node.kwargs)
        dynamic = [a for a in list(node.args) + list(node.kwargs.values())
                   if isinstance(a, _torch().fx.Node) and isinstance(self.env.get(a), (Pending, _Opaque))]
        if not dynamic and node.op != "call_module":
            self.env[node] = self.evaluate(node, args, kwargs)
            return
        if node.op == "call_module":
            return self.module(node, self.modules[node.target])
        key = node.target if node.op == "call_function" else f".{node.target}"
        handler = FUNCTIONS.get(key)
        if handler is None:
            name = getattr(node.target, "__name__", str(node.target))
            self.refuse(node, "a function evsim supports (" + ", ".join(sorted(_NAMES)) + ")", f"'{name}' on the data",
                        "use a supported module, or map an activation module with activations=")
        handler(self, node, args, kwargs)

    def evaluate(self, node, args, kwargs):
        """A node whose inputs are all constants: run it."""
        try:
            if node.op == "call_function":
                return node.target(*args, **kwargs)
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        except Exception as exc:  # noqa: BLE001
            self.refuse(node, "a constant expression torch can evaluate", f"{type(exc).__name__}: {exc}")

    # ---------------------------------------------------------------- modules
    def module(self, node, m):
        if isinstance(m, tuple(self.activations)):
            return self.custom(node, m)
        if _qcfs_attrs(m) is not None:
            return self.qcfs(node, m)
        src = node.args[0]
        if not isinstance(self.env.get(src), Pending):
            self.refuse(node, "a module applied to the data", "a module applied to a constant")
        handler = MODULES.get(type(m))
        if handler is None:
            for base, fn in MODULES.items():
                if isinstance(m, base):
                    handler = fn
                    break
        if handler is None:
            self.refuse(node, "a module among " + ", ".join(sorted(c.__name__ for c in MODULES)) + " or a QCFS "
                        f"activation (attributes {'/'.join(THRESHOLD_NAMES)} and {'/'.join(LEVEL_NAMES)})",
                        f"{type(m).__module__}.{type(m).__name__}",
                        f"map it with activations={{{type(m).__name__}: 'relu' or 'qcfs:ATTRIBUTE,LEVELS'}}")
        handler(self, node, m, src)

    def qcfs(self, node, m):
        theta, levels = _qcfs_attrs(m)
        view = self.concrete(node.args[0])
        lam = self.probe_qcfs(node, m, theta, levels, view)
        out = self.builder.add(node.target, "qcfs", [view.node], {"levels": levels}, {"threshold": lam},
                               kind=type(m).__name__)
        self.env[node] = Pending(View(out, view.base, view.perm, view.shape))

    def probe_qcfs(self, node, m, theta, levels, view):
        """λ (evsim layout) such that the module computes QCFS(λ, levels): run it on probe inputs."""
        import copy

        torch = _torch()
        shape = view.shape
        channels = shape[0]
        probe_m = copy.deepcopy(m).double().eval()
        k = np.arange(-2, levels + 3)[:, None]
        u = np.array([0.1, 0.25, 0.75, 0.9])[None, :]
        grid = ((k + u).reshape(-1) / levels)
        tried = []
        for label, lam in (("θ", theta), ("softplus(θ)", torch.nn.functional.softplus(theta)), ("|θ|", theta.abs())):
            lam = lam.reshape(-1).numpy()
            if lam.size not in (1, channels) or np.any(lam <= 0):
                continue
            lam_c = np.broadcast_to(lam, (channels,))
            z = grid[:, None] * lam_c[None, :]
            z = z.reshape((len(grid), channels) + (1,) * (len(shape) - 1)) * np.ones((1,) + shape)
            with torch.no_grad():
                try:
                    out = probe_m(torch.from_numpy(z)).numpy()
                except Exception as exc:  # noqa: BLE001 - the module does something else entirely
                    self.refuse(node, "a QCFS module that runs on a batch of its input's shape",
                                f"{type(exc).__name__}: {exc}")
            lam_b = lam_c.reshape((1, channels) + (1,) * (len(shape) - 1))
            want = lam_b * np.clip(np.floor(z * levels / lam_b + 0.5) / levels, 0, 1)
            if out.shape == want.shape and np.allclose(out, want, rtol=0, atol=1e-9 * float(lam.max())):
                value = lam_c[0] if lam.size == 1 else lam_c
                return np.asarray(value, dtype=np.float32)
            tried.append(label)
        self.refuse(node, f"the QCFS activation λ·clip(floor(z·L/λ + 1/2)/L, 0, 1) with L = {levels} and "
                    "λ = " + " or ".join(tried or ["a positive threshold"]),
                    "a module that computes something else",
                    f"map it with activations={{{type(m).__name__}: ...}}")

    def custom(self, node, m):
        spec = next(v for c, v in self.activations.items() if isinstance(m, c))
        view = self.concrete(node.args[0])
        if callable(spec) and not isinstance(spec, str):
            spec = spec(m)
        if isinstance(spec, tuple) and len(spec) == 3 and spec[0] == "qcfs":
            threshold, levels = spec[1], spec[2]
        else:
            parsed = parse_activation(spec, f"activations[{type(m).__name__}]")
            if parsed.op == "relu":
                out = self.builder.add(node.target, "relu", [view.node], kind=type(m).__name__)
                self.env[node] = Pending(View(out, view.base, view.perm, view.shape))
                return
            threshold = getattr(m, parsed.weight, None)
            levels = parsed.levels
            if threshold is None:
                self.refuse(node, f"an attribute '{parsed.weight}' (the threshold)", "none")
        arr = _torch().as_tensor(threshold).detach().cpu().double().numpy().reshape(-1)
        value = arr[0] if arr.size == 1 else arr.reshape((-1,) + (1,) * (len(view.shape) - 1))
        theta = self.const(node, value, view)
        out = self.builder.add(node.target, "qcfs", [view.node], {"levels": int(levels)},
                               {"threshold": as_float_array(theta, self.where(node))}, kind=type(m).__name__)
        self.env[node] = Pending(View(out, view.base, view.perm, view.shape))


# --------------------------------------------------------------------------- module handlers
def _image(g: _FxGraph, node, src) -> View:
    view = g.concrete(src)
    if not (view.plain and len(view.shape) == 3):
        g.refuse(node, "an (N, C, H, W) input", f"shape {view.shape}")
    return view


def _conv2d(g: _FxGraph, node, m, src):
    view = _image(g, node, src)
    if m.padding_mode != "zeros":
        g.refuse(node, "padding_mode='zeros'", repr(m.padding_mode))
    kernel, stride, dilation = list(m.kernel_size), list(m.stride), list(m.dilation)
    if isinstance(m.padding, str):  # 'same' (stride 1): PyTorch puts an odd pixel at the end, as TF does
        pads = same_pads(view.shape[1:], kernel, stride, dilation) if m.padding == "same" else (0, 0, 0, 0)
    else:
        pads = (m.padding[0], m.padding[0], m.padding[1], m.padding[1])
    weight = as_float_array(m.weight.detach().cpu().numpy(), g.where(node))
    bias = None if m.bias is None else as_float_array(m.bias.detach().cpu().numpy(), g.where(node))
    g.set(node, add_conv(g.builder, view.node, weight, bias, stride, pads, dilation, m.groups, node.target, "Conv2d"))


def _linear(g: _FxGraph, node, m, src):
    view = g.concrete(src)
    weight = as_float_array(m.weight.detach().cpu().numpy(), g.where(node))
    bias = None if m.bias is None else as_float_array(m.bias.detach().cpu().numpy(), g.where(node))
    g.set(node, add_linear(g.builder, view, weight.T, bias, node.target, "Linear"))


def _batchnorm(g: _FxGraph, node, m, src):
    view = g.concrete(src)
    if m.running_mean is None:
        g.refuse(node, "BatchNorm with running statistics", "track_running_stats=False")
    if not view.plain:
        g.refuse(node, "an (N, C, ...) input", f"shape {view.shape}")
    c = m.num_features
    arrays = {"mean": m.running_mean, "var": m.running_var,
              "gamma": m.weight if m.affine else None, "beta": m.bias if m.affine else None}
    arrays = {k: (np.ones(c, np.float32) if k == "gamma" else np.zeros(c, np.float32)) if v is None
              else as_float_array(v.detach().cpu().numpy(), g.where(node)) for k, v in arrays.items()}
    g.set(node, g.builder.add(node.target, "batchnorm", [view.node], {"eps": float(m.eps)}, arrays,
                              kind=type(m).__name__))


def _pool(op):
    def handle(g: _FxGraph, node, m, src):
        view = _image(g, node, src)
        kernel = list(m.kernel_size) if isinstance(m.kernel_size, tuple) else [m.kernel_size] * 2
        stride = m.stride if m.stride is not None else kernel
        stride = list(stride) if isinstance(stride, tuple) else [stride] * 2
        pad = list(m.padding) if isinstance(m.padding, tuple) else [m.padding] * 2
        if op == "maxpool2d" and (m.return_indices or (m.dilation not in (1, (1, 1)))):
            g.refuse(node, "MaxPool2d without dilation or indices", f"dilation {m.dilation}, return_indices "
                     f"{m.return_indices}")
        if op == "avgpool2d" and (getattr(m, "divisor_override", None) or (any(pad) and not m.count_include_pad)):
            g.refuse(node, "AvgPool2d with count_include_pad=True (when padding) and no divisor_override",
                     f"count_include_pad={m.count_include_pad}, divisor_override={m.divisor_override}")
        if m.ceil_mode:
            sizes = [(view.shape[i + 1] + 2 * pad[i] - kernel[i]) / stride[i] for i in (0, 1)]
            if any(math.ceil(s) != math.floor(s) for s in sizes):
                g.refuse(node, "ceil_mode=False (or a ceil_mode that changes nothing)", "ceil_mode=True",
                         "use ceil_mode=False")
        g.set(node, add_pool(g.builder, view.node, op, kernel, stride, (pad[0], pad[0], pad[1], pad[1]),
                             node.target, type(m).__name__))

    return handle


def _adaptive(g: _FxGraph, node, m, src):
    view = _image(g, node, src)
    size = m.output_size if isinstance(m.output_size, tuple) else (m.output_size, m.output_size)
    c, h, w = view.shape
    size = tuple(h if s is None else s for s in size)
    if size == (1, 1):
        out = g.builder.add(node.target, "global_avgpool", [view.node], kind="AdaptiveAvgPool2d")
        g.env[node] = Pending(View(out, (c,), (0,), (c, 1, 1)))
        return
    if h % size[0] or w % size[1]:
        g.refuse(node, "an output size that divides the input", f"{size} for {h}x{w}")
    kernel = [h // size[0], w // size[1]]
    g.set(node, add_pool(g.builder, view.node, "avgpool2d", kernel, kernel, (0, 0, 0, 0), node.target,
                         "AdaptiveAvgPool2d"))


def _reshape_to(g: _FxGraph, node, src):
    shape = g.sample_shape(node)
    view = g.env[src].view
    if shape is None or math.prod(shape) != math.prod(view.shape):
        g.refuse(node, "a reshape that keeps the batch axis", f"output shape {shape}")
    g.env.alias(node, src, view.reshape(shape))


def _alias(g: _FxGraph, node, *rest):
    g.env.alias(node, node.args[0])


def _relu_module(g: _FxGraph, node, m, src):
    g.extend(node, src, ("clip", 0.0, np.inf))


def _relu6_module(g: _FxGraph, node, m, src):
    g.extend(node, src, ("clip", 0.0, 6.0))  # a ReLU with a maximum (docs/import.md)


def _hardtanh_module(g: _FxGraph, node, m, src):
    g.extend(node, src, ("clip", float(m.min_val), float(m.max_val)))  # clip(0, λ) -> relu with λ


def _module_types():
    nn = _torch().nn
    return {
        nn.Conv2d: _conv2d, nn.Linear: _linear, nn.BatchNorm2d: _batchnorm, nn.BatchNorm1d: _batchnorm,
        nn.ReLU: _relu_module, nn.ReLU6: _relu6_module, nn.Hardtanh: _hardtanh_module, nn.AvgPool2d: _pool("avgpool2d"), nn.MaxPool2d: _pool("maxpool2d"),
        nn.AdaptiveAvgPool2d: _adaptive, nn.Flatten: lambda g, n, m, s: _flatten_module(g, n, m, s),
        nn.Dropout: _alias, nn.Dropout2d: _alias, nn.Identity: _alias,
    }


def _flatten_module(g, node, m, src):
    if m.start_dim not in (1,) or m.end_dim != -1:
        g.refuse(node, "Flatten(start_dim=1, end_dim=-1)", f"start_dim={m.start_dim}, end_dim={m.end_dim}")
    _reshape_to(g, node, src)


class _LazyModules(dict):
    """MODULES, filled on first use so that importing this file does not import torch."""

    def _fill(self):
        if not dict.__len__(self):
            self.update(_module_types())

    def get(self, key, default=None):
        self._fill()
        return dict.get(self, key, default)

    def items(self):
        self._fill()
        return dict.items(self)

    def __iter__(self):
        self._fill()
        return dict.__iter__(self)


MODULES = _LazyModules()


# --------------------------------------------------------------------------- function handlers
def _binary(kind, reverse_kind=None):
    def handle(g: _FxGraph, node, args, kwargs):
        a, b = node.args[0], node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
        va, vb = args[0], args[1] if len(args) > 1 else kwargs.get("other")
        if kwargs.get("alpha", 1) != 1:
            g.refuse(node, "add/sub without alpha", f"alpha={kwargs['alpha']}")
        da, db = isinstance(va, Pending), isinstance(vb, Pending)
        if da and db:
            if kind != "add":
                g.refuse(node, f"'{kind}' of the data by a constant (only + joins two data paths)", "two data inputs")
            views = [g.concrete(a), g.concrete(b)]
            if (views[0].base, views[0].perm, views[0].shape) != (views[1].base, views[1].perm, views[1].shape):
                g.refuse(node, "inputs of the same shape", f"{views[0].shape} and {views[1].shape}")
            out = g.builder.add(node.name, "add", [v.node for v in views], kind="add")
            g.env[node] = Pending(View(out, views[0].base, views[0].perm, views[0].shape))
            return
        if da:
            return g.extend(node, a, (kind, g.const(node, vb, va.view)))
        if reverse_kind is None:
            g.refuse(node, f"the data {kind} a constant", f"a constant {kind} the data")
        g.extend(node, b, (reverse_kind, g.const(node, va, vb.view)))

    return handle


def _clamp(g: _FxGraph, node, args, kwargs):
    lo = args[1] if len(args) > 1 else kwargs.get("min")
    hi = args[2] if len(args) > 2 else kwargs.get("max")
    view = args[0].view
    lo = -np.inf if lo is None else g.const(node, lo, view)
    hi = np.inf if hi is None else g.const(node, hi, view)
    g.extend(node, node.args[0], ("clip", lo, hi))


def _hardtanh_fn(g: _FxGraph, node, args, kwargs):
    lo = args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)
    hi = args[2] if len(args) > 2 else kwargs.get("max_val", 1.0)
    g.extend(node, node.args[0], ("clip", float(lo), float(hi)))


def _flatten_fn(g: _FxGraph, node, args, kwargs):
    start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
    end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
    if start != 1 or end != -1:
        g.refuse(node, "flatten(x, 1)", f"start_dim={start}, end_dim={end}")
    _reshape_to(g, node, node.args[0])


def _opaque(g: _FxGraph, node, args, kwargs):
    g.env[node] = _Opaque()


def _view(g: _FxGraph, node, args, kwargs):
    if not isinstance(args[0], Pending):
        g.env[node] = _Opaque()
        return
    _reshape_to(g, node, node.args[0])


def _global_mean(g: _FxGraph, node, args, kwargs):
    dims = args[1] if len(args) > 1 else kwargs.get("dim")
    keep = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    view = _image(g, node, node.args[0])
    if sorted(d % 4 for d in (dims if isinstance(dims, (list, tuple)) else [dims])) != [2, 3]:
        g.refuse(node, "mean over the spatial axes (2, 3)", f"dim={dims}")
    c = view.shape[0]
    out = g.builder.add(node.name, "global_avgpool", [view.node], kind="mean")
    g.env[node] = Pending(View(out, (c,), (0,), (c, 1, 1) if keep else (c,)))


def _adaptive_fn(g: _FxGraph, node, args, kwargs):
    size = args[1] if len(args) > 1 else kwargs.get("output_size")
    if size not in (1, (1, 1), [1, 1]):
        g.refuse(node, "adaptive_avg_pool2d(x, 1)", f"output_size={size}")
    view = _image(g, node, node.args[0])
    c = view.shape[0]
    out = g.builder.add(node.name, "global_avgpool", [view.node], kind="adaptive_avg_pool2d")
    g.env[node] = Pending(View(out, (c,), (0,), (c, 1, 1)))


def _function_table():
    torch = _torch()
    F = torch.nn.functional
    add, sub, mul, div = _binary("add", "add"), _binary("sub", "rsub"), _binary("mul", "mul"), _binary("div")
    relu = lambda g, n, a, k: g.extend(n, n.args[0], ("clip", 0.0, np.inf))  # noqa: E731
    floor = lambda g, n, a, k: g.extend(n, n.args[0], ("floor",))  # noqa: E731
    table = {
        operator.add: add, torch.add: add, ".add": add, operator.iadd: add,
        operator.sub: sub, torch.sub: sub, ".sub": sub,
        operator.mul: mul, torch.mul: mul, ".mul": mul,
        operator.truediv: div, torch.div: div, ".div": div,
        torch.relu: relu, F.relu: relu, ".relu": relu,
        F.relu6: lambda g, n, a, k: g.extend(n, n.args[0], ("clip", 0.0, 6.0)),
        F.hardtanh: _hardtanh_fn,
        torch.clamp: _clamp, torch.clip: _clamp, ".clamp": _clamp, ".clip": _clamp,
        torch.floor: floor, ".floor": floor,
        torch.flatten: _flatten_fn, ".flatten": _flatten_fn,
        ".view": _view, ".reshape": _view, torch.reshape: _view,
        ".size": _opaque, getattr: _opaque, operator.getitem: _opaque, ".dim": _opaque,
        ".contiguous": lambda g, n, a, k: _alias(g, n), ".float": lambda g, n, a, k: _alias(g, n),
        F.dropout: lambda g, n, a, k: _alias(g, n),
        torch.mean: _global_mean, ".mean": _global_mean,
        F.adaptive_avg_pool2d: _adaptive_fn,
    }
    return table


class _LazyFunctions(dict):
    def get(self, key, default=None):
        if not dict.__len__(self):
            self.update(_function_table())
        return dict.get(self, key, default)


FUNCTIONS = _LazyFunctions()
_NAMES = ("+", "-", "*", "/", "relu", "clamp", "floor", "flatten", "view", "reshape", "size", "mean(2, 3)",
          "adaptive_avg_pool2d", "dropout")
