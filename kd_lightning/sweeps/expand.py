"""Expand a W&B grid sweep file offline into the commands its agents would run
(`python -m kd_lightning.sweeps.expand configs/sweeps/margin.yaml`; no file: every configs/sweeps/*.yaml):
the Cartesian product of the values (tests/test_sweeps.py checks it against W&B's own sweep engine, which pins
numpy<2 and so cannot be imported here), each made a command as wandb's agent builds it."""
from __future__ import annotations

import argparse
import itertools
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

from kd_lightning.ablations.grid.spec import ROOT
from kd_lightning.error_report import run_command
from kd_lightning.exceptions import ConfigFileError, UserFileError, UserValueError
from kd_lightning.utils.config_files import describe_yaml_error

AGENT_ENV = "/usr/bin/env"
AGENT_INTERPRETER = "python"


def grid(config: dict) -> tuple[str, list[dict[str, Any]]]:
    """(how it was expanded, one {parameter: value} per agent run) for a `method: grid` sweep."""
    if config.get("method") != "grid":
        raise UserValueError(f"only grid sweeps expand to a fixed list of runs; got method {config.get('method')!r}")
    for name, spec in config["parameters"].items():
        if "values" not in spec and "value" not in spec:
            raise UserValueError(f"grid parameter {name!r} needs `values` or `value`, got {spec}")
    choices = {name: spec["values"] if "values" in spec else [spec["value"]]
               for name, spec in config["parameters"].items()}
    return "Cartesian product", [dict(zip(choices, combo)) for combo in itertools.product(*choices.values())]


def agent_command(config: dict, params: dict[str, Any]) -> list[str]:
    """The argv an agent would start for one run with `params`: wandb 0.31's create_sweep_command,
    create_sweep_command_args, then Agent._command_run's ${env}/${interpreter}/${program} substitution."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    sweep_vars = {**sweep_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}}),
                  "interpreter": [AGENT_INTERPRETER], "program": [config["program"]], "env": [AGENT_ENV]}
    argv: list[str] = []
    for chunk in map(str, sweep_utils.create_sweep_command(list(config.get("command") or []) or None)):
        is_macro = chunk.startswith("${") and chunk.endswith("}")
        argv += (sweep_vars.get(chunk[2:-1]) or []) if is_macro else [chunk]
    return argv


def expand(config: dict) -> tuple[str, list[list[str]]]:
    engine, runs = grid(config)
    return engine, [agent_command(config, params) for params in runs]


def load(path: str) -> dict:
    """A sweep file as a mapping; a missing, unreadable or malformed file is one user error naming it."""
    try:
        config = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise UserFileError(f"sweep file {path}: {err.strerror}; the committed ones are configs/sweeps/*.yaml"
                            ) from None
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        detail = describe_yaml_error(err) if isinstance(err, yaml.YAMLError) else "not UTF-8 text"
        raise ConfigFileError(f"sweep file {path} is not valid YAML: {detail}; fix the file") from None
    if not isinstance(config, dict) or not isinstance(config.get("parameters"), dict):
        raise UserValueError(f"sweep file {path} is not a W&B sweep: it needs a `parameters:` mapping")
    return config


def main(paths: list[str]) -> int:
    for path in paths or sorted(str(p) for p in (ROOT / "configs" / "sweeps").glob("*.yaml")):
        engine, commands = expand(load(path))
        print(f"# {path}: {len(commands)} runs (grid: {engine})")
        for command in commands:
            print(shlex.join(command))
    return 0


if __name__ == "__main__":
    cli = argparse.ArgumentParser(prog="python -m kd_lightning.sweeps.expand", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("files", nargs="*", help="sweep files (default: configs/sweeps/*.yaml)")
    files = cli.parse_args().files
    sys.exit(run_command("expand", lambda: main(files)))
