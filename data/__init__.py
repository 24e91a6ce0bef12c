"""Small example models and data sets shipped with evsim (installed as ``evsim.data``)."""
