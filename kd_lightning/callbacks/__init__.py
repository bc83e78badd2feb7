"""Callbacks: the results.json writer, the run's checkpoints, random states in checkpoints, and the console."""
from kd_lightning.callbacks.checkpoint import RunCheckpoint
from kd_lightning.callbacks.epoch_log import EpochLog
from kd_lightning.callbacks.log_interval import ClampLogInterval
from kd_lightning.callbacks.results import BEST_TEST_PREFIX, RESULTS_FILE, ResultsWriter
from kd_lightning.callbacks.rng_state import RNGState

__all__ = ["BEST_TEST_PREFIX", "ClampLogInterval", "EpochLog", "RESULTS_FILE", "ResultsWriter", "RNGState",
           "RunCheckpoint"]
