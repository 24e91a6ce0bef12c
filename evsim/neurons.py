"""The neuron-model registry: one record per model, built-in or plugin.

Every place that needs to know about neuron models (file validation, conversion,
compilation, the engine, warm-up, the CLI and calibration) reads :data:`MODELS`
through :func:`get_model`; nothing else lists model names.

A model is a :class:`NeuronModel`: its name and CLI spelling, its parameters (types,
defaults, bounds), the payload of one spike count, the initial-potential rule, the range
of its spike counts (which fixes the event count dtype), the reset rules that apply to
it, and its kernel.  The kernel of a model is generated around a scalar, jitted *step*
function by :func:`evsim._kernels.factory.layer_kernel` (a kernel factory); a model may
instead bring a hand-written layer kernel with the same signature.

Plugins register with :func:`register_neuron`, from Python or from an installed package
through the entry-point group ``evsim.neurons`` (the entry point names a callable that
registers, or a :class:`NeuronModel`)::

    import numba, evsim

    @numba.njit
    def lif_step(v, current, theta, beta):      # scalars in; returns (new v, spike count)
        h = beta * v + current
        s = 1.0 if h >= theta else 0.0
        return h - s * theta, s

    evsim.register_neuron("lif", lif_step, params={"beta": 0.9}, v0="half")

Built-in models (docs/methods.md section 2):

``if``
    Integrate-and-fire, soft reset: ``h = v + x``; ``s = [h >= θ]``; ``v = h - s·θ``
    (or ``v = 0`` after a spike with reset ``zero``).  Payload θ per spike.
``gn``
    Group Neurons of ``tau`` members: ``s = #{i in 1..τ : h >= i·θ/τ}``,
    ``v = h - s·θ/τ``.  Payload θ/τ per member spike, counts 0..τ.
``signed_if``
    Fast-SNN signed IF: +1 when ``h >= θ``; -1 when ``h <= -1e-3`` and the net count
    ``N > 0``; ``v = h ∓ θ``.  Needs the per-neuron net count as extra state, which a
    step function cannot carry, so it keeps a hand-written kernel.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from .errors import ConversionError, UnknownNeuronError, describe

__all__ = ["Param", "NeuronModel", "MODELS", "register_neuron", "get_model", "available_models",
           "ENTRY_POINT_GROUP", "MAX_PARAMS", "NEGATIVE_THRESHOLD"]

#: entry-point group through which installed packages register neuron models
ENTRY_POINT_GROUP = "evsim.neurons"
#: most declared parameters a step function may take (the kernel factory has one adapter per arity)
MAX_PARAMS = 6
#: the signed IF neuron's negative threshold (methods.md 2.3, Fast-SNN)
NEGATIVE_THRESHOLD = -1e-3
#: payload rules: the value one spike count carries, from the threshold θ and the parameters
PAYLOADS: dict[str, Callable[[np.ndarray, Mapping], np.ndarray]] = {
    "theta": lambda theta, params: theta,
    "theta/tau": lambda theta, params: theta / params["tau"],
    "one": lambda theta, params: np.ones_like(theta),
}
V0_RULES = ("half", "zero")
RESETS = ("subtract", "zero")


@dataclass(frozen=True)
class Param:
    """One parameter of a neuron model.

    Attributes
    ----------
    default : float, int or bool
        Value when none is given; its type is the parameter's type.
    minimum, maximum : float, optional
        Inclusive bounds (validated on every value, from files and options alike).
    doc : str
    """

    default: float | int | bool
    minimum: float | None = None
    maximum: float | None = None
    doc: str = ""

    @property
    def kind(self) -> type:
        return type(self.default)

    def check(self, value, where: str, name: str):
        """Return ``value`` as this parameter's type, or raise ConversionError."""
        kind = self.kind
        if kind is bool:
            ok = isinstance(value, (bool, np.bool_))
        elif kind is int:
            ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
        else:
            ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
            ok = ok and math.isfinite(float(value))
        if ok and kind is not bool:
            ok = (self.minimum is None or value >= self.minimum) and (self.maximum is None or value <= self.maximum)
        if not ok:
            bounds = []
            if self.minimum is not None:
                bounds.append(f">= {self.minimum:g}")
            if self.maximum is not None:
                bounds.append(f"<= {self.maximum:g}")
            expected = {bool: "true or false", int: "an integer", float: "a finite number"}[kind]
            raise ConversionError(describe(f"{where}, parameter '{name}'",
                                           " ".join([expected] + (["in " + " and ".join(bounds)] if bounds else [])),
                                           _short(value)))
        return kind(value)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class NeuronModel:
    """A registered neuron model.

    Attributes
    ----------
    name : str
        Name in SNN files (``signed_if``).
    cli_name : str
        Spelling on the command line (``signed-if``).
    step : numba dispatcher or None
        Scalar step ``step(v, current, theta, *params[, reset_zero]) -> (new_v, count)``.
    params : dict of str to Param
        Declared parameters, in the order the step takes them.
    v0 : {"half", "zero"}
        Default initial potential: half a payload unit, or zero.
    payload : {"theta", "theta/tau", "one"}
        What one spike count carries downstream.
    counts : tuple or callable
        ``(lo, hi)`` range of spike counts, or a function of the parameters returning it.
    resets : tuple of str
        Reset rules the model accepts (first is the default); empty: no reset option.
    kernel : callable or None
        A hand-written layer kernel; None means the factory builds one around ``step``.
    step_threshold : {"theta", "unit"}
        What the step (and kernel) receive as threshold: θ or the payload unit.
    doc : str
        The model's equations.
    builtin : bool
    """

    name: str
    cli_name: str
    step: object
    params: dict = field(default_factory=dict)
    v0: str = "half"
    payload: str = "theta"
    counts: object = (0, 1)
    resets: tuple = ()
    kernel: object = None
    step_threshold: str = "theta"
    doc: str = ""
    builtin: bool = False

    def count_range(self, params: Mapping | None = None) -> tuple[int, int]:
        """Smallest and largest spike count one neuron can emit in one step."""
        lo, hi = self.counts(self.resolve(params or {}, "neuron model " + self.name)) if callable(self.counts) \
            else self.counts
        return int(lo), int(hi)

    def count_dtype(self, params: Mapping | None = None) -> np.dtype:
        lo, hi = self.count_range(params)
        for dtype in (np.int8, np.int16, np.int32):
            if np.iinfo(dtype).min <= lo and hi <= np.iinfo(dtype).max:
                return np.dtype(dtype)
        return np.dtype(np.int64)

    def resolve(self, given: Mapping, where: str) -> dict:
        """Defaults filled in and every value checked; unknown names are refused."""
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            known = ", ".join(self.params) or "none"
            raise ConversionError(describe(
                where, f"parameters of neuron model '{self.name}' ({known})", ", ".join(map(repr, unknown)),
                "drop the option or choose a neuron model that has it"))
        return {name: p.check(given[name], where, name) if name in given else p.default
                for name, p in self.params.items()}

    def unit(self, theta: np.ndarray, params: Mapping) -> np.ndarray:
        """Payload of one count for threshold(s) ``theta``."""
        return np.asarray(PAYLOADS[self.payload](np.asarray(theta, dtype=np.float64), params), dtype=np.float64)

    def initial_potential(self, theta: np.ndarray, params: Mapping, rule: str | None = None) -> np.ndarray:
        """v0 by ``rule`` (default: the model's): half a payload unit, or zero."""
        rule = rule or self.v0
        unit = self.unit(theta, params)
        return np.zeros_like(unit) if rule == "zero" else unit / 2


