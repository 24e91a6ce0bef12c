"""evsim: event-driven simulation of spiking neural networks converted from ANNs.

Light names (file format, graph) import at once; the engine, which needs Numba, is
imported on first use so that ``import evsim`` and ``evsim --help`` stay fast.
"""
from . import _omp  # noqa: F401  - first: the OpenMP wait policy must be set before Numba starts threads
from .convert import ConversionOptions, convert
from .errors import EvsimError
from .format import load, save
from .graph import Graph, InputSpec, Node, validate
from .neurons import register_neuron

__version__ = "0.1.0"

# name -> module that defines it; resolved lazily by __getattr__ (PEP 562)
_LAZY = {
    "compile_network": "evsim.compile",
    "Network": "evsim.compile",
    "simulate": "evsim.engine",
    "Simulator": "evsim.engine",
    "as_network": "evsim.engine",
    "Results": "evsim.results",
    "BatchResult": "evsim.results",
    "RunPlan": "evsim.results",
    "EnergyModel": "evsim.energy",
    "register_energy_model": "evsim.energy",
    "load_energy_model": "evsim.energy",
    "SerialRunner": "evsim.runners",
    "ArraySource": "evsim.runners",
    "load_data": "evsim.data_io",
}

__all__ = ["ConversionOptions", "EvsimError", "Graph", "InputSpec", "Node", "convert", "load", "save", "validate",
           "register_neuron", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'evsim' has no attribute {name!r}")
