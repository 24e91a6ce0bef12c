"""Energy estimates: device models as data, exact operation counts, counts × energies.

An energy estimate has two halves that evsim keeps apart:

* **counts** (:class:`CountTable`) — exact integer totals of what the simulated SNN did, per
  layer and per time-step, summed over the simulated samples: synaptic operations, spikes,
  events, neuron updates, analog MACs of the input layer, and memory accesses derived from
  those (weights read, membrane state read and written, event records written and read); plus
  what the ANN does for one sample.  Counts come from the engine's counters and the network,
  never from an energy model.
* **energy models** (:class:`EnergyModel`) — per-operation energies in picojoules with the
  ``source`` they come from.  A model prices any subset of the terms; a term it does not price
  is reported as *unpriced*, never guessed.

:func:`estimate` multiplies the two: every term of the breakdown is exactly
``(count / samples) × energy per operation`` (per sample), and E_SNN is the sum of the terms.
The definitions are in ``docs/usage.md`` (section "Energy").
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from .errors import DataError, describe

__all__ = [
    "EnergyModel", "register_energy_model", "get_energy_model", "available_energy_models",
    "load_energy_model", "DEFAULT_ENERGY_MODEL", "CountTable", "count_table", "counts_from",
    "estimate", "unit_energies", "NetworkCosts", "network_costs", "register_neuron_cost", "SNN_TERMS",
    "ANN_TERMS", "SNN_COUNTERS", "ANN_COUNTERS", "INPUT_ROW", "resolve_models", "energy_report", "summary_lines",
]

#: name of the model behind ``totals.energy_pj.snn`` / ``ann`` in reports (methods.md section 5)
DEFAULT_ENERGY_MODEL = "45nm-fp32"

#: per-operation energy fields of :class:`EnergyModel` (pJ), in breakdown order
_ENERGY_FIELDS = ("synop_pj", "mac_pj", "spike_pj", "event_pj", "neuron_update_pj", "mem_read_pj", "mem_write_pj")
#: integer size fields of :class:`EnergyModel` (bytes)
_SIZE_FIELDS = ("mem_word_bytes", "value_bytes", "event_bytes")


@dataclass(frozen=True)
class EnergyModel:
    """Per-operation energies of one device, in picojoules, and where they come from.

    Every energy is optional: ``None`` means the source gives no figure for that operation,
    and :func:`estimate` then reports the term as unpriced instead of charging it.

    Attributes
    ----------
    name : str
        Registry name (no whitespace; ``"all"`` is reserved for the CLI).
    source : str
        Where every number comes from (publication, table, software and file). Required.
    synop_pj : float, optional
        One synaptic operation: one accumulate of a weight into a membrane potential (an AC).
    mac_pj : float, optional
        One multiply-accumulate: the analog input layer of the SNN (every step) and every MAC of the ANN.
    spike_pj : float, optional
        One spike sent (a GN output of count k is k spikes, as on binary-spike hardware).
    event_pj : float, optional
        One event sent (a non-zero output of any count: one message on graded-spike hardware).
    neuron_update_pj : float, optional
        One neuron update (every neuron, every step; a GN updates its τ members).
    mem_read_pj, mem_write_pj : float, optional
        One memory read / write of ``mem_word_bytes`` bytes; charged per byte moved, i.e.
        bytes × ``mem_read_pj / mem_word_bytes``.
    mem_word_bytes : int
        Width of the access the memory energies are quoted for (1: the energies are per byte).
    value_bytes : int
        Bytes of one stored value: weight, membrane potential, activation (default 4, fp32).
    event_bytes : int
        Bytes of one event record (default 4: a 32-bit neuron address).
    notes : str
        Anything a reader must know to use the numbers (what is left out, lower bounds).
    """

    name: str
    source: str
    synop_pj: float | None = None
    mac_pj: float | None = None
    spike_pj: float | None = None
    event_pj: float | None = None
    neuron_update_pj: float | None = None
    mem_read_pj: float | None = None
    mem_write_pj: float | None = None
    mem_word_bytes: int = 1
    value_bytes: int = 4
    event_bytes: int = 4
    notes: str = ""

    def __post_init__(self):
        where = f"energy model {self.name!r}"
        if not isinstance(self.name, str) or not self.name or any(c.isspace() for c in self.name) \
                or self.name == "all":
            raise DataError(describe("energy model name", "a non-empty name without whitespace, not 'all'",
                                     repr(self.name)))
        if not isinstance(self.source, str) or not self.source.strip():
            raise DataError(describe(where, "a 'source' saying where its numbers come from", repr(self.source),
                                     "cite the publication, table or software the energies are taken from"))
        for name in _ENERGY_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise DataError(describe(f"{where}, {name}", "a number of picojoules or nothing",
                                         f"{type(value).__name__} {value!r}"))
            if not math.isfinite(value) or value < 0:
                raise DataError(describe(f"{where}, {name}", "a finite energy >= 0 pJ", repr(value),
                                         "leave a term out when its energy is not known"))
            object.__setattr__(self, name, float(value))
        if all(getattr(self, name) is None for name in _ENERGY_FIELDS):
            raise DataError(describe(where, "at least one per-operation energy (" + ", ".join(_ENERGY_FIELDS) + ")",
                                     "none"))
        for name in _SIZE_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise DataError(describe(f"{where}, {name}", "an integer number of bytes >= 1", repr(value)))
            object.__setattr__(self, name, int(value))
        if not isinstance(self.notes, str):
            raise DataError(describe(f"{where}, notes", "a string", type(self.notes).__name__))

    # names kept from the first energy model (E_MAC / E_AC of methods.md section 5)
    @property
    def e_mac_pj(self) -> float | None:
        """E_MAC (same as ``mac_pj``)."""
        return self.mac_pj

    @property
    def e_ac_pj(self) -> float | None:
        """E_AC (same as ``synop_pj``)."""
        return self.synop_pj

    @classmethod
    def preset(cls, name: str) -> "EnergyModel":
        """The registered model called ``name`` (see :func:`get_energy_model`)."""
        return get_energy_model(name)

    def to_dict(self) -> dict:
        """Every field, plus ``e_mac_pj`` / ``e_ac_pj`` (the names reports have always carried)."""
        out = asdict(self)
        out["e_mac_pj"], out["e_ac_pj"] = self.mac_pj, self.synop_pj
        return out


# --------------------------------------------------------------------------- the registry
_REGISTRY: dict[str, EnergyModel] = {}


def register_energy_model(name: str, *, source: str, replace: bool = False, **energies) -> EnergyModel:
    """Add a device model to the registry (``evsim run --energy NAME`` and reports use it).

    Parameters
    ----------
    name : str
        Registry name.
    source : str
        Where the numbers come from; required (a model without a source is refused).
    replace : bool
        Allow replacing a model of the same name (otherwise a duplicate name is refused).
    **energies
        Any of the :class:`EnergyModel` fields: ``synop_pj``, ``mac_pj``, ``spike_pj``,
        ``event_pj``, ``neuron_update_pj``, ``mem_read_pj``, ``mem_write_pj`` (pJ, finite, >= 0),
        ``mem_word_bytes``, ``value_bytes``, ``event_bytes``, ``notes``.

    Returns
    -------
    EnergyModel

    Raises
    ------
    DataError
        Missing source, a negative / NaN / infinite energy, an unknown field, no energy at all,
        or a duplicate name without ``replace=True``.
    """
    known = {f.name for f in fields(EnergyModel)} - {"name", "source"}
    unknown = sorted(set(energies) - known)
    if unknown:
        raise DataError(describe(f"energy model {name!r}", "fields among " + ", ".join(sorted(known)),
                                 ", ".join(unknown)))
    model = EnergyModel(name, source, **energies)
    if name in _REGISTRY and not replace:
        raise DataError(describe(f"energy model {name!r}", "a name not registered yet", "a registered name",
                                 "choose another name or pass replace=True"))
    _REGISTRY[name] = model
    return model


def get_energy_model(name: str) -> EnergyModel:
    """The registered model called ``name``.

    Raises
    ------
    DataError
        No model of that name.
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise DataError(describe("energy model", "one of " + ", ".join(_REGISTRY), repr(name),
                                 "register it with evsim.register_energy_model or load it from a file "
                                 "(--energy-model FILE)")) from None


