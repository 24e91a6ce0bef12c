"""Shared option decorators and the rule table that refuses inapplicable options.

To add an option to a command: write it with ``click.option`` (or add it to one of the
shared decorators below when several commands take it), add any rule about when it does
not apply to that command's ``RULES`` list in :mod:`evsim.cli.main`, and carry its value
through the command's request builder (``build_run_request`` for ``run``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import click
from click.core import ParameterSource

from .console import Console, get_console
from .types import LIMITS, StrictFloat, StrictInt

__all__ = ["Rule", "check_rules", "given", "verbosity_options", "sim_options", "energy_options", "ENERGY_PRESETS"]

#: energy presets (evsim.results.ENERGY_PRESETS, listed here so --help needs no NumPy)
ENERGY_PRESETS = ("45nm-fp32", "45nm-int32", "45nm-int8")


def given(ctx: click.Context) -> set[str]:
    """Parameter names the user set on the command line (or through the environment)."""
    sources = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    return {name for name in ctx.params if ctx.get_parameter_source(name) in sources}


@dataclass(frozen=True)
class Rule:
    """``when(facts)`` true → the options are refused with ``message(facts)``.

    ``facts`` is a dict: every parameter value, ``"given"`` (names set by the user) and
    whatever the command adds (e.g. ``"kind"`` of the model file).
    """

    when: Callable[[dict], bool]
    message: Callable[[dict], str]


def check_rules(rules, facts: dict) -> None:
    """Raise ``click.UsageError`` with the first rule that fires."""
    for rule in rules:
        if rule.when(facts):
            raise click.UsageError(rule.message(facts))


# --------------------------------------------------------------------------- verbosity
def _set_verbosity(level: int):
    def callback(ctx, param, value):
        if value:
            console = ctx.find_object(Console) or get_console()
            console.set_verbosity(level)
        return value

    return callback


def verbosity_options(func):
    """``-q/--quiet`` and ``-v/--verbose`` (also accepted before the command name)."""
    func = click.option("-v", "--verbose", is_flag=True, expose_value=False, is_eager=True,
                        callback=_set_verbosity(2),
                        help="Details: timings, Numba kernels compiled vs loaded from the cache, tracebacks of "
                             "internal errors.")(func)
    func = click.option("-q", "--quiet", is_flag=True, expose_value=False, is_eager=True,
                        callback=_set_verbosity(0), help="No progress or status lines (results and errors only).")(func)
    return func


# --------------------------------------------------------------------------- shared option groups
def timesteps_option(default: int | None = 32, help: str = "Time-steps to simulate"):
    return click.option("-T", "--timesteps", "T", type=StrictInt(1, LIMITS["timesteps"]), default=default,
                        show_default=default is not None, help=f"{help} (1 to {LIMITS['timesteps']:,}).")


def sim_options(func):
    """``-T``, ``--batch-size``, ``--samples``, ``--precision`` (run)."""
    decorators = [
        timesteps_option(None, "Time-steps to simulate [default: 32; for event-frame data, its number of "
                               "frames]"),
        click.option("--batch-size", type=StrictInt(1, LIMITS["batch_size"]), default=64, show_default=True,
                     help="Samples simulated together (kernels run in parallel over samples and steps)."),
        click.option("--samples", type=StrictInt(1, LIMITS["samples"]), default=None,
                     help="Use only the first N samples of --data."),
        click.option("--precision", type=click.Choice(["float32", "float64"]), default="float32", show_default=True),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def energy_options(func):
    """``--energy``, ``--e-mac``, ``--e-ac`` (run)."""
    decorators = [
        click.option("--energy", "energy_preset", multiple=True, metavar="NAME",
                     help="Energy model (repeatable; 'all' for every one), e.g. 45nm-fp32 (default), loihi, "
                          "45nm-fp32-sram8k, keras-spiking-gpu; list in docs/usage.md#energy."),
        click.option("--energy-model", "energy_files", multiple=True, type=click.Path(dir_okay=False),
                     metavar="FILE", help="Add an energy model from a JSON or TOML file (repeatable)."),
        click.option("--e-mac", type=StrictFloat(0.0), default=None, metavar="PJ",
                     help="Override E_MAC in pJ (finite, >= 0)."),
        click.option("--e-ac", type=StrictFloat(0.0), default=None, metavar="PJ",
                     help="Override E_AC in pJ (finite, >= 0)."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func
