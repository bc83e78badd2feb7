"""W&B sweeps of the tables (docs/ablations.md, "W&B sweep agents"): the writer of configs/sweeps/<table>.yaml, from
the rows, and the program an agent runs, one row and seed each (the teacher, then its student, through
local.run_job, so into the tables' run folders)."""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any, Optional

import yaml
from jsonargparse import get_loader

from kd_lightning.ablations.grid.local import job_command, run_job
from kd_lightning.ablations.grid.recipe import Recipe, recipe_of
from kd_lightning.ablations.grid.runs import Job, TeacherRun, student_job, table_teachers, teacher_job, teacher_run
from kd_lightning.ablations.grid.spec import ROOT, Row, Table, load_table, table_names
from kd_lightning.ablations.grid.store import RunState, RunStore
from kd_lightning.exceptions import RowError, UserValueError
from kd_lightning.utils.atomic import atomic_write_text

SWEEPS = ROOT / "configs" / "sweeps"
PROJECT = "kd-lightning"
EXIT_FAILED = 3
#: The numbers of a row that the agent's W&B run gets, per stage and for the last and the best epoch.
SUMMARY_METRICS = ("test/acc", "test/loss", "test/d_intra", "test/d_inter", "test/ratio", "train/gate_open",
                   "test/soft_intra_var", "test/soft_nontarget_mass", "test/soft_entropy")


# --- rows -> sweep files ---------------------------------------------------------------------------------------------
def model_overrides(row: Row) -> dict[str, Any]:
    """A teacher row's changes to `model.init_args`, as its row file writes them; `{class_path: X}` becomes X."""
    out: dict[str, Any] = {}
    for path in (b for a, b in zip(row.args, row.args[1:]) if a == "--config"):
        overlay = get_loader("yaml")((ROOT / path).read_text()) or {}
        model = overlay.get("model") or {}
        if set(overlay) - {"model"} or set(model) - {"init_args"}:
            raise RowError(f"{path}: a row may only change model.init_args; put other settings in the proxy or "
                           "data configs")
        out.update({k: v["class_path"] if isinstance(v, dict) and set(v) == {"class_path"} else v
                    for k, v in (model.get("init_args") or {}).items()})
    return out


def sweep_parameters(table: Table) -> dict[str, list[Any]]:
    """The swept parameters that walk a table's rows, {key: values in row order}: with several student rows
    `teacher` and `student` (the rows' names); else the one model key every teacher row changes, or
    `model.init_args` with each row's changes as a YAML mapping (Table A: δ, and λ = 0 for its plain-CE row)."""
    if len(table.students) > 1:
        return {"teacher": [r.name for r in table.teachers], "student": [r.name for r in table.students]}
    overrides = [model_overrides(row) for row in table.teachers]
    keys = {key for o in overrides for key in o}
    if len(keys) == 1 and all(overrides):  # every row changes that one key
        (key,) = keys
        # `null`, not None: the agent formats values with str(), and jsonargparse reads `None` as a string.
        name, values = f"model.{key}", ["null" if o[key] is None else o[key] for o in overrides]
    else:
        name = "model.init_args"
        values = [yaml.safe_dump(o, default_flow_style=True, width=10**6, sort_keys=True).strip() for o in overrides]
    if len({json.dumps(v) for v in values}) != len(values):
        raise UserValueError(f"two rows of table {table.name!r} give the same {name}: {values}")
    return {name: values}


def sweep_text(table: Table, seeds: list[int], data: str = "synthetic", fixed: Optional[list[str]] = None) -> str:
    """The sweep file of one table; `fixed` are more of the program's own options (--pair=..., --epochs=...)."""
    rows = table.students if len(table.students) > 1 else table.teachers
    header = [
        f"# W&B sweep of the {table.name} table: one agent run per row and seed (the teacher, then its student).",
        f"# Written by `make sweeps` (python -m kd_lightning.sweeps --write) from configs/ablations/"
        f"{table.name}/:",
        "# edit the rows, not this file. Run it from the repository root with the venv active (agents run `python`):",
        f"#   wandb sweep configs/sweeps/{table.name}.yaml && wandb agent <entity>/<project>/<sweep id>",
        "# Full scale: python -m kd_lightning.sweeps --write --data=cifar100 --seeds 0 1 2 [--pair=T->S",
        "# --epochs=N --devices=N] --out=<folder> writes these sweeps with those arguments fixed before ${args}.",
        "# Rows: " + "; ".join(f"{r.name} = {r.label}" for r in rows),
    ]
    config = {"program": "kd_lightning/sweeps/__main__.py", "name": f"kd-lightning {table.name} table ({data})",
              "project": PROJECT, "method": "grid", "metric": {"name": "student/test_acc", "goal": "maximize"},
              "parameters": {"seed_everything": {"values": list(seeds)},
                             **{k: {"values": v} for k, v in sweep_parameters(table).items()}},
              "command": ["${env}", "${interpreter}", "-m", "kd_lightning.sweeps", f"--table={table.name}",
                          f"--data={data}", *(fixed or []), "${args}"]}
    return "\n".join(header) + "\n" + yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=120)


