"""Neuron-model options of the CLI, read from the neuron-model registry.

``--neuron`` accepts the CLI name of every model in :func:`evsim.neurons.available_models`
(built-ins and plugins registered through the ``evsim.neurons`` entry points);
``--neuron-param NAME=VALUE`` (repeatable) sets one of the chosen model's parameters,
``--tau N`` is shorthand for ``--neuron-param tau=N``; ``--v0`` and ``--reset`` are the
initial potential and reset rule.  An option that does not apply to the chosen model is
refused here, in the words the user typed, before anything runs.

The registry imports Numba (models are jitted step functions), so it is read only when a
command actually uses these options (or shows its ``--help``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import click

from .types import parse_bool, parse_float, parse_int

__all__ = ["neuron_options", "NeuronChoice", "NeuronRequest", "neuron_request", "models", "find_model"]

V0_CHOICES = ("half", "zero")
RESET_CHOICES = ("subtract", "zero")


# --------------------------------------------------------------------------- the registry
def models() -> list:
    """Every available neuron model (built-ins and installed plugins)."""
    from evsim.neurons import available_models

    return list(available_models())


def find_model(name: str):
    """The model whose CLI name (or file name) is ``name``; ``click.BadParameter`` otherwise
    (the registry's message says how to install or register a plugin)."""
    from evsim.errors import EvsimError
    from evsim.neurons import get_model

    try:
        return get_model(name)
    except EvsimError as exc:
        raise click.BadParameter(str(exc), param_hint="'--neuron'") from None


def _param_default(param):
    return getattr(param, "default", param)


def _param_bounds(param):
    return getattr(param, "minimum", None), getattr(param, "maximum", None)


def _describe_params(model) -> str:
    if not model.params:
        return "it has no parameters"
    parts = []
    for name, param in model.params.items():
        lo, hi = _param_bounds(param)
        bounds = f" in {lo}..{hi}" if lo is not None and hi is not None else (
            f" >= {lo}" if lo is not None else (f" <= {hi}" if hi is not None else ""))
        parts.append(f"{name} (default {_param_default(param)!r}{bounds})")
    return "its parameters: " + ", ".join(parts)


# --------------------------------------------------------------------------- click glue
class NeuronChoice(click.ParamType):
    """A neuron model's CLI name, checked against the registry when parsed."""

    name = "model"

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        return find_model(value).cli_name

    def get_metavar(self, param, ctx=None):
        return "MODEL"

    def shell_complete(self, ctx, param, incomplete):
        from click.shell_completion import CompletionItem

        return [CompletionItem(m.cli_name) for m in models() if m.cli_name.startswith(incomplete)]


class _RegistryHelpOption(click.Option):
    """An option whose help lists the registered models (read only when help is shown)."""

    def get_help_record(self, ctx):
        record = super().get_help_record(ctx)
        if record is None:
            return None
        try:
            listing = ", ".join(_summary(m) for m in models())
        except Exception as exc:  # noqa: BLE001 - help must show even if a plugin is broken
            listing = f"(the registry could not be read: {exc})"
        return record[0], f"{record[1]} Models: {listing}."


def _summary(model) -> str:
    """``gn (tau 1..1024, default 4)``, ``if (--reset subtract|zero)``."""
    details = []
    for name, param in model.params.items():
        lo, hi = _param_bounds(param)
        bounds = f" {lo}..{hi}" if lo is not None and hi is not None else ""
        details.append(f"{name}{bounds}, default {_param_default(param)}")
    if model.resets:
        details.append("--reset " + "|".join(model.resets))
    return model.cli_name + (f" ({'; '.join(details)})" if details else "")


def neuron_options(func):
    """``--neuron``, ``--neuron-param``, ``--tau``, ``--v0``, ``--reset`` (run, convert)."""
    decorators = [
        click.option("--neuron", type=NeuronChoice(), default=None, cls=_RegistryHelpOption,
                     help="Neuron model (default if)."),
        click.option("--neuron-param", "neuron_params", multiple=True, metavar="NAME=VALUE",
                     help="A parameter of the chosen model, e.g. tau=8 for gn (repeatable)."),
        click.option("--tau", type=str, default=None, metavar="N",
                     help="Shorthand for --neuron-param tau=N (models with a tau parameter: Group Neurons' members)."),
        click.option("--v0", "v0", type=click.Choice(V0_CHOICES), default=None,
                     help="Initial potential: half a payload unit (OPI, default) or zero."),
        click.option("--reset", type=click.Choice(RESET_CHOICES), default=None,
                     help="Reset after a spike, for models that have one (if: subtract, default; zero for "
                          "comparison)."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


@dataclass
class NeuronRequest:
    """What the user asked for, checked against the model: ``None`` = the model's default."""

    model: object
    v0: str | None = None
    reset: str | None = None
    params: dict = field(default_factory=dict)
    given: bool = False  # any neuron option on the command line

    def applied(self) -> dict:
        """The settings as the user typed them (for messages and summaries)."""
        out = {"neuron": self.model.cli_name}
        if self.v0 is not None:
            out["v0"] = self.v0
        if self.reset is not None:
            out["reset"] = self.reset
        out.update(self.params)
        return out

    def options(self):
        """The :class:`evsim.ConversionOptions` to convert with."""
        from evsim.convert import ConversionOptions

        return ConversionOptions(neuron=self.model.name, v0=self.v0, reset=self.reset, params=dict(self.params) or None)

    def describe(self) -> str:
        """E.g. ``gn (tau=8)`` or ``if (v0 zero, reset zero)``."""
        details = [f"{k}={v}" for k, v in self.params.items()]
        details += [f"{k} {v}" for k, v in (("v0", self.v0), ("reset", self.reset)) if v is not None]
        return self.model.cli_name + (f" ({', '.join(details)})" if details else "")


def _parse_value(name: str, text: str, param, option: str, model) -> object:
    default = _param_default(param)
    kind = type(default)
    try:
        if kind is bool:
            value = parse_bool(text)
        elif kind is int:
            value = parse_int(text)
        else:
            value = parse_float(text)
    except ValueError:
        expected = {bool: "true or false", int: "a whole number (digits 0-9)"}.get(kind, "a finite number")
        raise click.BadParameter(f"{name}={text}: {name} of --neuron {model.cli_name} must be {expected}",
                                 param_hint=f"'{option}'") from None
    lo, hi = _param_bounds(param)
    if kind is not bool and ((lo is not None and value < lo) or (hi is not None and value > hi)):
        bounds = f"{lo}..{hi}" if lo is not None and hi is not None else (f">= {lo}" if lo is not None else f"<= {hi}")
        raise click.BadParameter(f"{name}={text}: {name} of --neuron {model.cli_name} must be in {bounds}",
                                 param_hint=f"'{option}'")
    return value


def neuron_request(neuron, neuron_params=(), tau=None, v0=None, reset=None) -> NeuronRequest:
    """Check the neuron options against the chosen model; ``click.BadParameter`` /
    ``click.UsageError`` naming the option that does not apply and why."""
    model = find_model(neuron or "if")
    chosen = f"--neuron {model.cli_name}" if neuron else f"the default model ({model.cli_name}; choose one with --neuron)"
    request = NeuronRequest(model, v0=v0, given=any(v not in (None, ()) for v in (neuron, neuron_params, tau, v0, reset)))
    if reset is not None:
        if not model.resets:
            raise click.UsageError(f"--reset {reset} does not apply to {chosen}: that model has no reset rule "
                                   f"(models with one: {', '.join(m.cli_name for m in models() if m.resets)})")
        if reset not in model.resets:
            raise click.UsageError(f"--reset {reset} does not apply to {chosen}: it accepts "
                                   f"{' or '.join(model.resets)}")
        request.reset = reset
    for item in neuron_params:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise click.BadParameter(f"{item!r}: expected NAME=VALUE, e.g. tau=8", param_hint="'--neuron-param'")
        if name not in model.params:
            raise click.UsageError(f"--neuron-param {item}: {chosen} has no parameter {name!r} "
                                   f"({_describe_params(model)})")
        if name in request.params:
            raise click.UsageError(f"--neuron-param {name} is given twice")
        request.params[name] = _parse_value(name, text, model.params[name], "--neuron-param", model)
    if tau is not None:
        if "tau" not in model.params:
            owners = ", ".join(m.cli_name for m in models() if "tau" in m.params) or "none"
            raise click.UsageError(f"--tau {tau} does not apply to {chosen}: it has no parameter tau "
                                   f"(models with tau: {owners})")
        if "tau" in request.params:
            raise click.UsageError("--tau and --neuron-param tau=... both set tau; give one of them")
        request.params["tau"] = _parse_value("tau", tau, model.params["tau"], "--tau", model)
    return request
