"""The errors a user can cause that our own code raises, in a module that imports nothing.

Any package may raise these without importing another (kd_lightning/fast raises NonFiniteLossError, which the
modules built on it re-export); kd_lightning/errors.py reports them.
"""


class NonFiniteLossError(RuntimeError):
    """Training produced NaN or inf; the message names the step and the loss part."""


class ConfigFileError(ValueError):
    """A `--config` file that cannot be read as YAML; the message names the file, the line and the fix."""
