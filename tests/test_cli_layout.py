"""--layout nhwc: channels-last data files (Keras/TF) run and calibrate like channels-first ones."""
from importlib.resources import files

import numpy as np
from click.testing import CliRunner

from evsim.cli.main import main

DATA = files("evsim.data")


def test_nhwc_data_gives_the_nchw_report(tmp_path):
    d = np.load(str(DATA / "mnist_test.npz"))
    np.savez(tmp_path / "nhwc.npz", x=np.ascontiguousarray(d["x"][:16].transpose(0, 2, 3, 1)), y=d["y"][:16])
    np.savez(tmp_path / "nchw.npz", x=d["x"][:16], y=d["y"][:16])
    model = str(DATA / "mnist_qcfs.npz")
    runner = CliRunner()
    a = runner.invoke(main, ["run", model, "--data", str(tmp_path / "nchw.npz"), "-T", "3", "--json", "--no-ann"])
    b = runner.invoke(main, ["run", model, "--data", str(tmp_path / "nhwc.npz"), "-T", "3", "--json", "--no-ann",
                             "--layout", "nhwc"])
    assert a.exit_code == 0 and b.exit_code == 0, (a.output, b.output)
    ra, rb = (__import__("json").loads(r.stdout) for r in (a, b))
    assert ra["accuracy"] == rb["accuracy"] and ra["totals"]["sops"] == rb["totals"]["sops"]
    c = runner.invoke(main, ["run", model, "--data", str(tmp_path / "nhwc.npz"), "-T", "3"])
    assert c.exit_code != 0 and "nhwc" in c.output