def available_energy_models() -> list[EnergyModel]:
    """Every registered model, presets first, in registration order."""
    return list(_REGISTRY.values())


def load_energy_model(path) -> EnergyModel:
    """Read one energy model from a JSON or TOML file (not registered; see :func:`register_energy_model`).

    The file holds one table/object whose keys are the :class:`EnergyModel` fields, e.g.::

        name = "my-chip"
        source = "Doe et al., JSSC 2030, Table 3 (measured, 0.8 V)"
        synop_pj = 2.5
        neuron_update_pj = 10.0

    TOML needs Python 3.11 or later (``tomllib``); on 3.10 use JSON.

    Raises
    ------
    DataError
        Unreadable file, unknown format or fields, or an invalid model.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(describe(str(path), "a readable energy-model file", f"unreadable ({exc})")) from None
    if suffix == ".json":
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(describe(str(path), "a JSON energy model", f"invalid JSON ({exc})")) from None
    elif suffix == ".toml":
        try:
            import tomllib
        except ImportError:
            raise DataError(describe(str(path), "a JSON energy model on this Python",
                                     "TOML, which needs Python 3.11+ (tomllib)",
                                     "write the model as JSON (same keys) or use Python 3.11+")) from None
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise DataError(describe(str(path), "a TOML energy model", f"invalid TOML ({exc})")) from None
    else:
        raise DataError(describe(str(path), "an energy-model file ending in .json or .toml", repr(suffix or "none")))
    if not isinstance(data, dict):
        raise DataError(describe(str(path), "one object of energy-model fields", type(data).__name__))
    known = [f.name for f in fields(EnergyModel)]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise DataError(describe(str(path), "energy-model fields among " + ", ".join(known), ", ".join(unknown)))
    for key in ("name", "source"):
        if key not in data:
            raise DataError(describe(str(path), f"a {key!r} field", "none"))
    try:
        return EnergyModel(**data)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None


# --------------------------------------------------------------------------- presets
_HOROWITZ = "Horowitz, ISSCC 2014: 45 nm CMOS"
_HOROWITZ_MEM = ("Horowitz, 'Computing's energy problem (and what we can do about it)', ISSCC 2014, "
                 "rough energy costs in 45 nm at 0.9 V: fp32 mult 3.7 pJ + add 0.9 pJ (MAC 4.6 pJ, AC 0.9 pJ); "
                 "memory, 64-bit access: {what}")
_KERAS_SPIKING = ("keras-spiking ModelEnergy.devices[{device!r}] (nengo/keras-spiking, keras_spiking/model_energy.py: "
                  "energy_per_synop={synop} J, energy_per_neuron={neuron} J), citing {cite}")
_DEGNAN = ("Degnan, Marr and Hasler, 'Assessing trends in performance per watt for signal processing "
           "applications', IEEE TVLSI 24(1):58-66, 2015")
_HOPPNER = ("Hoeppner et al., 'Dynamic power management for neuromorphic many-core systems', "
            "IEEE TCAS-I 66(8):2973-2986, 2019, arXiv:1903.08941")
_DAVIES = ("Davies et al., 'Loihi: a neuromorphic manycore processor with on-chip learning', "
           "IEEE Micro 38(1):82-99, 2018")


def _presets() -> None:
    reg = register_energy_model
    # the three presets of methods.md section 5 (names, numbers and sources unchanged)
    reg("45nm-fp32", mac_pj=4.6, synop_pj=0.9, source=f"{_HOROWITZ}, fp32 mult 3.7 pJ + add 0.9 pJ")
    reg("45nm-int32", mac_pj=3.2, synop_pj=0.1, source=f"{_HOROWITZ}, int32 mult 3.1 pJ + add 0.1 pJ")
    reg("45nm-int8", mac_pj=0.23, synop_pj=0.03, source=f"{_HOROWITZ}, int8 mult 0.2 pJ + add 0.03 pJ")
    # 45 nm fp32 arithmetic plus memory reads at one level of the hierarchy
    no_write = ("Horowitz gives read energies only: memory writes are not charged (the memory term is a lower "
                "bound). A 64-bit read is charged per byte moved (8 B per access), fp32 values (4 B), 32-bit "
                "event records.")
    for name, read_pj, what in (("45nm-fp32-sram8k", 10.0, "8 kB SRAM read 10 pJ"),
                                ("45nm-fp32-sram32k", 20.0, "32 kB SRAM read 20 pJ"),
                                ("45nm-fp32-sram1m", 100.0, "1 MB SRAM read 100 pJ")):
        reg(name, mac_pj=4.6, synop_pj=0.9, mem_read_pj=read_pj, mem_word_bytes=8,
            source=_HOROWITZ_MEM.format(what=what), notes=no_write)
    reg("45nm-fp32-dram", mac_pj=4.6, synop_pj=0.9, mem_read_pj=1300.0, mem_word_bytes=8,
        source=_HOROWITZ_MEM.format(what="DRAM 1.3-2.6 nJ (the low end, 1.3 nJ, is used)"),
        notes=no_write + " DRAM: the low end of Horowitz's 1.3-2.6 nJ range, so a lower bound.")
    # Loihi, from its paper's own table
    reg("loihi", synop_pj=23.6, spike_pj=1.7, neuron_update_pj=52.0,
        source=(f"{_DAVIES}, Table 2 (14 nm, pre-silicon simulation): energy per synaptic spike "
                "op (min) 23.6 pJ; within-tile spike energy 1.7 pJ; energy per neuron update 52 pJ inactive / "
                "81 pJ active (52 pJ used)"),
        notes=("Every term is the table's lower figure: no tile hops (3.0 pJ E-W / 4.0 pJ N-S per hop, placement-"
               "dependent), inactive neuron updates, minimum synaptic op: E_SNN is a lower bound. Loihi has no MAC: "
               "the analog input layer and the ANN are unpriced."))
    # keras-spiking's device table, as written there in joules, here in pJ
    for device, synop, neuron, mac, joules, cite in (
            ("cpu", 8600.0, 8600.0, True, ("8.6e-9", "8.6e-9"), f"{_DEGNAN} (Intel i7-4960X)"),
            ("gpu", 300.0, 300.0, True, ("0.3e-9", "0.3e-9"), f"{_DEGNAN} (Nvidia GTX Titan Black)"),
            ("arm", 900.0, 900.0, True, ("0.9e-9", "0.9e-9"), f"{_DEGNAN} (ARM Cortex-A)"),
            ("loihi", 27.1, 81.0, False, ("(23.6 + 3.5) * 1e-12", "81e-12"), _DAVIES),
            ("spinnaker", 13300.0, 26000.0, False, ("13.3e-9", "26e-9"), _HOPPNER),
            ("spinnaker2", 450.0, 2190.0, False, ("450e-12", "2.19e-9"), _HOPPNER)):
        notes = ("keras-spiking assumes each synop / neuron update is one MAC on this non-spiking device, so MACs "
                 "are charged at the same energy." if mac else
                 "A spiking device: keras-spiking gives no MAC energy, so the analog input layer and the ANN are "
                 "unpriced.")
        if device == "loihi":
            notes += (" keras-spiking adds 3.5 pJ to Davies' 23.6 pJ per synop (the mean of Table 2's 3.0 / 4.0 pJ "
                      "tile-hop energies) and uses the active neuron update, 81 pJ.")
        reg(f"keras-spiking-{device}", synop_pj=synop, neuron_update_pj=neuron, mac_pj=synop if mac else None,
            source=_KERAS_SPIKING.format(device=device, synop=joules[0], neuron=joules[1], cite=cite), notes=notes)


_presets()


# --------------------------------------------------------------------------- neuron costs
@dataclass(frozen=True)
class _NeuronCost:
    members: Callable[[object], int]  # population -> member neurons updated per neuron per step
    state_values: int  # stored values per neuron (membrane potential, counters)


def _tau(population) -> int:
    params = getattr(population, "params", None)
    if isinstance(params, Mapping) and "tau" in params:
        return int(params["tau"])
    return int(getattr(population, "tau", 1))


#: neuron model -> cost; models not listed: one member, one state value
_NEURON_COSTS: dict[str, _NeuronCost] = {
    "if": _NeuronCost(lambda p: 1, 1),
    # seed 002, eqs. 8-11: each of the tau members charges, fires and resets every step; they share
    # one potential (methods.md 2.2), so one value is stored
    "gn": _NeuronCost(_tau, 1),
    # the membrane potential and the net spike count N (methods.md 2.3)
    "signed_if": _NeuronCost(lambda p: 1, 2),
}


def register_neuron_cost(model: str, members: Callable[[object], int] | int = 1, state_values: int = 1) -> None:
    """Say how a (plugin) neuron model counts in neuron updates and membrane traffic.

    Parameters
    ----------
    model : str
        Neuron model name (as in ``evsim.neurons``).
    members : int or callable
        Member neurons updated per neuron per step, or ``f(population) -> int``.
    state_values : int
        Values stored per neuron (read and written at every update).
    """
    if not callable(members):
        if isinstance(members, bool) or not isinstance(members, (int, np.integer)) or members < 1:
            raise DataError(describe(f"neuron cost of {model!r}, members", "an integer >= 1 or a callable",
                                     repr(members)))
        n = int(members)
        members = lambda p: n  # noqa: E731
    if isinstance(state_values, bool) or not isinstance(state_values, (int, np.integer)) or state_values < 1:
        raise DataError(describe(f"neuron cost of {model!r}, state_values", "an integer >= 1", repr(state_values)))
    _NEURON_COSTS[model] = _NeuronCost(members, int(state_values))


def _cost(population) -> tuple[int, int]:
    cost = _NEURON_COSTS.get(population.model, _NeuronCost(lambda p: 1, 1))
    return int(cost.members(population)), cost.state_values


# --------------------------------------------------------------------------- counts
#: per-layer counters of the SNN (each a (T,) int64 total over the samples)
SNN_COUNTERS = ("synops", "spikes", "events", "neuron_updates", "analog_macs", "weight_reads", "input_reads",
                "state_reads", "state_writes", "event_writes", "event_reads")
#: counters of the ANN, per sample
ANN_COUNTERS = ("macs", "neuron_updates", "weight_reads", "activation_reads", "activation_writes")
#: the analog input layer's row in :attr:`CountTable.layers`
INPUT_ROW = "input"


@dataclass
class CountTable:
    """Exact operation counts of one run.

    Attributes
    ----------
    T, samples : int
    layers : dict
        Row name -> counter -> ``(T,)`` int64, summed over the samples. One row per neuron
        population (name of the activation it replaced) and, when the input layer has MACs,
        the row ``"input"`` (the analog layer: ``analog_macs`` and the reads they need).
    ann : dict
        Counter -> int, the ANN on **one** sample.
    neurons : dict
        Population -> neurons.
    """

    T: int
    samples: int
    layers: dict[str, dict[str, np.ndarray]]
    ann: dict[str, int]
    neurons: dict[str, int] = field(default_factory=dict)

    def total(self, counter: str, layers=None, steps: int | None = None) -> int:
        """Exact total of ``counter`` over the samples, the given rows (default all) and the first ``steps``."""
        if layers is None:
            rows = self.layers
        else:
            missing = [k for k in layers if k not in self.layers]
            if missing:
                raise DataError(describe("counts", "rows among " + ", ".join(self.layers), ", ".join(missing)))
            rows = {k: self.layers[k] for k in layers}
        t = self.T if steps is None else steps
        return int(sum(int(row[counter][:t].sum()) for row in rows.values() if counter in row))

    def per_sample(self, counter: str, layers=None, steps: int | None = None) -> float:
        """:meth:`total` divided by the number of samples."""
        return self.total(counter, layers, steps) / self.samples

    def to_dict(self) -> dict:
        """Per sample: every counter per row (total and per step), and the ANN's counters."""
        n = self.samples
        return {"layers": {name: {c: {"total": int(v.sum()) / n, "per_step": (v / n).tolist()} for c, v in row.items()}
                           for name, row in self.layers.items()},
                "ann": dict(self.ann)}


