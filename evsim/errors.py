"""The one exception tree of evsim.

Every error evsim raises on purpose derives from :class:`EvsimError`; the CLI turns
them into a single clean line and a non-zero exit code in one place
(``evsim.cli.main``)::

    EvsimError
    ├── ModelFileError          the model file cannot be read or breaks format v1
    │   ├── ContainerError      not a readable .npz / .h5 (truncated, foreign, corrupted)
    │   ├── ManifestError       JSON, format name/version, keys, unknown op, bad attribute
    │   ├── ArrayError          missing / unused / wrong dtype / wrong shape / non-finite arrays
    │   └── GraphError          dangling inputs, cycles, shapes that do not fit
    ├── ResourceLimitError      declared sizes would need more memory than the limit
    ├── DataError               a data file (x, y) that cannot be used as it is
    ├── ConversionError         an ANN that cannot become an SNN as it stands
    │   └── UnknownNeuronError  a neuron model nobody registered (a missing plugin)
    ├── CalibrationError        calibration asked for something it cannot do
    ├── CheckpointError         a checkpoint directory written by a different run (model, data, settings)
    ├── ClusterError            a Dask cluster that cannot be reached or lost the work
    ├── OutputError             an output path evsim will not replace (directory, device, FIFO)
    └── MissingDependencyError  an optional extra (matplotlib, torch ...) is not installed

Messages follow one pattern: *where* (file, node), *what was expected*, *what was
found*, and *how to fix it*.  :func:`describe` builds that sentence so every
message reads the same way.
"""
from __future__ import annotations

__all__ = [
    "EvsimError",
    "ModelFileError",
    "ContainerError",
    "ManifestError",
    "ArrayError",
    "GraphError",
    "ResourceLimitError",
    "DataError",
    "ConversionError",
    "UnknownNeuronError",
    "CalibrationError",
    "CheckpointError",
    "ClusterError",
    "OutputError",
    "MissingDependencyError",
    "describe",
    "truncate",
]

#: longest piece of a message (where / expected / found / fix) before it is cut; a value
#: echoed from a file (a name, a string of 10**6 characters) must not flood the terminal
MAX_PIECE = 200


class EvsimError(Exception):
    """Base class of every error evsim raises deliberately."""


class ModelFileError(EvsimError):
    """A model file cannot be read, or does not follow the evsim model format v1."""


class ContainerError(ModelFileError):
    """The file is not a readable .npz or .h5 container (truncated, foreign, corrupted)."""


class ManifestError(ModelFileError):
    """The JSON manifest is malformed or names something format v1 does not know."""


class ArrayError(ModelFileError):
    """An array is missing, unused, of the wrong dtype or shape, or not finite."""


class GraphError(ModelFileError):
    """The node graph is not a valid DAG, or shapes do not fit along it."""


class ResourceLimitError(EvsimError):
    """Declared sizes would need more memory than the configured limit."""


class DataError(EvsimError):
    """A data file cannot be used: wrong shape, non-finite values, bad labels."""


class ConversionError(EvsimError):
    """An ANN graph cannot be turned into a spiking network as it stands."""


class CalibrationError(EvsimError):
    """Calibration was asked for something it cannot do with what it was given."""


class UnknownNeuronError(ConversionError):
    """A neuron model that is not registered (built-in, ``register_neuron`` or entry point)."""


class CheckpointError(EvsimError):
    """A checkpoint directory cannot be used for this run (written by a different model, data or settings)."""


class ClusterError(EvsimError):
    """A Dask cluster cannot be reached, has no workers, or lost a task more often than allowed."""


class OutputError(EvsimError):
    """An output path is not a regular file or a new name (a directory, device, FIFO, socket)."""


class MissingDependencyError(EvsimError):
    """A feature needs an optional extra that is not installed."""


def truncate(text, limit: int = MAX_PIECE) -> str:
    """``text`` cut to about ``limit`` characters, saying how long it was.

    >>> truncate("A" * 1000, 20)
    'AAAAAAAAAAAAAAAAAAAA… (1000 characters in all)'
    """
    text = str(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters in all)"


def describe(where: str, expected: str, found: str | None = None, fix: str | None = None) -> str:
    """Build an error message: ``where: expected X, found Y; fix.``

    Each piece is cut to :data:`MAX_PIECE` characters (paths: 4 times that) by
    :func:`truncate`, so a value echoed from a file keeps the message one short line.

    Parameters
    ----------
    where : str
        The file and/or node the problem is in, e.g. ``"model.npz, node 'conv1'"``.
    expected : str
        What evsim expected there.
    found : str, optional
        What it found instead.
    fix : str, optional
        How the user can fix it.
    """
    text = f"{truncate(where, 4 * MAX_PIECE)}: expected {truncate(expected)}"
    if found is not None:
        text += f", found {truncate(found)}"
    if fix:
        text += f"; {truncate(fix)}"
    return text
