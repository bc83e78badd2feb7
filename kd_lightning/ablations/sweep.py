"""W&B sweeps of the ablation tables: the program a sweep agent runs, and the writer of configs/sweeps/<table>.yaml.

    wandb sweep configs/sweeps/margin.yaml          # prints the sweep id
    wandb agent <entity>/<project>/<sweep id>       # from the repository root, with .venv activated

Each agent run is one row of the table: the teacher with the swept values, then the student distilled from it, both
through the runner (runner.py; the same run folders as `make table-<name>`, so a run that make or another agent
finished, for this table or another that shares it, is not trained again). The agent's W&B run gets the student's test accuracy as the sweep metric (`student/test_acc`,
last-epoch weights) beside the other numbers of the row; the teacher and student runs log to W&B themselves, grouped
by row. The agent runs

    /usr/bin/env python -m kd_lightning.ablations sweep --table=margin --data=synthetic ... --seed_everything=0 --model.X=...

where everything before the agent's arguments is fixed by the sweep file, and the agent's arguments (CLI dotted keys)
come after the table's configs in the teacher's `kd-lightning fit` command, so the swept values win.

The sweep files are written from the rows (one source of truth): `python -m kd_lightning.ablations sweep --write`
(make sweeps).
A table whose rows each change one and the same key sweeps that key (`model.contrastive_weight`, `model.objective`);
a table whose rows change different keys (Table A: δ, and λ = 0 for its plain-CE row) sweeps `model.init_args` with
each row's changes as a YAML mapping, e.g. `--model.init_args={gate_delta: 0.1}`. None is written `null`: the agent
formats values with Python's str(), and jsonargparse reads `None` as a string.
The file's `program` names this package's entry point; the `command` runs it as a module (`python -m`).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Optional

from kd_lightning.ablations.recipe import Recipe, parse_pair
from kd_lightning.ablations.rows import (
    ABLATIONS, RESULTS_FILE, ROOT, STUDENT_TABLES, TABLES, Row, load_rows, read_results, run_state,
)
from kd_lightning.ablations.runs import (
    PAPER, PLAIN_CE, Job, StudentVariant, student_job, student_table_teachers, teacher_config, teacher_job, teacher_run,
)
from kd_lightning.errors import report_user_errors
from kd_lightning.exceptions import UserValueError

SWEEPS = ROOT / "configs" / "sweeps"
PROGRAM = "kd_lightning/ablations/__main__.py"
MODULE = ["-m", "kd_lightning.ablations", "sweep"]
METRIC = "student/test_acc"
PROJECT = "kd-lightning"


# --- rows -> sweep parameters ---------------------------------------------------------------------------------------
def _yaml_value(value: Any) -> Any:
    """A value as the agent must pass it: None -> "null" (str(None) would reach jsonargparse as the string None)."""
    return "null" if value is None else value


def sweep_parameter(rows: list[Row]) -> tuple[str, list[Any]]:
    """The one swept parameter that walks a table's rows: (CLI dotted key, one value per row, in row order).

    Table D's rows are student methods crossed with two teachers: it sweeps `student` (the row's name) and
    `teacher` (plain_ce | paper) instead, options of this program rather than of the teacher's command."""
    import yaml

    if rows and rows[0].table in STUDENT_TABLES:
        return "student", [row.name for row in rows]
    overrides = [row.model_overrides() for row in rows]
    keys = {tuple(o) for o in overrides}
    if len(keys) == 1 and len(next(iter(keys))) == 1:
        (key,) = next(iter(keys))
        name, values = f"model.{key}", [_yaml_value(o[key]) for o in overrides]
    else:
        name = "model.init_args"
        values = [yaml.safe_dump(o, default_flow_style=True, width=10**6, sort_keys=True).strip() for o in overrides]
    if len({json.dumps(v) for v in values}) != len(values):
        raise UserValueError(f"two rows of table {rows[0].table!r} give the same {name}: {values}")
    return name, values


