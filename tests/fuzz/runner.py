"""Child process of the fuzz harness: runs evsim's Python API over a list of files.

Usage: ``python runner.py MODE LISTFILE`` with MODE ``model`` (``evsim.load``, the summary
``inspect`` prints, then conversion and compilation into a network) or ``data``
(``open_data`` + reading every sample + ``load_data``) or ``aer`` (AER event lists binned
with ``bins=3``).  For each file it prints
``{"start": i}`` before and ``{"i": i, "outcome": ..., "detail": ...}`` after, one JSON
line each, flushed; the parent watches the lines, so a hang or a crash is pinned on the
file that was started and never finished.
"""
from __future__ import annotations

import json
import sys
import traceback
import warnings


def run_model(path: str) -> None:
    import evsim
    from evsim.summary import summary_json

    graph = evsim.load(path)
    json.dumps(summary_json(graph))  # what `evsim inspect --json` prints
    from evsim import engine

    as_network = getattr(engine, "as_network", None) or engine._as_network
    as_network(graph, None)


def run_data(path: str) -> None:
    from evsim.data_io import load_data, open_data

    from corpus import INPUT_SHAPE, N_CLASSES

    with open_data(path, INPUT_SHAPE, N_CLASSES, samples=6) as source:
        for start in range(0, source.n, 4):
            source.read(start, min(source.n, start + 4))
    load_data(path, INPUT_SHAPE, N_CLASSES, samples=3)


def run_aer(path: str) -> None:
    from evsim.data_io import open_data

    from corpus import INPUT_SHAPE, N_CLASSES

    with open_data(path, INPUT_SHAPE, N_CLASSES, samples=6, bins=3) as source:
        for start in range(0, source.n, 4):
            x, _ = source.read(start, min(source.n, start + 4))
            assert x.shape[1:] == (3,) + INPUT_SHAPE and x.min(initial=0) >= 0  # counts, as the engine expects


MODES = {"model": run_model, "data": run_data, "aer": run_aer}


def main() -> None:
    mode, listing = sys.argv[1], sys.argv[2]
    # import everything up front: the parent's per-file timeout must not pay for importing Numba
    import evsim.data_io  # noqa: F401
    import evsim.engine  # noqa: F401
    import evsim.summary  # noqa: F401
    from evsim.errors import EvsimError

    files = json.loads(open(listing, encoding="utf-8").read())
    warnings.simplefilter("ignore")  # RuntimeWarnings are not outcomes; tracebacks and hangs are
    for i, path in enumerate(files):
        print(json.dumps({"start": i}), flush=True)
        try:
            MODES[mode](path)
            outcome, detail = "ok", ""
        except EvsimError as exc:
            outcome, detail = "refused", f"{type(exc).__name__}: {exc}"[:500]
        except Exception:  # noqa: BLE001 - exactly what the fuzz suite looks for
            outcome, detail = "traceback", traceback.format_exc()[-3000:]
        print(json.dumps({"i": i, "outcome": outcome, "detail": detail}, ensure_ascii=True), flush=True)


if __name__ == "__main__":
    main()
