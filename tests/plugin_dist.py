"""A neuron-model plugin installed as a package: a distribution with an entry point in group
``evsim.neurons``, written into a directory that a subprocess puts on PYTHONPATH."""
from pathlib import Path

PLUGIN = '''
import numba
import evsim


@numba.njit
def step(v, current, theta, gain):
    h = v + gain * current
    s = 1 if h >= theta else 0
    return h - s * theta, s


def register():
    evsim.register_neuron("gainif", step, params={"gain": 2.0}, doc="h = v + gain x")
'''


def write_plugin_distribution(site: Path, package: str = "gainif_plugin") -> Path:
    """Write the ``gainif`` plugin (``h = v + gain·x``, IF otherwise) as an installed distribution under
    ``site``; returns ``site``."""
    (site / package).mkdir(parents=True)
    (site / package / "__init__.py").write_text(PLUGIN)
    info = site / f"{package}-1.0.dist-info"
    info.mkdir()
    name = package.replace("_", "-")
    info.joinpath("METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    info.joinpath("entry_points.txt").write_text(f"[evsim.neurons]\ngainif = {package}:register\n")
    return site
