"""evsim's own fuzz suite: mutated model and data files through ``evsim.load`` and the CLI.

Every file runs in a child process with a timeout and an address-space limit
(:mod:`harness`); the outcome is classified as success, clean refusal, or one of the
defects ``traceback`` / ``signal`` / ``timeout``, and no defect is allowed.

* Default ``pytest``: a bounded, derandomized slice (same cases every run; well under two
  minutes on two cores once Numba's cache is warm).
* ``pytest -m fuzz``: the long campaign, random cases; ``EVSIM_FUZZ_EXAMPLES`` (batches per
  test, default 200) and ``EVSIM_FUZZ_FINDINGS`` (a directory that receives a copy of every
  file that produced a defect, default: the test's tmp dir) tune it.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import corpus
import harness

CAMPAIGN = int(os.environ.get("EVSIM_FUZZ_EXAMPLES", "200"))
# CI: fixed cases, no shrinking (a failure names the file), no example database
CI = settings(derandomize=True, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
LONG = settings(deadline=None, database=None, max_examples=CAMPAIGN, phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck))


def _check(outcomes: list, where: Path) -> None:
    keep = Path(os.environ["EVSIM_FUZZ_FINDINGS"]) if os.environ.get("EVSIM_FUZZ_FINDINGS") else where / "findings"
    problems = harness.report(outcomes, keep)
    assert not problems, f"{harness.tally(outcomes)}; files kept in {keep}\n{problems}"


def _fresh(tmp_path_factory, name: str) -> Path:
    return tmp_path_factory.mktemp(name)


def _sub(directory: Path, name: str) -> Path:
    (directory / name).mkdir()
    return directory / name


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    """The valid base files the CLI runs against (a model per base, and a data file).

    Each base model is run once first, with a generous timeout: that compiles (or loads
    from Numba's cache) every kernel the mutated runs need, so their timeout measures evsim,
    not a cold JIT on a busy machine.
    """
    d = tmp_path_factory.mktemp("cli-base")
    models = {}
    for name, build in corpus.BASES.items():
        manifest, arrays = build()
        models[name] = corpus.write_model(d / f"{name}.npz", manifest, arrays)
    data = corpus.write_data(d / "data.npz", corpus.base_data())
    for model in models.values():
        warm = harness.run_cli(["run", model, "--data", data, "-T", 2, "--samples", 4], timeout=900)
        assert not warm.defect, f"{warm.outcome}: {warm.detail}"
    return models, data


# --------------------------------------------------------------------------- model files through evsim.load
def _structure(batch, tmp_path_factory):
    d = _fresh(tmp_path_factory, "structure")
    files = corpus.write_all(batch, d)
    _check(harness.run_api("model", files), d)


def _bytes(batch, tmp_path_factory):
    d = _fresh(tmp_path_factory, "bytes")
    files = corpus.write_all(batch, d)
    _check(harness.run_api("model", files), d)


def _data(batch, tmp_path_factory):
    d = _fresh(tmp_path_factory, "data")
    files = corpus.write_all(batch, d)
    _check(harness.run_api("data", files), d)


def _data_bytes(batch, tmp_path_factory):
    d = _fresh(tmp_path_factory, "data-bytes")
    files = corpus.write_all(batch, d)
    _check(harness.run_api("data", files), d)


def _aer(batch, tmp_path_factory):
    d = _fresh(tmp_path_factory, "aer")
    files = corpus.write_all(batch, d)
    _check(harness.run_api("aer", files), d)


@settings(CI, max_examples=4)
@given(batch=st.lists(corpus.model_cases, min_size=60, max_size=60))
def test_structure_mutations_are_refused_cleanly(batch, tmp_path_factory):
    _structure(batch, tmp_path_factory)


@settings(CI, max_examples=4)
@given(batch=st.lists(corpus.byte_cases, min_size=80, max_size=80))
def test_byte_mutations_are_refused_cleanly(batch, tmp_path_factory):
    _bytes(batch, tmp_path_factory)


@settings(CI, max_examples=3)
@given(batch=st.lists(corpus.data_cases, min_size=50, max_size=50))
def test_data_mutations_are_refused_cleanly(batch, tmp_path_factory):
    _data(batch, tmp_path_factory)


@settings(CI, max_examples=2)
@given(batch=st.lists(corpus.data_byte_cases, min_size=60, max_size=60))
def test_data_byte_mutations_are_refused_cleanly(batch, tmp_path_factory):
    _data_bytes(batch, tmp_path_factory)


@settings(CI, max_examples=2)
@given(batch=st.lists(corpus.aer_cases, min_size=50, max_size=50))
def test_aer_mutations_are_refused_cleanly(batch, tmp_path_factory):
    _aer(batch, tmp_path_factory)


@pytest.mark.fuzz
@LONG
@given(batch=st.lists(corpus.aer_cases, min_size=50, max_size=50))
def test_campaign_aer(batch, tmp_path_factory):
    _aer(batch, tmp_path_factory)


# --------------------------------------------------------------------------- the CLI
def _cli(models, data, structure, mild, data_batch, byte_batch, tmp_path_factory, runs: int, inspects: int):
    d = _fresh(tmp_path_factory, "cli")
    files = corpus.write_all(structure, _sub(d, "m")) + corpus.write_all(mild, _sub(d, "mild"))
    loaded = harness.run_api("model", files)
    _check(loaded, d)
    # the files that load go deepest: run them; inspect a mix
    deep = [Path(o.path) for o in loaded if o.outcome == "ok"][:runs]
    shallow = [Path(o.path) for o in loaded if o.outcome != "ok"][:inspects]
    byte_files = corpus.write_all(byte_batch, _sub(d, "b"))[:inspects]
    data_files = corpus.write_all(data_batch, _sub(d, "d"))[:runs]
    print(f"CLI: {len(deep)} mutated models run")
    outcomes = [harness.run_cli(["inspect", f]) for f in shallow + byte_files + deep]
    outcomes += [harness.run_cli(["run", f, "--data", data, "-T", 2, "--samples", 4]) for f in deep]
    outcomes += [harness.run_cli(["run", models["ann"], "--data", f, "-T", 2, "--samples", 4]) for f in data_files]
    _check(outcomes, d)


@settings(CI, max_examples=2)  # hypothesis's first example is its simplest; the second is varied
@given(structure=st.lists(corpus.model_cases, min_size=30, max_size=30),
       mild=st.lists(corpus.mild_model_cases, min_size=8, max_size=8),
       data_batch=st.lists(corpus.data_cases, min_size=2, max_size=2),
       byte_batch=st.lists(corpus.byte_cases, min_size=2, max_size=2))
def test_cli_inspect_and_run_on_mutated_files(structure, mild, data_batch, byte_batch, cli_files, tmp_path_factory):
    models, data = cli_files
    _cli(models, data, structure, mild, data_batch, byte_batch, tmp_path_factory, runs=2, inspects=2)


# --------------------------------------------------------------------------- the long campaign (-m fuzz)
@pytest.mark.fuzz
@LONG
@given(batch=st.lists(corpus.model_cases, min_size=50, max_size=50))
def test_campaign_structure(batch, tmp_path_factory):
    _structure(batch, tmp_path_factory)


@pytest.mark.fuzz
@LONG
@given(batch=st.lists(corpus.byte_cases, min_size=50, max_size=50))
def test_campaign_bytes(batch, tmp_path_factory):
    _bytes(batch, tmp_path_factory)


@pytest.mark.fuzz
@LONG
@given(batch=st.lists(corpus.data_cases, min_size=50, max_size=50))
def test_campaign_data(batch, tmp_path_factory):
    _data(batch, tmp_path_factory)


@pytest.mark.fuzz
@LONG
@given(batch=st.lists(corpus.data_byte_cases, min_size=50, max_size=50))
def test_campaign_data_bytes(batch, tmp_path_factory):
    _data_bytes(batch, tmp_path_factory)


@pytest.mark.fuzz
@settings(LONG, max_examples=max(1, CAMPAIGN // 10))
@given(structure=st.lists(corpus.model_cases, min_size=60, max_size=60),
       mild=st.lists(corpus.mild_model_cases, min_size=30, max_size=30),
       data_batch=st.lists(corpus.data_cases, min_size=10, max_size=10),
       byte_batch=st.lists(corpus.byte_cases, min_size=10, max_size=10))
def test_campaign_cli(structure, mild, data_batch, byte_batch, cli_files, tmp_path_factory):
    models, data = cli_files
    _cli(models, data, structure, mild, data_batch, byte_batch, tmp_path_factory, runs=10, inspects=10)
