"""Errors a user can cause end with one clear message and exit code 1, not a traceback from deep inside a library.

Set KD_LIGHTNING_DEBUG=1 to see the full traceback.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Iterator

from pytorch_lightning.utilities.exceptions import SIGTERMException

from kd_lightning.data.download import DatasetDownloadError
from kd_lightning.exceptions import ConfigFileError, NonFiniteLossError
from kd_lightning.modules.frozen_teacher import TeacherCheckpointError
from kd_lightning.utils.checkpoint import CheckpointError

USER_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError, NotADirectoryError, ValueError, CheckpointError, TeacherCheckpointError, NonFiniteLossError,
    DatasetDownloadError, ConfigFileError,
)


def _root_cause(err: BaseException) -> BaseException:
    # jsonargparse and Lightning wrap errors raised in our constructors; the innermost one says what to fix.
    seen = set()
    while id(err) not in seen:
        seen.add(id(err))
        nxt = err.__cause__ or err.__context__
        if nxt is None or not isinstance(nxt, USER_ERRORS):
            break
        err = nxt
    return err


@contextlib.contextmanager
def report_user_errors() -> Iterator[None]:
    try:
        yield
    except SIGTERMException:
        # Lightning stops at the next batch and raises this SystemExit, whose exit code would be 0 ("success").
        if os.environ.get("KD_LIGHTNING_DEBUG"):
            raise
        sys.stderr.write("kd-lightning: interrupted by SIGTERM; the checkpoints written so far are kept: rerun the "
                         "same command with --ckpt_path last to continue\n")
        sys.exit(128 + signal.SIGTERM)
    except USER_ERRORS as err:
        if os.environ.get("KD_LIGHTNING_DEBUG"):
            raise
        cause = _root_cause(err)
        sys.stderr.write(f"kd-lightning: error: {cause}\n")
        sys.exit(1)
