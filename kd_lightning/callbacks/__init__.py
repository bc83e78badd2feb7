"""Callbacks: the results.json writer, the run's checkpoints, and random states in checkpoints."""
from kd_lightning.callbacks.checkpoint import RunCheckpoint
from kd_lightning.callbacks.results import RESULTS_FILE, ResultsWriter
from kd_lightning.callbacks.rng_state import RNGState

__all__ = ["RESULTS_FILE", "ResultsWriter", "RNGState", "RunCheckpoint"]
