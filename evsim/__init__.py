"""evsim: event-driven simulation of spiking neural networks converted from ANNs."""
__version__ = "0.1.0"
