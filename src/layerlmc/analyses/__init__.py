"""Analyses over many checkpoints, built on the barrier core (``layerlmc.lmc``)."""

from .trajectory import find_checkpoints, layer_distances, trajectory

__all__ = ["find_checkpoints", "layer_distances", "trajectory"]
