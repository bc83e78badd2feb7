"""`--config` files are read as YAML before the CLI parses them, so a syntax error names its file.

jsonargparse reports a YAML error as `... in "<unicode string>", line 2`: it parses the file's text, not the file,
so with several `--config` files the user cannot tell which one is broken.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import yaml

from kd_lightning.exceptions import ConfigFileError

CONFIG_FLAGS = ("--config", "-c")


def config_file_args(args: Sequence[str]) -> Iterator[str]:
    """The values of `--config X`, `--config=X`, `-c X` and `-c=X` in a command line."""
    for i, arg in enumerate(args):
        flag, eq, value = arg.partition("=")
        if flag in CONFIG_FLAGS:
            if eq:
                yield value
            elif i + 1 < len(args):
                yield args[i + 1]


def check_config_files(args: Sequence[str]) -> None:
    """Raises ConfigFileError for the first `--config` file that is not valid YAML.

    A value that is not a file is left to jsonargparse: it reports a missing file by name, and `--config` also
    takes inline YAML.
    """
    for value in config_file_args(args):
        path = Path(value)
        if not path.is_file():
            continue
        try:
            yaml.safe_load(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as err:
            raise ConfigFileError(f"config file {value} is not UTF-8 text ({err.reason} at byte {err.start}); "
                                  f"pass a YAML file") from None
        except yaml.YAMLError as err:
            raise ConfigFileError(f"config file {value} is not valid YAML: {describe_yaml_error(err)}; "
                                  f"fix the file") from None


def describe_yaml_error(err: yaml.YAMLError) -> str:
    """`line L, column C: <problem> (<context> at line L', column C')` in one line, lines and columns from 1."""
    if not isinstance(err, yaml.MarkedYAMLError) or err.problem_mark is None:
        return " ".join(str(err).split())
    mark = err.problem_mark
    text = f"line {mark.line + 1}, column {mark.column + 1}: {err.problem}"
    if err.context:
        where = err.context_mark
        text += f" ({err.context}" + (f" at line {where.line + 1}, column {where.column + 1})" if where else ")")
    return text
