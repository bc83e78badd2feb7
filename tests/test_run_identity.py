"""A run is what its resolved config says (issue 17): rows, sweep values and recipes are resolved by the CLI's own
parser before anything trains; another spelling of a value is the same run; a bad row stops the table at once."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kd_lightning.ablations.grid import local as runner, recipe, runs, spec
from kd_lightning.ablations.grid.store import RunStore
from kd_lightning.exceptions import KDLightningError, RowError

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
PROXY = recipe.Recipe(data="synthetic")


# --- another spelling of the same value is the same run -----------------------------------------------------------
@pytest.mark.parametrize("args, name", [
    (["--model.contrastive_weight=5e-2"], "paper"),  # YAML 1.1 read 5e-2 as a string: run "contrastive_weight=5e-2"
    (["--model.contrastive_weight=0e0"], "plain_ce"),
    (["--model.contrastive_weight=0"], "plain_ce"),
    (["--model.gate_delta=5E-1"], "paper"),
    (["--model.init_args={gate_delta: 1e-1}"], "gate_delta=0.1"),
])
def test_spellings_of_a_value_are_one_run(args, name):
    assert runs.teacher_run(PROXY, args).name == name


def test_an_agents_str_float_is_the_rows_decimal():
    # W&B agents format floats with str(): 0.00001 arrives as 1e-05.
    agent = runs.teacher_run(PROXY, ["--model.contrastive_weight=1e-05"])
    row = runs.teacher_run(PROXY, ["--model.contrastive_weight=0.00001"])
    assert agent == row and agent.name == "contrastive_weight=1e-05"
    a_job, b_job = runs.teacher_job(PROXY, agent, 0), runs.teacher_job(PROXY, row, 0)
    a = runner.expected_identity(a_job, PROXY, RunStore("/r"))
    b = runner.expected_identity(b_job, PROXY, RunStore("/r"))
    assert a == b and a["model"]["init_args"]["contrastive_weight"] == 1e-05
    assert a_job.digest == b_job.digest  # one folder


def test_a_change_outside_the_teachers_init_args_is_part_of_the_name():
    # Not "plain_ce": that run has the recipe's lr. The old merger named this run plain_ce as well.
    assert runs.teacher_run(PROXY, ["--model.contrastive_weight=0", "--model.lr=0.1"]).name == "plain_ce+lr=0.1"
    assert runs.teacher_run(PROXY, ["--trainer.max_epochs=3"]).name == "trainer.max_epochs=3"


# --- bad rows stop the table before the first run starts ------------------------------------------------------------
def copy_table(table: str, dest: Path, extra_rows: dict[str, str]) -> Path:
    """A copy of `table`'s rows (files and manifest) with `extra_rows` ({name: file text}) added as teacher rows."""
    folder = dest / table
    shutil.copytree(spec.ABLATIONS / table, folder)
    manifest = (folder / spec.MANIFEST).read_text()
    for name, text in extra_rows.items():
        (folder / f"{name}.yaml").write_text(text)
        manifest = manifest.replace("teachers:\n", f"teachers:\n  - name: {name}\n    label: {name}\n", 1)
    (folder / spec.MANIFEST).write_text(manifest)
    return dest