@dataclass(frozen=True)
class NetworkCosts:
    """What the counts need from a network, picklable and small (a run plan carries it).

    Attributes
    ----------
    populations : tuple of (name, neurons, members, state_values)
        Per population: neurons, member neurons updated per neuron per step, stored values per neuron.
    input_macs : int
        MACs of the analog input layer per sample and step.
    ann_macs : int
        MACs of the whole ANN per sample.
    outputs : int
        Output values per sample.
    """

    populations: tuple
    input_macs: int
    ann_macs: int
    outputs: int


def network_costs(network) -> NetworkCosts:
    """:class:`NetworkCosts` of a compiled :class:`~evsim.compile.Network`."""
    pops = tuple((p.name, int(p.size), *_cost(p)) for p in network.populations)
    return NetworkCosts(pops, int(network.input_macs), int(network.ann_macs), int(np.prod(network.output_shape)))


def count_table(layers: Mapping[str, Mapping[str, np.ndarray]], network, T: int, samples: int) -> CountTable:
    """Operation counts of a run, from the engine's counters and the network.

    Parameters
    ----------
    layers : mapping
        Population -> counter -> ``(T,)`` int totals over the samples, with at least
        ``spikes``, ``events`` and ``sops`` (``BatchResult.layers``, ``Results.counts``).
    network : evsim.compile.Network or NetworkCosts
        Gives neurons, neuron models, the analog layer's MACs and the ANN's MACs.
    T, samples : int

    Returns
    -------
    CountTable

    Notes
    -----
    Per population and step, over the samples: ``synops`` = the engine's SOPs; ``spikes`` and
    ``events`` as counted; ``neuron_updates`` = members × neurons × samples (members = τ for GN,
    else 1); ``weight_reads`` = SOPs (one weight per synaptic operation); ``state_reads`` =
    ``state_writes`` = state values × neurons × samples (each update reads and writes the
    membrane state: 1 value, 2 for signed IF); ``event_writes`` = ``event_reads`` = events (one
    record written when emitted, read once by the router). The ``"input"`` row: ``analog_macs``
    = first-layer MACs × samples at every step, each reading one weight and one input value.
    The ANN (one sample): ``macs``; ``neuron_updates`` = neurons; ``weight_reads`` =
    ``activation_reads`` = MACs; ``activation_writes`` = neurons + outputs.
    """
    costs = network if isinstance(network, NetworkCosts) else network_costs(network)
    if not isinstance(T, (int, np.integer)) or T < 1:
        raise DataError(describe("count_table", "T an integer >= 1", repr(T)))
    if not isinstance(samples, (int, np.integer)) or samples < 1:
        raise DataError(describe("count_table", "samples an integer >= 1", repr(samples)))
    T, samples = int(T), int(samples)
    rows: dict[str, dict[str, np.ndarray]] = {}
    neurons = {}
    for name, size, members, state_values in costs.populations:
        counters = layers.get(name)
        if counters is None:
            raise DataError(describe("count_table", f"counters of population {name!r}", "none"))
        got = {}
        for key in ("sops", "spikes", "events"):
            value = np.asarray(counters[key] if key in counters else (), dtype=np.int64)
            if value.shape != (T,):
                raise DataError(describe(f"count_table, population {name!r}, {key}", f"an array of shape ({T},)",
                                         f"shape {value.shape}"))
            got[key] = value
        neurons[name] = size
        per_step = lambda n: np.full(T, n, np.int64)  # noqa: E731
        rows[name] = {
            "synops": got["sops"].copy(), "spikes": got["spikes"].copy(), "events": got["events"].copy(),
            "neuron_updates": per_step(members * size * samples),
            "weight_reads": got["sops"].copy(),
            "state_reads": per_step(state_values * size * samples),
            "state_writes": per_step(state_values * size * samples),
            "event_writes": got["events"].copy(), "event_reads": got["events"].copy(),
        }
    analog = costs.input_macs
    if analog:  # the analog input layer comes first
        macs = np.full(T, analog * samples, np.int64)
        rows = {INPUT_ROW: {"analog_macs": macs, "weight_reads": macs.copy(), "input_reads": macs.copy()}, **rows}
    n_neurons = sum(neurons.values())
    outputs = costs.outputs
    ann_macs = costs.ann_macs
    ann = {"macs": ann_macs, "neuron_updates": n_neurons, "weight_reads": ann_macs, "activation_reads": ann_macs,
           "activation_writes": n_neurons + outputs}
    return CountTable(T, samples, rows, ann, neurons)


