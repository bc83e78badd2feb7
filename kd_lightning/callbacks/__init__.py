"""Callbacks: the results.json writer."""
from kd_lightning.callbacks.results import RESULTS_FILE, ResultsWriter

__all__ = ["RESULTS_FILE", "ResultsWriter"]