def row_for_args(rows: list[Row], swept: dict[str, str], recipe: Optional[Recipe] = None,
                 margin_space: str = "prob") -> Optional[Row]:
    """The row whose sweep value the agent passed, or None for a value that is no row of the table. Values are
    compared as the CLI's parser resolves them (W&B's backend may send 0.0 back as 0, an agent writes 1e-05 for
    0.00001): the row whose resolved teacher config equals the agent's."""
    name, _ = sweep_parameter(rows)
    if name not in swept:
        return None
    recipe = recipe or Recipe()
    extra = [f"--model.gate_space={margin_space}"] if margin_space != "prob" else []
    given = teacher_config(recipe, extra + [f"--{name}={swept[name]}"], f"sweep argument --{name}={swept[name]}")
    for row in rows:
        if teacher_config(recipe, extra + row.config_args(recipe.proxy), str(row.path)) == given:
            return row
    return None


def sweep_config(table: str, seeds: list[int], data: str = "synthetic", fixed: Optional[list[str]] = None,
                 ablations: Path = ABLATIONS) -> dict:
    """The sweep of one table; `fixed` are more of the program's own options (--pair=..., --epochs=...)."""
    rows = load_rows(table, ablations)
    name, values = sweep_parameter(rows)
    return {
        "program": PROGRAM,
        "name": f"kd-lightning {table} table ({data})",
        "project": PROJECT,
        "method": "grid",
        "metric": {"name": METRIC, "goal": "maximize"},
        "parameters": {
            "seed_everything": {"values": list(seeds)},
            **({"teacher": {"values": list(STUDENT_TEACHER_NAMES)}} if table in STUDENT_TABLES else {}),
            name: {"values": values},
        },
        "command": ["${env}", "${interpreter}", *MODULE, f"--table={table}", f"--data={data}", *(fixed or []),
                    "${args}"],
    }


def sweep_text(table: str, seeds: list[int], data: str = "synthetic", fixed: Optional[list[str]] = None,
               ablations: Path = ABLATIONS) -> str:
    import yaml

    rows = load_rows(table, ablations)
    header = [
        f"# W&B sweep of the {table} table: one agent run per row and seed (the teacher, then its student).",
        f"# Written by `make sweeps` (python -m kd_lightning.ablations sweep --write) from configs/ablations/{table}/:",
        "# edit the rows, not this file. Run it from the repository root with the venv active (agents run `python`):",
        f"#   wandb sweep configs/sweeps/{table}.yaml && wandb agent <entity>/<project>/<sweep id>",
        "# Full scale: python -m kd_lightning.ablations sweep --write --data=cifar100 --seeds 0 1 2 [--pair=T->S",
        "# --epochs=N --devices=N] --out=<folder> writes these sweeps with those arguments fixed before ${args}.",
        "# Rows: " + "; ".join(f"{r.name} = {r.label}" for r in rows),
    ]
    body = yaml.safe_dump(sweep_config(table, seeds, data, fixed, ablations), sort_keys=False, allow_unicode=True,
                          width=120)
    return "\n".join(header) + "\n" + body


def write_sweeps(seeds: list[int], out: Path = SWEEPS, data: str = "synthetic", fixed: Optional[list[str]] = None,
                 ablations: Path = ABLATIONS) -> list[Path]:
    from kd_lightning.utils.atomic import atomic_write_text

    paths = []
    for table in TABLES:
        path = out / f"{table}.yaml"
        atomic_write_text(path, sweep_text(table, seeds, data, fixed, ablations))
        paths.append(path)
    return paths


# --- the agent's program ---------------------------------------------------------------------------------------------
def parse_swept(extra: list[str]) -> dict[str, str]:
    """The agent's `--dotted.key=value` arguments as {key: value} (values as the agent wrote them)."""
    swept = {}
    for arg in extra:
        match = re.fullmatch(r"--([A-Za-z_][\w.]*)=(.*)", arg, flags=re.S)
        if not match:
            raise UserValueError(f"sweep arguments must look like --dotted.key=value, got {arg!r}")
        swept[match.group(1)] = match.group(2)
    return swept