def counts_from(result, network) -> CountTable:
    """:func:`count_table` of a ``BatchResult`` (its ``layers``) or ``Results`` (its ``counts``)."""
    layers = result.counts if isinstance(getattr(result, "counts", None), dict) else result.layers
    return count_table(layers, network, result.T, result.samples)


# --------------------------------------------------------------------------- estimate
#: breakdown terms of E_SNN and of E_ANN, in order
SNN_TERMS = ("synops", "macs", "spikes", "events", "neuron_updates", "memory_read", "memory_write")
ANN_TERMS = ("macs", "neuron_updates", "memory_read", "memory_write")


def _snn_quantities(counts: CountTable, model: EnergyModel, layers, steps) -> dict[str, float]:
    """Per-sample count of every SNN term (bytes for the memory terms)."""
    c = lambda name: counts.total(name, layers, steps)  # noqa: E731
    read = (c("weight_reads") + c("input_reads") + c("state_reads")) * model.value_bytes \
        + c("event_reads") * model.event_bytes
    written = c("state_writes") * model.value_bytes + c("event_writes") * model.event_bytes
    n = counts.samples
    return {"synops": c("synops") / n, "macs": c("analog_macs") / n, "spikes": c("spikes") / n,
            "events": c("events") / n, "neuron_updates": c("neuron_updates") / n,
            "memory_read": read / n, "memory_write": written / n}


