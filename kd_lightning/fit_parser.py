"""The CLI's own parser, offline: `kd-lightning fit ARGS` resolved as the CLI resolves it (its links, defaults and
types, so `5e-2` is 0.05) with nothing instantiated or run, for the table runner's rows, sweep values and recipes,
and the run identity of what they resolve to (identity.py says what counts). Bad input is one RowError naming its
source and key."""
from __future__ import annotations

import functools
import re
from argparse import ArgumentError
from typing import Any, Iterable

from kd_lightning.exceptions import KDLightningError, RowError
from kd_lightning.identity import canonical, defaults_of, run_identity
from kd_lightning.utils.config_files import check_config_files

#: Arguments stripped before parsing (their keys are VOLATILE), so that runs differing only in them share a parse.
_VOLATILE_ARGS = ("--trainer.default_root_dir", "--model.teacher_checkpoint", "--ckpt_path", "--print_config",
                  "--overwrite", "--wait_for_lock")


class _ParserBuilt(Exception):
    pass


@functools.lru_cache(maxsize=1)
def _cli() -> Any:
    """KDLightningCLI with its parsers built (links and defaults) and nothing parsed or instantiated, once per process.
    Its root and fit parsers raise ArgumentError instead of printing the usage and exiting."""
    from kd_lightning.cli import KDLightningCLI

    class _ParserOnly(KDLightningCLI):
        def parse_arguments(self, parser: Any, args: Any) -> None:
            raise _ParserBuilt(self)  # stop before parsing sys.argv and instantiating anything

    try:
        _ParserOnly(args=[])
    except _ParserBuilt as built:
        cli = built.args[0]
    cli.parser.exit_on_error = cli._parser("fit").exit_on_error = False
    return cli


@functools.lru_cache(maxsize=1)
def fit_defaults() -> dict:
    # LightningCLI._parser (private; the one cli.py uses too, tested with pytorch-lightning 2.6.x: tests/test_cli.py
    # fails when it disappears) is the subcommand's own parser, whose defaults are the fit options'.
    return defaults_of(_cli()._parser("fit"))


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
    return _cli().parser.parse_args(["fit", *args]).fit


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


def identity(args: Iterable[str], source: str) -> dict:
    """The canonical resolved config of `kd-lightning fit ARGS`: equal for two commands exactly when they train
    the same run, whichever way they spell it; bad input raises RowError naming `source`."""
    return canonical(resolve(args, source), fit_defaults)


def seedless_identity(args: Iterable[str], source: str) -> dict:
    """identity() without the seed: what the run folder's hash is of."""
    return run_identity(resolve(args, source), fit_defaults)


def differences(expected: dict, found: dict, prefix: str = "") -> list[str]:
    """`key: found -> expected` for every leaf that differs."""
    out = []
    for key in sorted(set(expected) | set(found)):
        a, b = expected.get(key), found.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {b!r} -> {a!r}")
    return out
