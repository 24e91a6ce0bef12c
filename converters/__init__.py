"""Converters and calibration that sit on top of the evsim core (``evsim.converters``).

Layering: modules here may import :mod:`evsim`; :mod:`evsim` never imports them.
Names are resolved lazily (PEP 562) so that importing one converter does not pull in
the others or their optional dependencies.
"""
from __future__ import annotations

#: public name -> module (relative to this package) that defines it
_LAZY = {
    "calibrate": "calibration",
    "threshold_statistics": "calibration",
    "CalibrationWarning": "calibration",
    "nhwc_to_nchw": "_builder",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