# --- the agent's program ---------------------------------------------------------------------------------------------
def row_for_args(table: Table, swept: dict[str, str], recipe: Optional[Recipe] = None) -> Optional[Row]:
    """The teacher row whose run the agent's sweep values ask for, or None. Values are compared as the CLI's parser
    resolves them (W&B may send 0.0 back as 0, an agent writes 1e-05)."""
    recipe = recipe or Recipe()
    return _row_of(table, recipe, _swept_run(table, recipe, [f"--{key}={value}" for key, value in swept.items()]))


def _swept_run(table: Table, recipe: Recipe, args: list[str]) -> TeacherRun:
    return teacher_run(recipe, args, table.space, source=f"sweep arguments {' '.join(args)}")


def _row_of(table: Table, recipe: Recipe, run: TeacherRun) -> Optional[Row]:
    return next((row for row, row_run in table_teachers(recipe, table) if row_run == run), None)


def parse_swept(extra: list[str]) -> dict[str, str]:
    """The agent's `--dotted.key=value` arguments as {key: value} (values as the agent wrote them)."""
    for arg in extra:
        if not re.fullmatch(r"--[A-Za-z_][\w.]*=.*", arg, flags=re.S):
            raise UserValueError(f"sweep arguments must look like --dotted.key=value, got {arg!r}")
    return dict(arg[2:].split("=", 1) for arg in extra)


def agent_jobs(table: Table, recipe: Recipe, extra: list[str], seed: int) -> tuple[Optional[Row], list[Job]]:
    """(teacher row, [teacher job, student job]) of one agent run."""
    swept = parse_swept(extra)
    if len(table.students) == 1:
        run = _swept_run(table, recipe, extra)  # the row's run is resolved once
        row, student = _row_of(table, recipe, run), table.students[0]
    else:  # `--teacher=<row> --student=<row>`
        teachers = {row.name: (row, run) for row, run in table_teachers(recipe, table)}
        students = {row.name: row for row in table.students}
        if swept.get("teacher") not in teachers or swept.get("student") not in students:
            raise UserValueError(f"table {table.name}'s sweep passes --teacher={'|'.join(teachers)} and --student="
                                 f"{'|'.join(students)}; got {swept}")
        (row, run), student = teachers[swept["teacher"]], students[swept["student"]]
    teacher = teacher_job(recipe, run, seed)
    return row, [teacher, student_job(recipe, teacher, seed, student)]


def run(ns: argparse.Namespace, extra: list[str]) -> int:
    """The sweep program (__main__.py): write the sweep files (--write), or train one agent's row and seed (`extra`:
    its swept values) inside one W&B run, which gets their numbers (student/test_acc is the sweep metric)."""
    if ns.write:
        fixed = [f"--{name}={getattr(ns, name)}" for name in ("pair", "epochs", "devices", "args", "student_args")
                 if getattr(ns, name)]
        fixed += [f"--margin_space={ns.margin_space}"] if ns.margin_space != "prob" else []
        for name in table_names(ns.ablations):
            path = Path(ns.out) / f"{name}.yaml"
            atomic_write_text(path, sweep_text(load_table(name, root=ns.ablations), ns.seeds, ns.data, fixed))
            print(f"wrote {path}")
        return 0
    if not ns.table:
        raise UserValueError("--table is required (or --write)")
    table = load_table(ns.table, ns.margin_space, Path(ns.ablations))
    recipe, store = recipe_of(ns), RunStore(ns.runs)
    row, jobs = agent_jobs(table, recipe, extra, ns.seed_everything)
    if ns.print_config:  # one YAML document per run, teacher first, each printed by `kd-lightning fit --print_config`
        for i, job in enumerate({"both": jobs, "teacher": jobs[:1], "student": jobs[1:]}[ns.print_config]):
            if i:
                print("---", flush=True)
            code = subprocess.run(job_command(job, recipe, store) + ["--print_config"], cwd=ROOT).returncode
            if code:
                return code
        return 0
    import wandb

    wandb_run = wandb.init(project=os.environ.get("WANDB_PROJECT", PROJECT), job_type="sweep-row")
    wandb_run.config.update({"row": row and row.name, "row_label": row and row.label, "table": ns.table,
                             "margin_space": ns.margin_space, "run": jobs[0].name, "data": ns.data,
                             **{f"row.{k}": v for k, v in (model_overrides(row) if row else {}).items()}},
                            allow_val_change=True)
    complete = False
    try:
        complete = all(run_job(job, recipe, store) == RunState.COMPLETE.value for job in jobs)  # stops at a failure
        summary: dict[str, Any] = {}
        for job in jobs:
            results = store.results(job) or {}
            summary[f"{job.stage}/status"] = RunState.of(results or None).value
            for which, suffix in (("last", ""), ("best", "_best")):
                section = results.get(which) or {}
                summary.update({f"{job.stage}/{metric.replace('/', '_', 1)}{suffix}": section[metric]
                                for metric in SUMMARY_METRICS if section.get(metric) is not None})
        wandb_run.log(summary)
        wandb_run.summary.update(summary)
        print(json.dumps(summary, sort_keys=True), flush=True)
    finally:
        wandb_run.finish(exit_code=0 if complete else 1)
    return 0 if complete else EXIT_FAILED
