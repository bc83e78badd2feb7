"""Errors a user can cause end with one clear message and exit code 1, not a traceback from deep inside a library.

Set KD_LIGHTNING_DEBUG=1 to see the full traceback.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

from kd_lightning.modules.base import NonFiniteLossError
from kd_lightning.modules.frozen_teacher import TeacherCheckpointError

USER_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError, NotADirectoryError, ValueError, TeacherCheckpointError, NonFiniteLossError,
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
    except USER_ERRORS as err:
        if os.environ.get("KD_LIGHTNING_DEBUG"):
            raise
        cause = _root_cause(err)
        sys.stderr.write(f"kd-lightning: error: {cause}\n")
        sys.exit(1)
