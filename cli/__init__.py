"""The ``evsim`` command line (installed as ``evsim.cli``)."""