MODELS: dict[str, NeuronModel] = {}
_lock = threading.Lock()
_entry_points_loaded = False


def _check_name(name, where: str, what: str) -> str:
    if not (isinstance(name, str) and name and len(name) <= 64 and name.replace("_", "").replace("-", "").isalnum()
            and name.isascii()):
        raise ConversionError(describe(where, f"{what}: 1-64 ASCII letters, digits, '_' or '-'", _short(name)))
    return name


def register_neuron(name: str, step, params: Mapping | None = None, v0: str = "half", *, payload: str = "theta",
                    counts=(0, 1), resets: tuple = (), cli_name: str | None = None, doc: str = "",
                    replace: bool = False, kernel=None, step_threshold: str = "theta",
                    _builtin: bool = False) -> NeuronModel:
    """Register a neuron model; evsim builds its layer kernel around ``step``.

    Parameters
    ----------
    name : str
        Model name in SNN files and the API (``neuron=name``).
    step : numba dispatcher
        ``@numba.njit`` function ``step(v, current, theta, *params) -> (new_v, count)`` on
        scalars: the potential, this step's input current, the neuron's threshold, then the
        declared parameters in order (and a final ``reset_zero`` bool when ``resets`` is
        given).  Counts may be negative; they are clipped to ``counts``.  The emitted payload
        is ``count × unit`` (see ``payload``); spikes count ``|count|``, events ``count != 0``,
        SOPs ``|count| × fan-out``.
    params : dict, optional
        Parameter name -> default (float, int or bool) or :class:`Param`.  Parameters arrive in
        the step as scalars of the simulation dtype (bools as bools).
    v0 : {"half", "zero"}
        Default initial potential (half a payload unit, or zero).
    payload : {"theta", "one", "theta/tau"}
        What one count carries: θ (ANN-converted neurons), or 1 (spikes as in NIR).
    counts : (int, int)
        Range of counts one neuron emits per step (fixes the event dtype).
    resets : tuple of str
        Reset rules among ("subtract", "zero") the step understands (first = default).
    cli_name : str, optional
        Spelling on the command line (default: ``name`` with ``_`` as ``-``).
    doc : str
        The model's equations, shown by ``evsim`` and kept with the model.
    replace : bool
        Allow replacing an already registered plugin model (built-ins cannot be replaced).

    Returns
    -------
    NeuronModel
    """
    where = f"register_neuron({name!r})" if isinstance(name, str) else "register_neuron"
    _check_name(name, where, "a model name")
    cli_name = _check_name(cli_name or name.replace("_", "-"), where, "a CLI name")
    if step is not None and not hasattr(step, "py_func"):
        raise ConversionError(describe(where, "a step function compiled with @numba.njit", type(step).__name__,
                                       "decorate it with @numba.njit"))
    declared = {}
    for key, value in dict(params or {}).items():
        _check_name(key, where, "a parameter name")
        p = value if isinstance(value, Param) else Param(value)
        if not isinstance(p.default, (bool, int, float)):
            raise ConversionError(describe(f"{where}, parameter '{key}'", "a float, int or bool default",
                                           type(p.default).__name__))
        p.check(p.default, where, key)
        declared[key] = p
    if len(declared) > MAX_PARAMS:
        raise ConversionError(describe(where, f"at most {MAX_PARAMS} parameters", f"{len(declared)}"))
    if v0 not in V0_RULES:
        raise ConversionError(describe(where, "v0 'half' or 'zero'", _short(v0)))
    if payload not in PAYLOADS:
        raise ConversionError(describe(where, "payload among " + ", ".join(PAYLOADS), _short(payload)))
    resets = tuple(resets)
    if any(r not in RESETS for r in resets):
        raise ConversionError(describe(where, "resets among 'subtract', 'zero'", _short(resets)))
    if not callable(counts):
        if not (isinstance(counts, (tuple, list)) and len(counts) == 2
                and all(isinstance(c, (int, np.integer)) for c in counts) and counts[0] <= 0 < counts[1]
                and -2**31 <= counts[0] and counts[1] < 2**31):
            raise ConversionError(describe(where, "counts (lo, hi): integers with lo <= 0 < hi", _short(counts)))
        counts = (int(counts[0]), int(counts[1]))
    model = NeuronModel(name, cli_name, step, declared, v0, payload, counts, resets, kernel, step_threshold, doc,
                        _builtin)
    with _lock:
        for other in MODELS.values():
            if other.name != name and other.cli_name == cli_name:
                raise ConversionError(describe(where, "a CLI name not used by another model",
                                               f"'{cli_name}' of model '{other.name}'"))
        old = MODELS.get(name)
        if old is not None and (old.builtin or not replace):
            raise ConversionError(describe(
                where, "a name not registered yet", f"model '{name}' is already registered",
                "built-in models cannot be replaced" if old.builtin else "pass replace=True to replace it"))
        MODELS[name] = model
    return model


