"""How errors end: a user's mistake as one line, a bug with its traceback and where to report it.

Errors a user can cause and fix derive from kd_lightning.exceptions.KDLightningError (raised where user input is
checked: configs, command-line values, files, table rows); they end with one message naming the file or value and
the fix, and exit code 1 (the table runner: 2). Anything else is a bug in kd-lightning or a library: its traceback
is kept, followed by one line saying so. Set KD_LIGHTNING_DEBUG=1 to see the traceback of user errors too.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Iterator, Optional

from pytorch_lightning.utilities.exceptions import SIGTERMException

from kd_lightning.exceptions import KDLightningError
from kd_lightning.utils.atomic import is_disk_full

USER_ERRORS: tuple[type[BaseException], ...] = (KDLightningError,)
BUG_LINE = ("{prog}: this is not a problem with your input but a bug (in kd-lightning or a library it uses); "
            "please report it on the project's issue tracker with the command and the traceback above")


def user_error(err: BaseException) -> Optional[BaseException]:
    """The KDLightningError that `err` is or wraps (jsonargparse and Lightning wrap errors raised in our
    constructors), innermost first; None when there is none (a bug), and for a full disk a DiskFullError-like
    OSError (ENOSPC) counts as the user's to fix too."""
    seen: set[int] = set()
    found = None
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, USER_ERRORS):
            found = err
        err = err.__cause__ or err.__context__
    return found


@contextlib.contextmanager
def report_user_errors(prog: str = "kd-lightning", code: int = 1) -> Iterator[None]:
    try:
        yield
    except SIGTERMException:
        # Lightning stops at the next batch and raises this SystemExit, whose exit code would be 0 ("success").
        if os.environ.get("KD_LIGHTNING_DEBUG"):
            raise
        sys.stderr.write(f"{prog}: interrupted by SIGTERM; the checkpoints written so far are kept: rerun the "
                         "same command with --ckpt_path last to continue\n")
        sys.exit(128 + signal.SIGTERM)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as err:
        cause = user_error(err)
        if cause is None and is_disk_full(err):
            from kd_lightning.exceptions import DiskFullError

            cause = DiskFullError(f"no space left on the device ({err}); free space (or point "
                                  "trainer.default_root_dir elsewhere) and rerun the same command with "
                                  "--ckpt_path last to continue from the last checkpoint")
        if cause is None:
            import traceback

            traceback.print_exc()
            sys.stderr.write(BUG_LINE.format(prog=prog) + "\n")
            sys.exit(code)
        if os.environ.get("KD_LIGHTNING_DEBUG"):
            raise
        sys.stderr.write(f"{prog}: error: {cause}\n")
        sys.exit(code)
