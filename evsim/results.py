"""Simulation results, the energy model, and the JSON report.

All figures are **per sample** (averaged over the simulated samples), as totals over
the T steps and per time-step.  Energy follows methods.md section 5:
``E_SNN = SOPs·E_AC + first-layer MACs·E_MAC`` (the analog first layer is evaluated at
every step) and ``E_ANN = all MACs·E_MAC``.
"""
from __future__ import annotations

import math

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from .errors import ConversionError, describe
from .format import atomic_write

__all__ = ["EnergyModel", "ENERGY_PRESETS", "LayerStats", "Results"]


@dataclass(frozen=True)
class EnergyModel:
    """Energy per operation, in picojoules.

    Attributes
    ----------
    e_mac_pj : float
        One multiply-accumulate (analog first layer, and every ANN MAC).
    e_ac_pj : float
        One accumulate (one synaptic operation).
    name, source : str
        Preset name and where the constants come from.
    """

    e_mac_pj: float = 4.6
    e_ac_pj: float = 0.9
    name: str = "45nm-fp32"
    source: str = "Horowitz, ISSCC 2014: 45 nm CMOS, fp32 mult 3.7 pJ + add 0.9 pJ"

    def __post_init__(self):
        for field_name, flag in (("e_mac_pj", "--e-mac"), ("e_ac_pj", "--e-ac")):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConversionError(describe(f"energy model, {field_name} ({flag})",
                                               "a finite number of picojoules >= 0", repr(value)))

    @classmethod
    def preset(cls, name: str) -> "EnergyModel":
        try:
            return ENERGY_PRESETS[name]
        except KeyError:
            raise ConversionError(describe("energy preset", "one of " + ", ".join(ENERGY_PRESETS),
                                           repr(name))) from None


#: Horowitz (ISSCC 2014), 45 nm: MAC = multiply + add of the same width
ENERGY_PRESETS = {
    "45nm-fp32": EnergyModel(),
    "45nm-int32": EnergyModel(3.2, 0.1, "45nm-int32", "Horowitz, ISSCC 2014: 45 nm CMOS, int32 mult 3.1 pJ + add 0.1 pJ"),
    "45nm-int8": EnergyModel(0.23, 0.03, "45nm-int8", "Horowitz, ISSCC 2014: 45 nm CMOS, int8 mult 0.2 pJ + add 0.03 pJ"),
}


@dataclass
class LayerStats:
    """Activity of one neuron population, per sample.

    ``spikes`` sums |spike counts| (a GN output of count k is k spikes, one event);
    ``events`` counts non-zero outputs; ``sops`` counts the synaptic operations its
    spikes cause (k × structural fan-out, through any max-pooling gate after it);
    ``firing_rate`` is spikes per neuron per time-step.
    """

    name: str
    neurons: int
    spikes: float
    events: float
    sops: float
    firing_rate: float
    spikes_per_step: list[float]
    sops_per_step: list[float]


@dataclass
class Results:
    """Everything one simulation run measured.

    Attributes
    ----------
    T, samples : int
        Time-steps and number of simulated samples.
    accuracy : list of float or None
        Accuracy of the prediction at t = 1..T (argmax of the accumulated output);
        None without labels.
    predictions : ndarray, (samples, T)
        Predicted class per sample and time-step.
    layers : list of LayerStats
    first_layer_macs : int
        MACs of the analog part (input-dependent layers) per time-step per sample.
    ann_macs : int
        MACs of the whole ANN for one sample.
    energy : EnergyModel
    settings : dict
        Every setting used (model, T, precision, neuron model, ...).
    timing : dict
        Seconds spent compiling, in JIT compilation and simulating.
    ann_accuracy : float or None
        Accuracy of the ANN on the same samples, where computed.
    """

    T: int
    samples: int
    accuracy: list | None
    predictions: np.ndarray
    layers: list[LayerStats]
    first_layer_macs: int
    ann_macs: int
    energy: EnergyModel
    settings: dict = field(default_factory=dict)
    timing: dict = field(default_factory=dict)
    ann_accuracy: float | None = None

    @property
    def sops(self) -> float:
        """Synaptic operations per sample over all T steps."""
        return float(sum(layer.sops for layer in self.layers))

    @property
    def sops_per_step(self) -> list[float]:
        return [float(sum(layer.sops_per_step[t] for layer in self.layers)) for t in range(self.T)]

    @property
    def spikes(self) -> float:
        return float(sum(layer.spikes for layer in self.layers))

    @property
    def macs(self) -> int:
        """MACs the SNN performs per sample: the analog first layer at every step."""
        return self.first_layer_macs * self.T

    @property
    def energy_snn_pj(self) -> float:
        return self.sops * self.energy.e_ac_pj + self.macs * self.energy.e_mac_pj

    @property
    def energy_ann_pj(self) -> float:
        return self.ann_macs * self.energy.e_mac_pj

    def energy_snn_at(self, t: int) -> float:
        """E_SNN per sample had the run stopped after ``t`` steps."""
        sops = sum(self.sops_per_step[:t])
        return sops * self.energy.e_ac_pj + self.first_layer_macs * t * self.energy.e_mac_pj

    def to_dict(self) -> dict:
        """The JSON report (see ``docs/usage.md``)."""
        totals = {
            "sops": self.sops,
            "sops_per_step": self.sops_per_step,
            "spikes": self.spikes,
            "events": float(sum(layer.events for layer in self.layers)),
            "macs": self.macs,
            "first_layer_macs_per_step": self.first_layer_macs,
            "ann_macs": self.ann_macs,
            "energy_pj": {"snn": self.energy_snn_pj, "ann": self.energy_ann_pj,
                          "snn_per_step": [self.energy_snn_at(t + 1) for t in range(self.T)]},
        }
        return {
            "evsim_report": 1,
            "settings": self.settings,
            "samples": self.samples,
            "T": self.T,
            "accuracy": self.accuracy,
            "ann_accuracy": self.ann_accuracy,
            "layers": [asdict(layer) for layer in self.layers],
            "totals": totals,
            "energy_model": asdict(self.energy),
            "timing": self.timing,
        }

    def save(self, path) -> None:
        """Write the JSON report atomically."""
        text = json.dumps(self.to_dict(), indent=1, default=_json_default)
        atomic_write(path, lambda tmp: tmp.write_text(text + "\n"))


def _json_default(value):
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
