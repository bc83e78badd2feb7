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

from kd_lightning.ablations.grid.local import job_command, run_job
from kd_lightning.ablations.grid.recipe import Recipe, add_recipe_options, recipe_of
from kd_lightning.ablations.grid.runs import Job, student_job, table_teachers, teacher_config, teacher_job, teacher_run
from kd_lightning.ablations.grid.spec import ROOT, Row, Table, load_table, table_names
from kd_lightning.ablations.grid.store import RunState, RunStore
from kd_lightning.error_report import report_user_errors
from kd_lightning.exceptions import RowError, UserValueError

SWEEPS = ROOT / "configs" / "sweeps"
PROJECT = "kd-lightning"
EXIT_FAILED = 3
#: The numbers of a row that the agent's W&B run gets, per stage and for the last and the best epoch.
SUMMARY_METRICS = ("test/acc", "test/loss", "test/d_intra", "test/d_inter", "test/ratio", "train/gate_open",
                   "test/soft_intra_var", "test/soft_nontarget_mass", "test/soft_entropy")


# --- rows -> sweep files ---------------------------------------------------------------------------------------------
def model_overrides(row: Row) -> dict[str, Any]:
    """A teacher row's changes to `model.init_args`, as its row file writes them; `{class_path: X}` becomes X."""
    from jsonargparse import get_loader

    out: dict[str, Any] = {}
    for flag, path in zip(row.args, row.args[1:]):
        if flag != "--config":
            continue
        overlay = get_loader("yaml")((ROOT / path).read_text()) or {}
        model = overlay.get("model") or {}
        if set(overlay) - {"model"} or set(model) - {"init_args"}:
            raise RowError(f"{path}: a row may only change model.init_args; put other settings in the proxy or "
                           "data configs")
        for key, value in (model.get("init_args") or {}).items():
            out[key] = value["class_path"] if isinstance(value, dict) and set(value) == {"class_path"} else value
    return out


def sweep_parameters(table: Table) -> dict[str, list[Any]]:
    """The swept parameters that walk a table's rows, {key: values in row order}: with several student rows
    `teacher` and `student` (the rows' names); else the one model key every teacher row changes, or
    `model.init_args` with each row's changes as a YAML mapping (Table A: δ, and λ = 0 for its plain-CE row)."""
    import yaml

    if len(table.students) > 1:
        return {"teacher": [r.name for r in table.teachers], "student": [r.name for r in table.students]}
    overrides = [model_overrides(row) for row in table.teachers]
    keys = {tuple(o) for o in overrides}
    if len(keys) == 1 and len(next(iter(keys))) == 1:
        (key,) = next(iter(keys))
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
    import yaml

    rows = table.students if len(table.students) > 1 else table.teachers
    header = [
        f"# W&B sweep of the {table.name} table: one agent run per row and seed (the teacher, then its student).",
        f"# Written by `make sweeps` (python -m kd_lightning.ablations sweep --write) from configs/ablations/"
        f"{table.name}/:",
        "# edit the rows, not this file. Run it from the repository root with the venv active (agents run `python`):",
        f"#   wandb sweep configs/sweeps/{table.name}.yaml && wandb agent <entity>/<project>/<sweep id>",
        "# Full scale: python -m kd_lightning.ablations sweep --write --data=cifar100 --seeds 0 1 2 [--pair=T->S",
        "# --epochs=N --devices=N] --out=<folder> writes these sweeps with those arguments fixed before ${args}.",
        "# Rows: " + "; ".join(f"{r.name} = {r.label}" for r in rows),
    ]
    config = {
        "program": "kd_lightning/ablations/__main__.py",
        "name": f"kd-lightning {table.name} table ({data})",
        "project": PROJECT,
        "method": "grid",
        "metric": {"name": "student/test_acc", "goal": "maximize"},
        "parameters": {"seed_everything": {"values": list(seeds)},
                       **{k: {"values": v} for k, v in sweep_parameters(table).items()}},
        "command": ["${env}", "${interpreter}", "-m", "kd_lightning.ablations", "sweep", f"--table={table.name}",
                    f"--data={data}", *(fixed or []), "${args}"],
    }
    return "\n".join(header) + "\n" + yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=120)


# --- the agent's program ---------------------------------------------------------------------------------------------
def row_for_args(table: Table, swept: dict[str, str], recipe: Optional[Recipe] = None) -> Optional[Row]:
    """The teacher row whose sweep value the agent passed, or None for a value that is no row of the table. Values
    are compared as the CLI's parser resolves them (W&B may send 0.0 back as 0, an agent writes 1e-05)."""
    (name,) = sweep_parameters(table)
    if name not in swept:
        return None
    recipe = recipe or Recipe()
    extra = [f"--model.gate_space={table.space}"] if table.space != "prob" else []
    given = teacher_config(recipe, extra + [f"--{name}={swept[name]}"], f"sweep argument --{name}={swept[name]}")
    for row in table.teachers:
        if teacher_config(recipe, extra + row.config_args(recipe.proxy), row.name) == given:
            return row
    return None


