"""Simulation results, the energy model, and the JSON report.

All figures are **per sample** (averaged over the simulated samples), as totals over
the T steps and per time-step.  Energy is :mod:`evsim.energy`'s: exact counts times the
per-operation energies of one or more device models; with the default model it is
methods.md section 5's ``E_SNN = SOPs·E_AC + first-layer MACs·T·E_MAC``, ``E_ANN = all MACs·E_MAC``.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from . import energy as _energy
from .energy import EnergyModel
from .errors import ConversionError, describe
from .format import atomic_write

__all__ = ["EnergyModel", "ENERGY_PRESETS", "LayerStats", "Results", "BatchResult", "RunPlan", "COUNTERS"]

#: exact per-step counters every population reports (integers, summed over samples)
COUNTERS = ("spikes", "events", "sops")


#: the three 45 nm presets of methods.md section 5, now entries of :mod:`evsim.energy`'s registry
ENERGY_PRESETS = {name: _energy.get_energy_model(name) for name in ("45nm-fp32", "45nm-int32", "45nm-int8")}


def _default_energy() -> EnergyModel:
    return _energy.get_energy_model(_energy.DEFAULT_ENERGY_MODEL)


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
class BatchResult:
    """What one batch (or shard) of a run measured: exact integer counts, mergeable.

    Attributes
    ----------
    start, samples, T : int
        Index of the first sample in the data set, number of samples, time-steps.
    predictions : ndarray (samples, T) int64
        Predicted class per sample and step.
    correct : ndarray (T,) int64 or None
        Number of correct predictions per step (None without labels).
    layers : dict
        Population name -> counter name (:data:`COUNTERS`, possibly more) -> ``(T,)`` int64,
        summed over the samples.
    logits : ndarray (samples, F) float64
        Accumulated output after T steps.
    recorded : dict
        Per-neuron spike counts of the populations asked for with ``record``.
    """

    start: int
    samples: int
    T: int
    predictions: np.ndarray
    correct: np.ndarray | None
    layers: dict
    logits: np.ndarray
    recorded: dict = field(default_factory=dict)

    @property
    def stop(self) -> int:
        return self.start + self.samples

    @property
    def stats(self) -> dict:
        """Population -> ``(T, 3)`` int64 array of (spikes, events, SOPs) per step."""
        return {name: np.stack([c[k] for k in COUNTERS], axis=1) for name, c in self.layers.items()}

    @staticmethod
    def concat(parts: list["BatchResult"]) -> "BatchResult":
        """Contiguous batch results as one (sorted by ``start``; gaps and overlaps refused)."""
        parts = _contiguous(parts)
        first = parts[0]
        correct = None if first.correct is None else sum((p.correct for p in parts), np.zeros(first.T, np.int64))
        layers = {name: {c: sum((p.layers[name][c] for p in parts), np.zeros(first.T, np.int64))
                         for c in counters} for name, counters in first.layers.items()}
        recorded = {k: np.concatenate([p.recorded[k] for p in parts]) for k in first.recorded}
        return BatchResult(first.start, sum(p.samples for p in parts), first.T,
                           np.concatenate([p.predictions for p in parts]), correct, layers,
                           np.concatenate([p.logits for p in parts]), recorded)


def _contiguous(parts) -> list:
    parts = sorted(parts, key=lambda p: p.start)
    if not parts:
        raise ConversionError(describe("results", "at least one batch result", "none"))
    for a, b in zip(parts, parts[1:]):
        if b.start != a.stop or b.T != a.T or b.layers.keys() != a.layers.keys():
            raise ConversionError(describe("results", "contiguous batch results of one run",
                                           f"samples [{a.start}, {a.stop}) then [{b.start}, {b.stop})"))
    return parts


@dataclass
class RunPlan:
    """Everything a batch needs besides the network and the data, and what the report needs.

    Picklable: a worker process receives it with the network.
    """

    T: int
    batch_size: int
    precision: str
    samples: int
    layers: list  # [(population name, neurons)]
    first_layer_macs: int
    ann_macs: int
    energy: EnergyModel = field(default_factory=_default_energy)
    settings: dict = field(default_factory=dict)
    #: every energy model to report (the first is ``energy``) and what the counts need of the network
    energy_models: tuple = ()
    costs: _energy.NetworkCosts | None = None

    def shards(self, size: int | None = None) -> list[tuple[int, int]]:
        """Sample ranges ``[start, stop)`` of at most ``size`` (default: the batch size)."""
        size = size or self.batch_size
        return [(start, min(start + size, self.samples)) for start in range(0, self.samples, size)]


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
        The first energy model (``energy_snn_pj`` / ``energy_ann_pj``); ``energy_models`` holds
        every model reported, ``costs`` what the energy counts need of the network.
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
    #: exact totals: population -> counter -> (T,) int64 summed over all samples
    counts: dict = field(default_factory=dict)
    correct: np.ndarray | None = None
    energy_models: tuple = ()
    costs: _energy.NetworkCosts | None = None

    @classmethod
    def reduce(cls, partials, plan: RunPlan) -> "Results":
        """Merge batch results into the run's results, exactly and in any order.

        Every figure is a sum of exact integer counts (divided once at the end), so the
        result does not depend on how the data set was split or in which order the parts
        finished.  Partial results must cover samples ``[0, plan.samples)`` exactly.
        """
        whole = BatchResult.concat(list(partials))
        if whole.start != 0 or whole.samples != plan.samples:
            raise ConversionError(describe("results", f"batch results covering samples [0, {plan.samples})",
                                           f"[{whole.start}, {whole.stop})"))
        n, T = plan.samples, plan.T
        layers = []
        for name, neurons in plan.layers:
            c = whole.layers[name]
            spikes = int(c["spikes"].sum())
            layers.append(LayerStats(name, neurons, spikes / n, int(c["events"].sum()) / n, int(c["sops"].sum()) / n,
                                     spikes / (n * neurons * T), (c["spikes"] / n).tolist(),
                                     (c["sops"] / n).tolist()))
        accuracy = None if whole.correct is None else (whole.correct / n).tolist()
        return cls(T, n, accuracy, whole.predictions, layers, plan.first_layer_macs, plan.ann_macs, plan.energy,
                   dict(plan.settings), {}, None, whole.layers, whole.correct,
                   plan.energy_models or (plan.energy,), plan.costs)

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
    def energy_counts(self) -> "_energy.CountTable":
        """Exact operation counts of the run (:func:`evsim.energy.count_table`)."""
        if self.costs is None:
            raise ConversionError(describe("results", "the network's costs (evsim.energy.NetworkCosts)", "none",
                                           "plan the run with evsim.engine.plan_run"))
        return _energy.count_table(self.counts, self.costs, self.T, self.samples)

    @property
    def energy_pj(self) -> dict:
        """``totals.energy_pj`` of the report: the first model's snn / ann / snn_per_step, and ``by_model``."""
        return _energy.energy_report(self.energy_counts, self.energy_models or (self.energy,))

    @property
    def energy_snn_pj(self) -> float:
        return _energy.estimate(self.energy_counts, self.energy)["snn"]

    @property
    def energy_ann_pj(self) -> float | None:
        """E_ANN on the first model (None if it has no MAC energy)."""
        return _energy.estimate(self.energy_counts, self.energy)["ann"]

    def energy_snn_at(self, t: int) -> float:
        """E_SNN per sample had the run stopped after ``t`` steps."""
        return _energy.estimate(self.energy_counts, self.energy, steps=t)["snn"]

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
            "energy_pj": self.energy_pj,
            "counts": self.energy_counts.to_dict(),
        }
        return {
            "evsim_report": 1,
            "settings": self.settings,
            "samples": self.samples,
            "T": self.T,
            "accuracy": self.accuracy,
            "accuracy_unit": "fraction",  # accuracy and ann_accuracy lie in [0, 1]
            "ann_accuracy": self.ann_accuracy,
            "layers": [asdict(layer) for layer in self.layers],
            "totals": totals,
            "energy_model": self.energy.to_dict(),
            "timing": self.timing,
        }

    def save(self, path) -> None:
        """Write the JSON report atomically."""
        text = json.dumps(self.to_dict(), indent=1, default=json_default)
        atomic_write(path, lambda tmp: tmp.write_text(text + "\n"))


def json_default(value):
    """``json.dumps(..., default=json_default)``: NumPy scalars and arrays as Python values, anything
    else as its ``str`` (reports and metadata must never fail to serialise)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
