"""What a run prints: a progress bar on a terminal, one line per epoch otherwise, and none of the libraries' noise.

Plus the two test passes after fit under their own names in the loggers, and the hint for syncing offline W&B runs.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from torch.utils.data import DataLoader

from conftest import ROOT, TINY_DATA, read_results, run_cli
from kd_lightning.callbacks import ClampLogInterval, EpochLog
from kd_lightning.utils.wandb_hint import sync_hint

# What every run printed before (issue 13): Lightning's litlogger tip, torch's LeafSpec deprecation, Lightning's
# log interval warning, wandb's anonymous-setting warning and its banner and sync hint, and any Python warning
# (its `file.py:LINE: ` prefix).
NOISE = re.compile(r"warn|deprecat|tip:|logging interval|wandb|\.py:\d+: ", re.IGNORECASE)
EPOCH_LINE = re.compile(r"^epoch (\d+)/2  train/loss \d+\.\d{4}  val/acc [01]\.\d{4}  \d+\.\d s$", re.MULTILINE)


@pytest.mark.slow
def test_fit_prints_epoch_lines_and_no_noise_and_logs_both_test_passes(tmp_path: Path):
    # As `make demo` runs: the default trainer config (W&B logger, log_every_n_steps 50 > 4 batches), not a TTY.
    proc = run_cli(["fit", "--config", str(ROOT / "configs/trainer/default.yaml"), *TINY_DATA,
                    "--model=kd_lightning.modules.TeacherModule", "--model.backbone=resnet8", "--model.memory_size=8",
                    "--trainer.max_epochs=2", "--trainer.accelerator=cpu", f"--trainer.default_root_dir={tmp_path}",
                    "--trainer.enable_model_summary=false"])
    output = proc.stdout + proc.stderr
    # The run's own two lines (where it runs; what it measured, with the W&B sync command) are what it says.
    ours = [line for line in output.splitlines() if line.startswith("kd-lightning fit: ")]
    assert len(ours) == 2 and ours[1].startswith("kd-lightning fit: complete: test/acc last "), ours
    output = "\n".join(line for line in output.splitlines() if line not in ours)
    assert NOISE.search(output) is None, f"noise: {NOISE.search(output).group()!r} in\n{output}"
    assert EPOCH_LINE.findall(proc.stdout) == ["1", "2"], proc.stdout
    assert "━" not in output and "it/s" not in output  # no progress bar written into the captured output

    # wandb was silent, but its offline run is complete, and the hint names it.
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert sync_hint([tmp_path]) == f"W&B logged offline; to upload: wandb sync {runs[0]}"
    assert ours[1].endswith(f"; W&B offline: wandb sync {runs[0]}")

    # Both test passes reach W&B (its run file holds the metric names), the best one under test_best/.
    blob = next(runs[0].glob("*.wandb")).read_bytes()
    for name in ("acc", "loss", "acc_top5", "ratio"):
        assert f"test/{name}".encode() in blob and f"test_best/{name}".encode() in blob, name
    # results.json keeps `test/*` in both sections.
    results = read_results(tmp_path)
    for which in ("last", "best"):
        assert 0.0 <= results[which]["test/acc"] <= 1.0
        assert not [k for k in results[which] if k.startswith("test_best")]


@pytest.mark.parametrize("terminal, flag, bar", [
    (True, None, True),     # a terminal: Lightning's bar
    (False, None, False),   # redirected: no bar, EpochLog's lines
    (True, "false", False),  # the config turns the bar off: EpochLog's lines even on a terminal
])
def test_progress_bar_only_on_a_terminal(terminal: bool, flag: str | None, bar: bool, tmp_path: Path, monkeypatch):
    import kd_lightning.cli as cli_module

    monkeypatch.setattr(sys, "argv", sys.argv[:1])  # the CLI parses `args` only, not pytest's flags
    monkeypatch.setattr(cli_module, "stdout_is_terminal", lambda: terminal)
    args = ["--model=kd_lightning.modules.TeacherModule", "--model.backbone=resnet8", *TINY_DATA,
            "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}"]
    if flag is not None:
        args.append(f"--trainer.enable_progress_bar={flag}")
    cli = cli_module.KDLightningCLI(args=args, run=False)
    assert (cli.trainer.progress_bar_callback is not None) is bar
    assert any(isinstance(cb, EpochLog) for cb in cli.trainer.callbacks)


def test_epoch_log_prints_only_without_a_bar_on_rank_zero(capsys):
    log = EpochLog()
    log.on_train_epoch_start(None, None)
    trainer = SimpleNamespace(progress_bar_callback=None, is_global_zero=True, current_epoch=2, max_epochs=20,
                              sanity_checking=False, callback_metrics={"train/loss": 1.23456, "val/acc": 0.5})
    log.on_validation_epoch_end(trainer, None)
    log.on_train_epoch_end(trainer, None)
    assert re.fullmatch(r"epoch  3/20  train/loss 1\.2346  val/acc 0\.5000  0\.\d s\n", capsys.readouterr().out)
    for quiet in ({"progress_bar_callback": object()}, {"is_global_zero": False}):
        log.on_train_epoch_end(SimpleNamespace(**{**vars(trainer), **quiet}), None)
        assert capsys.readouterr().out == ""


@pytest.mark.parametrize("world, limit, expected", [(1, 1.0, 12), (2, 1.0, 6), (1, 5, 5), (1, 0.5, 6)])
def test_log_interval_is_clamped_to_the_training_batches(world: int, limit, expected: int):
    loader = DataLoader(range(100), batch_size=8, drop_last=True)  # 12 batches; 50 samples = 6 a process on 2
    trainer = SimpleNamespace(datamodule=SimpleNamespace(train_dataloader=lambda: loader), world_size=world,
                              limit_train_batches=limit, loggers=[object()], log_every_n_steps=50)
    ClampLogInterval().setup(trainer, None, "fit")
    assert trainer.log_every_n_steps == expected
    trainer.log_every_n_steps = 2
    ClampLogInterval().setup(trainer, None, "fit")
    assert trainer.log_every_n_steps == 2  # an interval that fits is kept


def test_sync_hint_names_the_newest_offline_run_of_each_directory(tmp_path: Path):
    for name in ("offline-run-20260101_000000-aaaa", "offline-run-20260102_000000-bbbb"):
        (tmp_path / "teacher" / "wandb" / name).mkdir(parents=True)
    (tmp_path / "student" / "wandb" / "offline-run-20260103_000000-cccc").mkdir(parents=True)
    (tmp_path / "no_wandb").mkdir()
    hint = sync_hint([tmp_path / "teacher", tmp_path / "no_wandb", tmp_path / "student"])
    assert hint == (f"W&B logged offline; to upload: wandb sync "
                    f"{tmp_path}/teacher/wandb/offline-run-20260102_000000-bbbb "
                    f"{tmp_path}/student/wandb/offline-run-20260103_000000-cccc")
    assert sync_hint([tmp_path / "no_wandb"]) == ""
