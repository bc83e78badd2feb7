"""The CLI's own parser, offline: `kd-lightning fit ARGS` resolved as the CLI resolves it (its links, defaults and
types, so `5e-2` is 0.05) with nothing instantiated or run, for the table runner's rows, sweep values and recipes.
Bad input is one RowError naming its source and key."""
from __future__ import annotations

import functools
import re
from argparse import ArgumentError
from typing import Any, Iterable

from kd_lightning.exceptions import KDLightningError, RowError
from kd_lightning.identity import defaults_of
from kd_lightning.utils.config_files import check_config_files

#: Arguments stripped before parsing (their keys are VOLATILE), so that runs differing only in them share a parse.
_VOLATILE_ARGS = ("--trainer.default_root_dir", "--model.teacher_checkpoint", "--ckpt_path", "--print_config",
                  "--overwrite", "--wait_for_lock")


class _ParserBuilt(Exception):
    pass


@functools.lru_cache(maxsize=1)
def fit_parser() -> Any:
    """The CLI's own parser (KDLightningCLI's, with its links and defaults), built once per process."""
    from kd_lightning.cli import KDLightningCLI

    class _ParserOnly(KDLightningCLI):
        def parse_arguments(self, parser: Any, args: Any) -> None:
            raise _ParserBuilt(parser)  # stop before parsing sys.argv and instantiating anything

    try:
        _ParserOnly(args=[])
    except _ParserBuilt as built:
        parser = built.args[0]
    # Raise ArgumentError instead of printing the usage and exiting.
    for each in (parser, *parser._subcommands_action._name_parser_map.values()):
        each.exit_on_error = False
    return parser


@functools.lru_cache(maxsize=1)
def fit_defaults() -> dict:
    return defaults_of(fit_parser()._subcommands_action._name_parser_map["fit"])


def summary(message: str) -> str:
    """jsonargparse's nested Union report, cut to the key and what is wrong with it."""
    unknown = re.findall(r"(?:Option|Key) '([^']+)' is not (?:accepted|expected)", message)
    keys = [k for k in re.findall(r'Parser key "([^"]+)"', message) if k]
    where = ".".join(dict.fromkeys(keys))
    if unknown:
        return f"unknown key {'.'.join(filter(None, [where, unknown[-1]]))!r}"
    missing = re.search(r"File does not exist: '([^']+)'|Unable to load config '([^']+)'", message)
    if missing:
        return f"config file {missing.group(1) or missing.group(2)} does not exist"
    expected = list(dict.fromkeys(re.findall(r"Expected a <class '([\w.]+)'>", message)))
    given = re.findall(r"Given value: (.*)", message)
    if where and expected:
        value = given[0].strip() if given else "?"  # the innermost (the key's own) value comes first
        return f"key {where!r} expects {' or '.join(t.replace('NoneType', 'null') for t in expected)}, got {value!r}"
    first = message.strip().splitlines()[0] if message.strip() else "invalid arguments"
    return f"{first} ({where})" if where and where not in first else first


@functools.lru_cache(maxsize=1024)
def _parse(args: tuple[str, ...]) -> Any:
    check_config_files(list(args))  # a file that is not YAML: named with its line (ConfigFileError)
    return fit_parser().parse_args(["fit", *args]).fit


def resolve(args: Iterable[str], source: str) -> Any:
    """The namespace `kd-lightning fit ARGS` resolves to (VOLATILE arguments left out). Bad input raises RowError:
    `source: <what is wrong>`."""
    try:
        return _parse(tuple(a for a in args if a.partition("=")[0] not in _VOLATILE_ARGS))
    except ArgumentError as err:
        raise RowError(f"{source}: {summary(str(err))}; nothing was started: fix it and run again") from None
    except RowError:
        raise
    except KDLightningError as err:
        raise RowError(f"{source}: {err}") from None
