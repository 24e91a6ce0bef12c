"""Strict option types: ASCII numbers only, finite, within documented bounds.

Python's ``int()``/``float()`` accept far more than a user means to type — other
scripts' digits (``"١٢"``), underscores (``"1_000"``), ``"nan"``, ``"inf"``, surrounding
whitespace — so the CLI parses numbers with these types instead of click's.
"""
from __future__ import annotations

import math
import re

import click

__all__ = ["StrictInt", "StrictFloat", "parse_int", "parse_float", "parse_bool", "LIMITS"]

_INT = re.compile(r"[+-]?[0-9]+", re.ASCII)
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)

#: upper bounds of the integer options (documented in docs/usage.md)
LIMITS = {
    "timesteps": 100_000,
    "batch_size": 100_000,
    "samples": 1_000_000_000,
}


def parse_int(text: str) -> int:
    """An integer written in ASCII digits, optionally signed; ``ValueError`` otherwise."""
    text = str(text)
    if not _INT.fullmatch(text) or len(text) > 30:
        raise ValueError(text)
    return int(text)


def parse_float(text: str) -> float:
    """A finite decimal number in ASCII (``1``, ``0.5``, ``-2e-3``); ``ValueError`` otherwise."""
    text = str(text)
    if not _FLOAT.fullmatch(text) or len(text) > 60:
        raise ValueError(text)
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def parse_bool(text: str) -> bool:
    """``true/false``, ``yes/no``, ``on/off``, ``1/0`` (any case)."""
    key = str(text).lower()
    if key in ("true", "yes", "on", "1"):
        return True
    if key in ("false", "no", "off", "0"):
        return False
    raise ValueError(text)


def _show(value) -> str:
    from .console import escape

    text = escape(value)
    return repr(text[:40] + "..." if len(text) > 40 else text)


class StrictInt(click.ParamType):
    """An integer in ``[minimum, maximum]``, ASCII digits only."""

    name = "integer"

    def __init__(self, minimum: int | None = None, maximum: int | None = None):
        self.minimum, self.maximum = minimum, maximum

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            try:
                number = parse_int(value)
            except ValueError:
                self.fail(f"{_show(value)} is not a whole number (digits 0-9)", param, ctx)
        if (self.minimum is not None and number < self.minimum) or (self.maximum is not None and number > self.maximum):
            self.fail(f"{number} is not in {self._range()}", param, ctx)
        return number

    def _range(self) -> str:
        lo = "" if self.minimum is None else f"{self.minimum}"
        hi = "" if self.maximum is None else f"{self.maximum:,}".replace(",", "_")
        return f"the range {lo}..{hi}" if hi else f"the range >= {lo}"

    def get_metavar(self, param, ctx=None):
        return "N"


class StrictFloat(click.ParamType):
    """A finite number ``>= minimum`` (if given), ASCII only."""

    name = "number"

    def __init__(self, minimum: float | None = None):
        self.minimum = minimum

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            number = value
        else:
            try:
                number = parse_float(value)
            except ValueError:
                self.fail(f"{_show(value)} is not a finite number (e.g. 0.9, 4.6, 1e-3)", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{number} is not finite", param, ctx)
        if self.minimum is not None and number < self.minimum:
            self.fail(f"{number} is negative; it must be >= {self.minimum}", param, ctx)
        return number

    def get_metavar(self, param, ctx=None):
        return "X"