def parse_swept(extra: list[str]) -> dict[str, str]:
    """The agent's `--dotted.key=value` arguments as {key: value} (values as the agent wrote them)."""
    swept = {}
    for arg in extra:
        match = re.fullmatch(r"--([A-Za-z_][\w.]*)=(.*)", arg, flags=re.S)
        if not match:
            raise UserValueError(f"sweep arguments must look like --dotted.key=value, got {arg!r}")
        swept[match.group(1)] = match.group(2)
    return swept


def agent_jobs(table: Table, recipe: Recipe, extra: list[str], seed: int) -> tuple[Optional[Row], list[Job]]:
    """(teacher row, [teacher job, student job]) of one agent run."""
    swept = parse_swept(extra)
    if len(table.students) > 1:  # `--teacher=<row> --student=<row>`
        teachers = {row.name: run for row, run in table_teachers(recipe, table)}
        students = {row.name: row for row in table.students}
        if swept.get("teacher") not in teachers or swept.get("student") not in students:
            raise UserValueError(f"table {table.name}'s sweep passes --teacher={'|'.join(teachers)} and --student="
                                 f"{'|'.join(students)}; got {swept}")
        teacher = teacher_job(recipe, teachers[swept["teacher"]], seed)
        row = next(r for r in table.teachers if r.name == swept["teacher"])
        return row, [teacher, student_job(recipe, teacher, seed, students[swept["student"]])]
    run = teacher_run(recipe, extra, table.space, source=f"sweep arguments {' '.join(extra)}")
    teacher = teacher_job(recipe, run, seed)
    return row_for_args(table, swept, recipe), [teacher, student_job(recipe, teacher, seed, table.students[0])]


def agent_run(recipe: Recipe, jobs: list[Job], store: RunStore, config: dict[str, Any]) -> int:
    """Train the row's runs inside one W&B run, which gets their numbers (student/test_acc is the sweep metric)."""
    import wandb

    run = wandb.init(project=os.environ.get("WANDB_PROJECT", PROJECT), job_type="sweep-row")
    run.config.update(config, allow_val_change=True)
    state = RunState.COMPLETE.value
    try:
        for job in jobs:
            state = run_job(job, recipe, store)
            if state != RunState.COMPLETE.value:
                break
        summary: dict[str, Any] = {}
        for job in jobs:
            results = store.results(job) or {}
            summary[f"{job.stage}/status"] = RunState.of(results or None).value
            for which, suffix in (("last", ""), ("best", "_best")):
                section = results.get(which) or {}
                for metric in SUMMARY_METRICS:
                    if section.get(metric) is not None:
                        summary[f"{job.stage}/{metric.replace('/', '_', 1)}{suffix}"] = section[metric]
        run.log(summary)
        run.summary.update(summary)
        print(json.dumps(summary, sort_keys=True), flush=True)
    finally:
        run.finish(exit_code=0 if state == RunState.COMPLETE.value else 1)
    return 0 if state == RunState.COMPLETE.value else EXIT_FAILED


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kd_lightning.ablations sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--write", action="store_true", help="write configs/sweeps/<table>.yaml from the tables "
                        "(with --data, --pair, --epochs, --devices, --args fixed in their command)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="with --write: the seed_everything values")
    parser.add_argument("--out", default=str(SWEEPS), help="with --write: the folder of the sweep files")
    parser.add_argument("--table")
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
        from kd_lightning.utils.atomic import atomic_write_text

        fixed = [f"--{name}={getattr(ns, name)}" for name in ("pair", "epochs", "devices", "args", "student_args")
                 if getattr(ns, name)]
        fixed += [f"--margin_space={ns.margin_space}"] if ns.margin_space != "prob" else []
        for name in table_names(ns.ablations):
            path = Path(ns.out) / f"{name}.yaml"
            atomic_write_text(path, sweep_text(load_table(name, root=ns.ablations), ns.seeds, ns.data, fixed))
            print(f"wrote {path}")
        return 0
    if not ns.table:
        parser.error("--table is required (or --write)")
    table = load_table(ns.table, ns.margin_space, Path(ns.ablations))
    recipe, store = recipe_of(ns), RunStore(ns.runs)
    row, jobs = agent_jobs(table, recipe, extra, ns.seed_everything)
    if ns.print_config:  # one YAML document per run, teacher first, each printed by `kd-lightning fit --print_config`
        which = {"both": jobs, "teacher": jobs[:1], "student": jobs[1:]}[ns.print_config]
        for i, job in enumerate(which):
            if i:
                print("---", flush=True)
            code = subprocess.run(job_command(job, recipe, store) + ["--print_config"], cwd=ROOT).returncode
            if code:
                return code
        return 0
    config = {"row": row.name if row else None, "row_label": row.label if row else None, "table": ns.table,
              "margin_space": ns.margin_space, "run": jobs[0].name, "data": ns.data,
              **{f"row.{k}": v for k, v in (model_overrides(row) if row else {}).items()}}
    return agent_run(recipe, jobs, store, config)