def _ann_quantities(counts: CountTable, model: EnergyModel) -> dict[str, float]:
    a = counts.ann
    return {"macs": float(a["macs"]), "neuron_updates": float(a["neuron_updates"]),
            "memory_read": float((a["weight_reads"] + a["activation_reads"]) * model.value_bytes),
            "memory_write": float(a["activation_writes"] * model.value_bytes)}


def unit_energies(model: EnergyModel) -> dict[str, float | None]:
    """Energy of one unit of each term in pJ: per operation, per byte for the memory terms."""
    per_byte = lambda e: None if e is None else e / model.mem_word_bytes  # noqa: E731
    return {"synops": model.synop_pj, "macs": model.mac_pj, "spikes": model.spike_pj, "events": model.event_pj,
            "neuron_updates": model.neuron_update_pj, "memory_read": per_byte(model.mem_read_pj),
            "memory_write": per_byte(model.mem_write_pj)}


def _price(quantities: dict[str, float], unit: dict[str, float | None]) -> tuple[dict, list]:
    breakdown, unpriced = {}, []
    for term, quantity in quantities.items():
        if unit[term] is not None:
            breakdown[term] = quantity * unit[term]
        elif quantity:
            unpriced.append(term)
    return breakdown, unpriced


def estimate(counts: CountTable, model: EnergyModel | str, layers=None, steps: int | None = None) -> dict:
    """Energy per sample of the SNN run and of the ANN on one device model.

    Parameters
    ----------
    counts : CountTable
    model : EnergyModel or str
        A model or a registered name.
    layers : iterable of str, optional
        Rows of ``counts`` to include (default all; the ANN is always whole).
    steps : int, optional
        Only the first ``steps`` time-steps (E_SNN had the run stopped there).

    Returns
    -------
    dict
        ``model`` (name), ``snn`` (pJ per sample: the sum of ``breakdown``), ``breakdown``
        (term -> pJ: per-sample count × energy per unit, exactly), ``counts`` (term -> per-sample
        count; bytes for memory terms), ``unpriced`` (terms with a non-zero count the model has no
        energy for: not in ``snn``), and the same for the ANN: ``ann`` (None when the model has
        no MAC energy), ``ann_breakdown``, ``ann_counts``, ``ann_unpriced``; ``ratio`` = snn / ann
        (None without ann).
    """
    if isinstance(model, str):
        model = get_energy_model(model)
    if steps is not None and not (isinstance(steps, (int, np.integer)) and 0 <= steps <= counts.T):
        raise DataError(describe("estimate", f"steps an integer in 0..{counts.T}", repr(steps)))
    unit = unit_energies(model)
    snn_q = _snn_quantities(counts, model, layers, steps)
    ann_q = _ann_quantities(counts, model)
    snn_b, snn_missing = _price(snn_q, unit)
    ann_b, ann_missing = _price(ann_q, unit)
    snn = math.fsum(snn_b.values())
    # without a MAC energy the ANN's arithmetic has no price at all
    ann = None if model.mac_pj is None else math.fsum(ann_b.values())
    return {"model": model.name, "snn": snn, "ann": ann, "ratio": None if not ann else snn / ann,
            "breakdown": snn_b, "counts": snn_q, "unpriced": snn_missing,
            "ann_breakdown": ann_b, "ann_counts": ann_q, "ann_unpriced": ann_missing}


