"""How errors end: a user's mistake as one line, a bug with its traceback and where to report it.

Errors a user can cause and fix derive from kd_lightning.exceptions.KDLightningError (raised where user input is
checked: configs, command-line values, files, table rows); they end with one message naming the file or value and
the fix, and exit code 1 (the table runner: 2). Anything else is a bug in kd-lightning or a library: its traceback
is kept, followed by one line saying so. Set KD_LIGHTNING_DEBUG=1 to see the traceback of user errors too.

Under DDP every process runs the same command, so a bad value fails on every rank at once: only global rank 0
prints it (the others exit with the same code, silently). An error about a file, a checkpoint, the disk or a
non-finite loss may be one process's own (another node's file system, its own data shard), so every rank that
meets it prints it, tagged with its rank when it is not rank 0.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Callable, Iterator, Optional

from pytorch_lightning.utilities.exceptions import SIGTERMException

from kd_lightning.exceptions import ConfigFileError, KDLightningError, UserValueError
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
        rank, message = _global_rank(), user_message(cause)
        if rank == 0:
            sys.stderr.write(f"{prog}: error: {message}\n")
        elif not isinstance(cause, SAME_ON_EVERY_RANK):
            sys.stderr.write(f"{prog}: error (process of rank {rank}): {message}\n")
        sys.exit(code)


def run_command(prog: str, command: Callable[[], int]) -> int:
    """The exit code of a table or sweep command: a user's mistake is one line and code 2 (report_user_errors), Ctrl-C
    the line saying that the same command resumes, and 130."""
    try:
        with report_user_errors(prog, code=2):
            return command()
    except SystemExit as stop:
        return int(stop.code or 0)
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted; run the same command again to resume\n")
        return 130


def user_message(err: BaseException) -> str:
    """The message of a user error. A DataLoader worker's error reaches the main process re-raised by torch with
    the worker's traceback in its text ("Caught X in DataLoader worker process 0. Original Traceback ..."): only its
    last line, the original message, is the user's."""
    text = str(err)
    if "Original Traceback" not in text:
        return text
    last = [line for line in text.splitlines() if line.strip()][-1]
    prefix = f"{type(err).__module__}.{type(err).__qualname__}: "
    return last[len(prefix):] if last.startswith(prefix) else last


#: Errors about a value of the command or config, which every DDP process parses alike: rank 0 alone reports them.
SAME_ON_EVERY_RANK: tuple[type[BaseException], ...] = (UserValueError, ConfigFileError)


def _global_rank() -> int:
    """This process's global rank: Lightning's strategy sets it once the processes are connected; before that,
    Lightning reads it from the launcher's environment (RANK, SLURM_PROCID, LOCAL_RANK, ...)."""
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)
