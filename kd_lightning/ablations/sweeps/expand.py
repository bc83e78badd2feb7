"""Expand a W&B sweep file offline into the exact commands its agents would run (for tests and dry runs).

    python -m kd_lightning.ablations expand configs/sweeps/margin.yaml

The grid: W&B's own sweep engine (the `sweeps` package, `pip install wandb[sweeps]`) when it is importable, else the
Cartesian product of the parameters' `values` (what `method: grid` means). The command: wandb's own agent code,
`wandb.sdk.launch.sweeps.utils.create_sweep_command` (${envvar:...} macros) and `create_sweep_command_args` (the
`--key=value` list of ${args}), then the substitution that `wandb.wandb_agent.Agent._command_run` does inline:
${env} -> /usr/bin/env, ${interpreter} -> python, ${program} -> the sweep's program.
"""
from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any

from kd_lightning.exceptions import UserValueError

AGENT_ENV = "/usr/bin/env"
AGENT_INTERPRETER = "python"


def grid(config: dict) -> tuple[str, list[dict[str, Any]]]:
    """(engine used, one {parameter: value} per agent run) for a `method: grid` sweep."""
    if config.get("method") != "grid":
        raise UserValueError(f"only grid sweeps expand to a fixed list of runs; got method {config.get('method')!r}")
    try:
        import sweeps  # W&B's sweep engine, the one the local controller uses
    except ImportError:
        sweeps = None
    if sweeps is not None:
        runs: list = []
        while True:
            run = sweeps.next_run(config, runs)
            if run is None:
                break
            run.state = sweeps.RunState.finished
            runs.append(run)
        return "wandb sweeps engine", [{k: v["value"] for k, v in run.config.items()} for run in runs]
    names, choices = [], []
    for name, spec in config["parameters"].items():
        if "values" in spec:
            names.append(name)
            choices.append(list(spec["values"]))
        elif "value" in spec:
            names.append(name)
            choices.append([spec["value"]])
        else:
            raise UserValueError(f"grid parameter {name!r} needs `values` or `value`, got {spec}")
    return "Cartesian product", [dict(zip(names, combo)) for combo in itertools.product(*choices)]


def agent_command(config: dict, params: dict[str, Any]) -> list[str]:
    """The argv an agent would start for one run with `params` (wandb 0.31's agent, reproduced step by step)."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    command = sweep_utils.create_sweep_command(list(config.get("command") or []) or None)
    sweep_vars: dict[str, Any] = sweep_utils.create_sweep_command_args(
        {"args": {k: {"value": v} for k, v in params.items()}}
    )
    sweep_vars["interpreter"] = [AGENT_INTERPRETER]
    sweep_vars["program"] = [config["program"]]
    sweep_vars["env"] = [AGENT_ENV]
    argv: list[str] = []
    for chunk in command:
        chunk = str(chunk)
        if chunk.startswith("${") and chunk.endswith("}"):
            argv += sweep_vars.get(chunk[2:-1]) or []
        else:
            argv.append(chunk)
    return argv


def expand(config: dict) -> tuple[str, list[list[str]]]:
    engine, runs = grid(config)
    return engine, [agent_command(config, params) for params in runs]


def main(argv: list[str]) -> int:
    import shlex

    import yaml

    from kd_lightning.ablations.grid.spec import ROOT

    default = ROOT / "configs" / "sweeps"
    for path in argv or sorted(str(p) for p in default.glob("*.yaml")):
        engine, commands = expand(yaml.safe_load(Path(path).read_text()))
        print(f"# {path}: {len(commands)} runs (grid: {engine})")
        for command in commands:
            print(shlex.join(command))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
