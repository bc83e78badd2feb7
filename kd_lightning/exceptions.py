"""The errors a user can cause, in a module that imports nothing.

Every error that our own code raises because of user input (a config, a command-line value, a file, a row of a
table) derives from KDLightningError: the CLI and the table runner print those as one line
(kd_lightning/error_report.py). Every exception class of the package lives here, so there is one place to look.
Anything else is a bug and keeps its traceback. Any package may raise these without importing another
(kd_lightning/fast raises NonFiniteLossError, which the modules built on it re-export).

The subclasses also derive from the built-in exception they used to be (ValueError, RuntimeError, ...), so code and
tests that catch those keep working.
"""


class KDLightningError(Exception):
    """Base class of every error a user can cause and fix: the message names the file or value and the fix."""


class UserValueError(KDLightningError, ValueError):
    """A value the user gave (a config key, a command-line option) that the project does not accept."""


class UserFileError(KDLightningError, FileNotFoundError):
    """A file or folder the user named (or that a command needs) is missing."""


class NonFiniteLossError(KDLightningError, RuntimeError):
    """Training produced NaN or inf; the message names the step and the loss part."""


class ConfigFileError(KDLightningError, ValueError):
    """A `--config` file that cannot be read as YAML; the message names the file, the line and the fix."""


class RowError(KDLightningError, ValueError):
    """A row of an ablation table (its file or its manifest entry) that does not resolve to a run."""


class DiskFullError(KDLightningError, OSError):
    """A write ran out of space; the message names the file and how to continue."""


class CheckpointError(KDLightningError, ValueError):
    """A checkpoint file is missing, truncated, not a checkpoint, or refers to code."""


class TeacherCheckpointError(CheckpointError):
    """The teacher checkpoint is missing, unreadable, or does not fit the student's data."""


class DatasetFileError(KDLightningError, ValueError):
    """A data set file on disk that cannot be read (corrupt, truncated, or a pickle that would run code)."""


class DatasetDownloadError(KDLightningError, RuntimeError):
    """The archive could not be downloaded or extracted; the message says what to do by hand."""


class FastPathRefusal(UserValueError):
    """A trainer setting the fast path cannot run with; the message names the setting and the fix."""


class GraphUnsafeStepError(UserValueError):
    """The training step contains an op a CUDA graph cannot hold; the message names it, where it is, and the
    option that turns the graph off."""


class StaleRunError(KDLightningError, ValueError):
    """A finished (or resumable) run was trained with other settings than the recipe now asks for."""


class RunFolderError(KDLightningError, ValueError):
    """A run folder that cannot take this `fit`: another process trains it, or it already holds a run."""


class WandbCredentialsError(KDLightningError, ValueError):
    """The W&B server answered that the API key it was given is not valid."""


class RunTimeLimitError(KDLightningError, RuntimeError):
    """A Slurm job stopped by its time limit without finishing a new epoch: requeueing it would never end."""