def _load_entry_points() -> None:
    """Import the neuron models that installed packages declare (once)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in MODELS:
            continue
        try:
            obj = ep.load()
            if isinstance(obj, NeuronModel):
                MODELS.setdefault(obj.name, obj)
            elif callable(obj):
                obj()
        except Exception as exc:  # a broken plugin must not break evsim: report it when it is asked for
            _broken[ep.name] = f"{ep.value}: {type(exc).__name__}: {exc}"


_broken: dict[str, str] = {}


def get_model(name: str, where: str = "neuron model") -> NeuronModel:
    """The registered model called ``name`` (file name or CLI name); plugins load on demand.

    Raises
    ------
    UnknownNeuronError
        No such model registered, naming the plugin mechanism to install it.
    """
    model = _find(name)
    if model is None:
        _load_entry_points()
        model = _find(name)
    if model is None:
        known = ", ".join(m.name for m in MODELS.values())
        broken = f" (plugin '{name}' failed to load: {_broken[name]})" if isinstance(name, str) and name in _broken \
            else ""
        raise UnknownNeuronError(describe(
            where, f"a registered neuron model ({known})", _short(name) + broken,
            "install or import the plugin that registers it (evsim.register_neuron, or an entry point in "
            f"group '{ENTRY_POINT_GROUP}')"))
    return model


def _find(name) -> NeuronModel | None:
    if not isinstance(name, str):
        return None
    model = MODELS.get(name)
    if model is None:
        model = next((m for m in MODELS.values() if m.cli_name == name), None)
    return model


def available_models() -> list[NeuronModel]:
    """Every registered model, plugins from entry points included."""
    _load_entry_points()
    return list(MODELS.values())


# --------------------------------------------------------------------------- built-in models
def _builtin_steps():
    """The scalar steps of the built-in models (imports numba: called on first kernel use)."""
    from ._kernels import steps

    return steps


class _LazyStep:
    """Stands for a built-in step until Numba is needed (keeps ``import evsim`` light)."""

    def __init__(self, attr: str):
        self.attr = attr
        self.py_func = None

    def resolve(self):
        return getattr(_builtin_steps(), self.attr)


def _gn_counts(params):
    return (0, params["tau"])


#: GN members per group: bounded so that counts fit in int16 and a step's member loop stays short
MAX_TAU = 1024

register_neuron("if", _LazyStep("if_step"), v0="half", resets=RESETS, _builtin=True,
                doc="h = v + x; s = [h >= θ]; v = h - s·θ (reset 'zero': v = 0 after a spike); payload θ")
register_neuron("gn", _LazyStep("gn_step"), params={"tau": Param(4, 1, MAX_TAU, "members per group")},
                v0="half", payload="theta/tau", counts=_gn_counts, step_threshold="unit", _builtin=True,
                doc="s = #{i = 1..τ : h >= i·θ/τ}; v = h - s·θ/τ; payload θ/τ per member spike")
register_neuron("signed_if", None, v0="half", counts=(-1, 1), _builtin=True,
                kernel="signed_if_run",
                doc="+1 if h >= θ; -1 if h <= -1e-3 and net count N > 0; v = h ∓ θ; payload θ")