def ablations_run(table: str, ablations: Path, runs_dir: Path, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.run([PY, "-m", "kd_lightning.ablations", "run", table, "--ablations", str(ablations),
                           "--runs", str(runs_dir), "--out", str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("text, says", [
    ("model:\n  init_args:\n    gate_detla: 0.3\n", "unknown key 'model.gate_detla'"),
    ("model:\n  init_args:\n    gate_delta: wide\n", "key 'model.gate_delta' expects float or null, got 'wide'"),
])
def test_a_bad_row_stops_the_table_before_any_run(tmp_path, text, says):
    ablations = copy_table("margin", tmp_path / "ablations", {"bad": text})
    started = time.monotonic()
    proc = ablations_run("margin", ablations, tmp_path / "runs", tmp_path / "results")
    elapsed = time.monotonic() - started
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("ablations: error: "), proc.stderr
    assert str(ablations / "margin" / "bad.yaml") in errors[0] and says in errors[0], errors[0]
    assert "[run]" not in proc.stdout and not (tmp_path / "runs").exists()  # no run started, none trained
    assert elapsed < 120  # the time it takes to parse (imports included), not to train 12 runs


def test_a_manifest_naming_a_missing_method_stops_the_table(tmp_path):
    ablations = copy_table("students", tmp_path / "ablations", {})
    manifest = ablations / "students" / spec.MANIFEST
    manifest.write_text(manifest.read_text().replace("students: all", "students: [kd, dits]"))
    proc = ablations_run("students", ablations, tmp_path / "runs", tmp_path / "results")
    assert proc.returncode == 2
    assert "no distillation method named dits" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_resolving_names_the_row_file_and_the_key(tmp_path):
    bad = tmp_path / "row.yaml"
    bad.write_text("model:\n  init_args:\n    contrastive_wieght: 0.1\n")
    with pytest.raises(RowError, match=rf"{bad}: unknown key 'model.contrastive_wieght'") as info:
        runs.teacher_run(PROXY, ["--config", str(bad)])
    assert isinstance(info.value, KDLightningError)
    with pytest.raises(RowError, match=r"missing.yaml does not exist"):
        runs.teacher_run(PROXY, ["--config", str(tmp_path / "missing.yaml")])


def test_no_yaml_merging_left_in_the_table_code():
    # Configs are resolved by the CLI's parser; PyYAML loads only a W&B sweep file (sweep_expand), never a config.
    for path in (ROOT / "kd_lightning" / "ablations").rglob("*.py"):
        text = path.read_text()
        if path.name != "expand.py":
            assert "yaml.safe_load" not in text, path


# --- one GPU means one GPU --------------------------------------------------------------------------------------------
def test_devices_default_to_one_process():
    from kd_lightning.fit_parser import resolve

    plain = resolve(["--model=kd_lightning.modules.TeacherModule", "--data=kd_lightning.data.SyntheticDataModule"],
                    "test")
    assert plain.trainer.devices == 1 and plain.trainer.sync_batchnorm is True
    with_defaults = resolve(["--config", "configs/trainer/default.yaml", "--config", "configs/data/cifar100.yaml",
                             "--config", "configs/teacher/resnet32x4.yaml"], "test")
    assert with_defaults.trainer.devices == 1  # was "auto": every GPU of the node


# --- a new option with its default value changes no run's identity ----------------------------------------------
def test_a_new_option_at_its_default_keeps_every_identity(monkeypatch):
    from kd_lightning import identity as core
    from kd_lightning.fit_parser import fit_defaults as _fit_defaults, resolve

    ns = resolve(["--config", "configs/demo/data.yaml", "--config", "configs/demo/teacher.yaml"], "test")
    before = core.digest(core.canonical(ns, _fit_defaults))
    fit_defaults = {**_fit_defaults(), "fake_new_option": 7}
    monkeypatch.setattr(core, "class_defaults", lambda path: {"fake_new_arg": 3})
    for option, arg, same in ((7, 3, True), (8, 3, False), (7, 4, False)):
        changed = ns.clone()
        changed["fake_new_option"] = option  # an option of the parser that identity v1 did not know
        changed["model.init_args.fake_new_arg"] = arg  # likewise, a new constructor argument of the model
        after = core.digest(core.canonical(changed, lambda: fit_defaults))
        assert (after == before) is same, (option, arg)
    # A key identity v1 knew counts at its default too: dropping it would rename every run folder.
    assert "trainer.max_epochs" in core.KNOWN_KEYS[""]


def test_what_lambda_zero_ignores_is_what_the_teacher_class_declares(monkeypatch):
    from kd_lightning.modules import TeacherModule

    args = ["--model.contrastive_weight=0", "--model.memory_size=8"]
    assert runs.teacher_run(PROXY, args).name == "plain_ce"
    monkeypatch.setattr(TeacherModule, "CONTRASTIVE_ONLY",
                        tuple(a for a in TeacherModule.CONTRASTIVE_ONLY if a != "memory_size"))
    assert runs.teacher_run(PROXY, args).name == "plain_ce+memory_size=8"


# --- migrate: runs of the layout before the store move into it, other recipes' runs stay -----------------------------
def test_migrate_moves_the_recipes_old_runs_and_names_the_others(tmp_path, capsys):
    from kd_lightning.ablations.grid.migrate import migrate
    from kd_lightning.ablations.grid.store import RECIPE_FILE, legacy_dir, read_json

    store, old = RunStore(tmp_path / "new"), tmp_path / "old"
    ours, other, taken = runs.grid_jobs(PROXY, spec.tables_of(["margin"]), 0)[:3]
    for job in (ours, other, taken):
        identity = runner.expected_identity(job, PROXY, store)
        if job is other:  # another recipe's run: trained for 3 epochs, not the proxy's 20
            identity["trainer"]["max_epochs"] = 3
        legacy_dir(old, job).mkdir(parents=True)
        (legacy_dir(old, job) / RECIPE_FILE).write_text(json.dumps({"identity": identity}))
    store.dir(taken).mkdir(parents=True)  # its store folder exists already: not overwritten
    assert migrate(old, PROXY, store, spec.ABLATIONS) == 1
    assert not legacy_dir(old, ours).exists() and store.dir(ours).relative_to(store.root) == Path(ours.key)
    assert read_json(store.dir(ours) / RECIPE_FILE)["identity"] == runner.expected_identity(ours, PROXY, store)
    out = capsys.readouterr().out
    assert f"[migrate] moved 1 runs into {store.root}" in out
    assert f"not moved: {legacy_dir(old, other)}: trainer.max_epochs: 3 -> 20" in out
    assert f"not moved: {legacy_dir(old, taken)}: {store.dir(taken)} exists already" in out
    assert legacy_dir(old, other).is_dir() and not any(store.dir(taken).iterdir())