# --------------------------------------------------------------------------- report and text
def resolve_models(models) -> list[EnergyModel]:
    """Models from names / ``"all"`` / :class:`EnergyModel` objects, duplicates dropped, order kept.

    ``None`` or an empty sequence gives the default model.
    """
    if models is None or isinstance(models, (str, EnergyModel)):
        models = [] if models is None else [models]
    out: dict[str, EnergyModel] = {}
    for item in models:
        if isinstance(item, EnergyModel):
            out.setdefault(item.name, item)
        elif item == "all":
            for m in available_energy_models():
                out.setdefault(m.name, m)
        else:
            out.setdefault(item, get_energy_model(item))
    return list(out.values()) or [get_energy_model(DEFAULT_ENERGY_MODEL)]


def energy_report(counts: CountTable, models) -> dict:
    """The report's ``totals.energy_pj``: ``snn``, ``ann``, ``snn_per_step`` of the first model, and ``by_model``.

    ``by_model[name]`` = :func:`estimate` (without the repeated count fields) plus ``layers``
    (row -> term -> pJ per sample) and the model's ``source``.
    """
    models = resolve_models(models)
    by_model = {}
    for model in models:
        est = estimate(counts, model)
        est.pop("model")
        est["source"] = model.source
        est["layers"] = {row: estimate(counts, model, layers=[row])["breakdown"] for row in counts.layers}
        by_model[model.name] = est
    first = by_model[models[0].name]
    return {"snn": first["snn"], "ann": first["ann"],
            "snn_per_step": [estimate(counts, models[0], steps=t)["snn"] for t in range(1, counts.T + 1)],
            "model": models[0].name, "by_model": by_model}


_TERM_LABELS = {"synops": "synops", "macs": "MACs", "spikes": "spikes", "events": "events",
                "neuron_updates": "neuron updates", "memory_read": "memory read", "memory_write": "memory write"}


def summary_lines(energy_pj: dict) -> list[str]:
    """Text lines, one block per model: E_SNN, E_ANN, ratio, breakdown shares, unpriced terms (in µJ)."""
    lines = []
    for name, est in energy_pj["by_model"].items():
        ann = "n/a (no MAC energy)" if est["ann"] is None else f"{est['ann'] / 1e6:.4g} uJ"
        ratio = "" if est["ratio"] is None else f"  (SNN/ANN {est['ratio']:.3g}x)"
        lines.append(f"{name}: E_SNN {est['snn'] / 1e6:.4g} uJ, E_ANN {ann}{ratio}")
        total = est["snn"] or 1.0
        parts = [f"{_TERM_LABELS[t]} {v / 1e6:.4g} uJ ({100 * v / total:.0f} %)" for t, v in est["breakdown"].items()]
        lines.append("    " + ", ".join(parts))
        if est["unpriced"]:
            lines.append("    not priced by this model: " + ", ".join(_TERM_LABELS[t] for t in est["unpriced"]))
    return lines