def print_configs(recipe: Recipe, jobs: list[Job], runs: Path, which: str = "both") -> int:
    """`--print_config[=teacher|student|both]`: the resolved configs of this agent run's runs, one YAML document each
    (teacher first)."""
    from kd_lightning.cli import main as cli_main

    teacher, student = jobs
    commands = {
        "teacher": recipe.command("teacher", teacher.dir(runs), teacher.seed, list(teacher.args)),
        "student": recipe.command("student", student.dir(runs), student.seed, list(student.args),
                                  teacher_checkpoint=teacher.dir(runs) / "checkpoints" / "last.ckpt"),
    }
    chosen = [commands["teacher"], commands["student"]] if which == "both" else [commands[which]]
    for i, command in enumerate(chosen):
        if i:
            print("---", flush=True)
        os.chdir(ROOT)
        args = command[command.index("fit"):] + ["--print_config"]
        sys.argv = ["kd-lightning"]  # LightningCLI warns whenever it gets args while sys.argv has arguments
        try:
            cli_main(args)
        except SystemExit as stop:
            if stop.code not in (0, None):
                return int(stop.code)
    return 0


def summary_of(jobs: list[Job], runs: Path) -> dict[str, Any]:
    """The row's numbers for the agent's W&B run (student/test_acc is the sweep metric)."""
    out: dict[str, Any] = {}
    for job in jobs:
        stage = "teacher" if job.stage == "teacher" else "student"  # the sweep metric is student/test_acc
        results = read_results(job.dir(runs) / RESULTS_FILE) or {}
        out[f"{stage}/status"] = run_state(results if results else None)
        for which in ("last", "best"):
            section = results.get(which) or {}
            suffix = "" if which == "last" else "_best"
            for metric in ("test/acc", "test/loss", "test/d_intra", "test/d_inter", "test/ratio", "train/gate_open",
                           "test/soft_intra_var", "test/soft_nontarget_mass", "test/soft_entropy"):
                if section.get(metric) is not None:
                    out[f"{stage}/{metric.replace('/', '_', 1)}{suffix}"] = section[metric]
    return out


def agent_run(recipe: Recipe, jobs: list[Job], runs: Path, config: dict[str, Any]) -> int:
    import wandb

    from kd_lightning.ablations.runner import run_job

    run = wandb.init(project=os.environ.get("WANDB_PROJECT", PROJECT), job_type="sweep-row")
    run.config.update(config, allow_val_change=True)
    state = "complete"
    try:
        for job in jobs:
            state = run_job(job, recipe, runs)
            if state != "complete":
                break
        summary = summary_of(jobs, runs)
        run.log(summary)
        run.summary.update(summary)
        print(json.dumps(summary, sort_keys=True), flush=True)
    finally:
        run.finish(exit_code=0 if state == "complete" else 1)
    return 0 if state == "complete" else EXIT_FAILED


EXIT_FAILED = 3
#: Table D's `teacher` sweep values: the names runs.py gives its teachers (the same on every recipe).
STUDENT_TEACHER_NAMES = (PLAIN_CE, PAPER)


def student_table_jobs(recipe: Recipe, rows: list[Row], swept: dict[str, str], seed: int) -> tuple[Row, list[Job]]:
    """Table D's agent run: the teacher (`--teacher=plain_ce|paper`) and the student method (`--student=<row>`)."""
    teachers = {run.name: run for _, run in student_table_teachers(recipe)}
    by_name = {row.name: row for row in rows}
    if swept.get("teacher") not in teachers or swept.get("student") not in by_name:
        raise UserValueError(f"Table D's sweep passes --teacher={'|'.join(teachers)} and --student="
                         f"{'|'.join(by_name)}; got {swept}")
    row, teacher = by_name[swept["student"]], teachers[swept["teacher"]]
    variant = StudentVariant.from_row(row, recipe.proxy)
    return row, [teacher_job(recipe.data, teacher, seed), student_job(recipe.data, teacher, seed, variant)]


