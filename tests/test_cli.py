"""The walking skeleton through the real console entry point: teacher -> student, config handling, W&B, results."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT, read_results, run_cli, student_args, teacher_args

pytestmark = pytest.mark.slow


def test_teacher_run_writes_checkpoints_config_and_results(trained_teacher: Path):
    run = trained_teacher
    assert (run / "checkpoints" / "best.ckpt").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["class_path"] == "kd_lightning.modules.TeacherModule"
    results = read_results(run)
    assert results["num_classes"] == 5  # linked from the datamodule (the model default is 100)
    assert results["status"] == "complete" and results["stage"] == "TeacherModule"
    assert results["seed"] == 0 and len(results["config_digest"]) == 10
    assert [h["epoch"] for h in results["history"]] == [0, 1]
    for which in ("last", "best"):
        metrics = results[which]
        assert 0.0 <= metrics["test/acc"] <= 1.0
        assert metrics["test/acc"] <= metrics["test/acc_top5"]
        assert metrics["test/loss"] > 0
        # Present in both sections; their values are pinned to naive loops in tests/test_geometry.py.
        assert {"test/d_intra", "test/d_inter", "test/ratio", "test/soft_entropy"} <= set(metrics)
    last = results["last"]
    # tol: loss and each part are float32 epoch means over 4 steps, rounded apart: ~1e-6 rel; 1e-4 ≪ the 0.05·ℓ_con term
    assert last["train/loss"] == pytest.approx(last["train/loss_ce"] + 0.05 * last["train/loss_contrastive"],
                                               rel=1e-4, abs=1e-6)
    assert 0.0 <= last["train/gate_open"] <= 1.0
    best_epoch = max(results["history"], key=lambda h: h["val/acc"])["epoch"]
    assert results["best_epoch"] == best_epoch
    # The checkpoint records what a student needs, in plain types: it loads with weights_only=True.
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["kd_lightning_teacher"]["backbone"] == "resnet8"
    assert any(k.startswith("memory.") for k in ckpt["state_dict"])


def test_student_distils_from_teacher_checkpoint(trained_teacher: Path, tmp_path: Path):
    teacher_ckpt = trained_teacher / "checkpoints" / "last.ckpt"
    proc = run_cli(student_args(tmp_path, teacher_ckpt))
    assert "teacher accuracy on the validation set" in proc.stdout
    results = read_results(tmp_path)
    assert results["status"] == "complete" and results["stage"] == "StudentModule"
    last = results["last"]
    # tol: as for the teacher: float32 epoch means over 4 steps, rounded apart (~1e-6 rel); 1e-4 ≪ a wrong α or β
    assert last["train/loss"] == pytest.approx(0.1 * last["train/loss_ce"] + 0.9 * last["train/loss_kd"], rel=1e-4)
    assert last["train/loss_kd"] >= 0
    assert 0.0 <= results["teacher_val_acc"] <= 1.0
    # The teacher is not part of the student's checkpoint.
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["state_dict"] and not any(k.startswith("teacher") for k in ckpt["state_dict"])
    student_params = sum(1 for k in ckpt["state_dict"] if k.startswith("backbone."))
    teacher_params = torch.load(teacher_ckpt, weights_only=True)["state_dict"]
    assert student_params == sum(1 for k in teacher_params if k.startswith("backbone."))  # same arch, not doubled


def test_student_alone_overlay_needs_no_teacher(tmp_path: Path):
    run_cli(student_args(tmp_path, None, "--config", str(ROOT / "configs/student/alone.yaml"), epochs=1))
    results = read_results(tmp_path)
    assert "train/loss_kd" not in results["last"]
    # tol: loss is 1.0·loss_ce exactly, logged and averaged alike: bit-equal expected; 1e-5 is ~100 float32 ulps
    assert results["last"]["train/loss"] == pytest.approx(results["last"]["train/loss_ce"], rel=1e-5)


def test_configs_compose_later_overrides_earlier_and_print_config(tmp_path: Path):
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump({"data": {"class_path": "kd_lightning.data.SyntheticDataModule",
                                             "init_args": {"num_classes": 7, "batch_size": 16}}}))
    proc = run_cli(["fit", "--config", str(ROOT / "configs/teacher/resnet32x4.yaml"), "--config", str(data),
                    "--config", str(ROOT / "configs/trainer/default.yaml"), "--model.gate_delta=0.1",
                    "--print_config"])
    config = yaml.safe_load(proc.stdout)
    assert config["model"]["init_args"]["backbone"] == "resnet32x4"
    assert config["model"]["init_args"]["gate_delta"] == 0.1
    assert config["model"]["init_args"]["objective"]["class_path"] == "kd_lightning.objectives.IntraClassContrastive"
    assert config["data"]["init_args"]["num_classes"] == 7
    assert config["trainer"]["max_epochs"] == 240
    assert config["trainer"]["logger"]["class_path"].endswith("WandbLogger")
    # A later overlay only changes what it names.
    proc = run_cli(["fit", "--config", str(ROOT / "configs/student/resnet8x4.yaml"), "--config",
                    str(ROOT / "configs/student/rkd.yaml"), "--print_config"])
    student = yaml.safe_load(proc.stdout)["model"]["init_args"]
    assert (student["backbone"], student["rkd_distance_weight"], student["rkd_angle_weight"]) == ("resnet8x4", 25.0, 50.0)


def test_console_script_is_the_same_program():
    script = Path(sys.executable).parent / "kd-lightning"
    assert script.is_file(), "pip install -e . should create the kd-lightning console script"
    import subprocess
    out = subprocess.run([str(script), "fit", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--model.help" in out.stdout and "--test_after_fit" in out.stdout


def test_rerun_into_existing_run_dir_is_refused_and_a_resume_continues_the_wandb_run(tmp_path: Path):
    args = teacher_args(tmp_path, epochs=1)
    args = [a for a in args if a != "--trainer.logger=false"]
    args += ["--trainer.logger=pytorch_lightning.loggers.WandbLogger", "--trainer.logger.project=kd-lightning-tests"]
    run_cli(args)
    again = run_cli(args, check=False)  # a second run into a finished run's folder: refused, nothing touched
    assert again.returncode == 1 and f"run folder {tmp_path} already holds a complete run" in again.stderr
    run_cli([a.replace("max_epochs=1", "max_epochs=2") for a in args] + ["--ckpt_path=last"])
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    run_id = (tmp_path / "wandb_run_id.txt").read_text().strip()
    assert all(run.name.endswith(f"-{run_id}") for run in runs)  # one W&B run, resumed
    # The resolved CLI config is in the W&B run config (stored in the offline run file).
    blob = next(runs[-1].glob("*.wandb")).read_bytes()
    assert b"gate_delta" in blob and b"kd_lightning.modules.TeacherModule" in blob
    assert read_results(tmp_path)["status"] == "complete"


def test_no_private_lightning_cli_method_is_overridden_and_the_private_one_used_exists():
    """cli.py extends LightningCLI through its public hooks (parse_arguments, before_instantiate_classes,
    before_fit/after_fit, the constructor); the private names it and kd_lightning/fit_parser.py call must still
    exist."""
    from pytorch_lightning.cli import LightningCLI

    from kd_lightning.cli import KDLightningCLI

    private = [name for name in vars(KDLightningCLI)
               if name.startswith("_") and not name.startswith("__") and hasattr(LightningCLI, name)]
    assert private == [], f"KDLightningCLI overrides LightningCLI's private {private}"
    assert callable(getattr(LightningCLI, "_dump_config", None)), "LightningCLI._dump_config is gone: see before_fit"
    assert callable(getattr(LightningCLI, "_parser", None)), "LightningCLI._parser is gone: see before_fit, fit_parser"