def add_recipe_options(parser: argparse.ArgumentParser) -> None:
    """The table-wide settings (make's variables), shared by the runner's commands and the sweep program."""
    parser.add_argument("--data", default="synthetic", help="synthetic | cifar100 | tiny_imagenet")
    parser.add_argument("--pair", default="", help="TEACHER->STUDENT backbones (default: the data set's)")
    parser.add_argument("--epochs", default="", help="trainer.max_epochs of every run (default: the configs')")
    parser.add_argument("--devices", default="", help="trainer.devices; N > 1 adds --trainer.strategy=ddp")
    parser.add_argument("--args", default="", help="extra kd-lightning arguments for every run (one shell string)")
    parser.add_argument("--runs", default=str(ROOT / "runs" / "ablations"), help="root folder of the runs")
    parser.add_argument("--ablations", default=str(ABLATIONS), help="folder of the row files (configs/ablations)")


def recipe_of(ns: argparse.Namespace) -> Recipe:
    if ns.epochs and not str(ns.epochs).isdigit():
        raise UserValueError(f"EPOCHS must be a whole number, got {ns.epochs!r}")
    return Recipe(data=ns.data, pair=parse_pair(ns.pair), epochs=int(ns.epochs) if ns.epochs else None,
                  devices=ns.devices or None, extra=shlex.split(ns.args or ""))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kd_lightning.ablations sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--write", action="store_true", help="write configs/sweeps/<table>.yaml from the rows "
                        "(with --data, --pair, --epochs, --devices, --args fixed in their command)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="with --write: the seed_everything values")
    parser.add_argument("--out", default=str(SWEEPS), help="with --write: the folder of the sweep files")
    parser.add_argument("--table", choices=TABLES)
    parser.add_argument("--margin_space", default="prob", choices=("prob", "logit"))
    parser.add_argument("--seed_everything", type=int, default=0)
    parser.add_argument("--print_config", nargs="?", const="both", choices=("teacher", "student", "both"),
                        help="print the teacher's and the student's configs (or one of them), run nothing")
    add_recipe_options(parser)
    ns, extra = parser.parse_known_args(argv)
    try:
        with report_user_errors("sweep", code=2):
            return _main(parser, ns, extra)
    except SystemExit as stop:
        return int(stop.code or 0)


def _main(parser: argparse.ArgumentParser, ns: argparse.Namespace, extra: list[str]) -> int:
    if ns.write:
        fixed = [f"--{name}={getattr(ns, name)}" for name in ("pair", "epochs", "devices", "args")
                 if getattr(ns, name)]
        fixed += [f"--margin_space={ns.margin_space}"] if ns.margin_space != "prob" else []
        for path in write_sweeps(ns.seeds, Path(ns.out), ns.data, fixed, Path(ns.ablations)):
            print(f"wrote {path}")
        return 0
    if not ns.table:
        parser.error("--table is required (or --write)")
    swept = parse_swept(extra)
    rows = load_rows(ns.table, Path(ns.ablations))
    recipe = recipe_of(ns)
    if ns.table in STUDENT_TABLES:
        row, jobs = student_table_jobs(recipe, rows, swept, ns.seed_everything)
    else:
        row = row_for_args(rows, swept, recipe, ns.margin_space)
        teacher = teacher_run(recipe, extra, ns.margin_space, source=f"sweep arguments {' '.join(extra)}")
        jobs = [teacher_job(ns.data, teacher, ns.seed_everything),
                student_job(ns.data, teacher, ns.seed_everything)]
    runs = Path(ns.runs).resolve()
    if ns.print_config:
        return print_configs(recipe, jobs, runs, ns.print_config)
    config = {"row": row.name if row else None, "row_label": row.label if row else None, "table": ns.table,
              "margin_space": ns.margin_space, "run": jobs[0].teacher, "data": ns.data,
              **{f"row.{k}": v for k, v in (row.model_overrides() if row else {}).items()}}
    return agent_run(recipe, jobs, runs, config)


if __name__ == "__main__":
    sys.exit(main())
