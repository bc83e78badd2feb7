"""One run folder, one run: the lock (two real processes), the refusal of a folder that holds a run, --overwrite,
the resume's config check, the default folder, and the two lines a fit prints about itself."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path


from conftest import ROOT, main_in_process, read_results, run_cli, teacher_args
from kd_lightning.utils.run_folder import changed_keys, default_run_dir, flatten

ONE_EPOCH = ["--trainer.max_epochs=1"]
# A holder of the run folder's lock in another process: it prints its pid once it holds the lock, then sleeps.
HOLDER = ("import sys, time\nfrom kd_lightning.utils.run_lock import run_lock\n"
          "with run_lock(sys.argv[1], wait=False):\n    print('held', flush=True)\n    time.sleep(float(sys.argv[2]))\n")


def fit(args: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    """`kd-lightning ARGS` in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", sys.argv[:1])  # the CLI parses `args` only, not pytest's flags
    monkeypatch.setenv("WANDB_MODE", "offline")
    return main_in_process(args, capsys)


def hold_lock(run_dir: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir), str(seconds)], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "held"
    return proc


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("kd-lightning: error:")]


def test_a_second_fit_into_a_folder_being_trained_stops_at_once_naming_it_and_the_holder(tmp_path, capsys,
                                                                                         monkeypatch):
    holder = hold_lock(tmp_path, 60)
    try:
        started = time.monotonic()
        code, out, err = fit(teacher_args(tmp_path, epochs=1), capsys, monkeypatch)
        assert code == 1 and time.monotonic() - started < 30  # tol: at once, not after the holder's 60 s
        assert error_lines(err) == [f"kd-lightning: error: run folder {tmp_path} is being trained by process "
                                    f"{holder.pid} on {os.uname().nodename}: wait for it with --wait_for_lock=true, "
                                    "or pass another --trainer.default_root_dir"], err
        assert "Traceback" not in err and not (tmp_path / "results.json").exists()
    finally:
        holder.kill()
        holder.wait()


def test_fit_holds_the_lock_while_it_trains(tmp_path, capsys, monkeypatch):
    # A real `kd-lightning fit` in another process; once it has written its first epoch, a second fit is refused.
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen([sys.executable, "-m", "kd_lightning", *teacher_args(tmp_path, epochs=200)], env=env,
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "results.json").is_file():
            assert first.poll() is None and time.monotonic() < deadline, "the first fit did not start training"
            time.sleep(0.2)
        code, _, err = fit(teacher_args(tmp_path, "--ckpt_path=last", epochs=200), capsys, monkeypatch)
        assert code == 1
        assert f"run folder {tmp_path} is being trained by process {first.pid} " in err, err
    finally:
        first.kill()
        first.wait()


def test_wait_for_lock_waits_for_the_holder_then_trains(tmp_path, capsys, monkeypatch):
    holder = hold_lock(tmp_path, 3)
    try:
        code, out, err = fit(teacher_args(tmp_path, "--wait_for_lock=true", epochs=1), capsys, monkeypatch)
    finally:
        holder.kill()
        holder.wait()
    assert code == 0, err
    assert f"run folder {tmp_path} is being trained by process {holder.pid}" in out and "waiting for it" in out
    assert read_results(tmp_path)["status"] == "complete"


def test_a_new_fit_into_a_finished_run_refuses_and_overwrite_starts_it_over(tmp_path, capsys, monkeypatch):
    args = [a for a in teacher_args(tmp_path, epochs=1) if a != "--trainer.logger=false"]
    args += ["--trainer.logger=pytorch_lightning.loggers.WandbLogger", "--trainer.logger.project=kd-tests"]
    assert fit(args, capsys, monkeypatch)[0] == 0
    first_id = (tmp_path / "wandb_run_id.txt").read_text()
    before = (tmp_path / "results.json").read_bytes()

    code, _, err = fit(args, capsys, monkeypatch)
    assert code == 1 and len(error_lines(err)) == 1 and "Traceback" not in err
    assert f"run folder {tmp_path} already holds a complete run" in err and "--ckpt_path last" in err
    assert "--overwrite=true" in err
    assert (tmp_path / "results.json").read_bytes() == before  # nothing written

    code, out, err = fit([*args, "--overwrite=true"], capsys, monkeypatch)
    assert code == 0, err
    assert f"run folder {tmp_path} (started over: --overwrite=true deleted the earlier run)" in out
    assert (tmp_path / "wandb_run_id.txt").read_text() != first_id  # a new W&B run
    # The saved config records the run's settings, not this command's action: resuming it is not "overwrite".
    assert "overwrite: null" in (tmp_path / "config.yaml").read_text()


def test_resume_with_another_gate_delta_refuses_naming_the_key(tmp_path, capsys, monkeypatch):
    assert fit(teacher_args(tmp_path, "--model.gate_delta=0.5", epochs=1), capsys, monkeypatch)[0] == 0
    config_before = (tmp_path / "config.yaml").read_text()
    code, _, err = fit(teacher_args(tmp_path, "--model.gate_delta=null", "--ckpt_path=last", epochs=2), capsys,
                       monkeypatch)
    assert code == 1 and len(error_lines(err)) == 1, err
    assert "model.gate_delta: 0.5 -> None" in err and f"resuming {tmp_path} with other settings" in err
    assert (tmp_path / "config.yaml").read_text() == config_before
    assert read_results(tmp_path)["epochs"] == 1


def test_resume_may_change_epochs_and_logging_and_continues_the_same_wandb_run(tmp_path, capsys, monkeypatch):
    wandb = ["--trainer.logger=pytorch_lightning.loggers.WandbLogger", "--trainer.logger.project=kd-tests"]
    quiet = [a for a in teacher_args(tmp_path, epochs=1) if a != "--trainer.logger=false"]
    assert fit([*quiet, *wandb], capsys, monkeypatch)[0] == 0
    resumed = [a.replace("max_epochs=1", "max_epochs=2") for a in quiet]
    code, out, err = fit([*resumed, *wandb, "--trainer.log_every_n_steps=1", "--ckpt_path=last"], capsys,
                         monkeypatch)
    assert code == 0, err
    assert f"run folder {tmp_path} (resuming from last)" in out
    run_id = (tmp_path / "wandb_run_id.txt").read_text().strip()
    offline = sorted((tmp_path / "wandb").glob("offline-run-*"))
    # wandb names an offline run's folder and its data file by the run's id: both attempts are that one run.
    assert len(offline) == 2 and all(p.name.endswith(f"-{run_id}") for p in offline), offline
    assert all((p / f"run-{run_id}.wandb").is_file() for p in offline)
    assert read_results(tmp_path)["epochs"] == 2


def test_fit_says_where_it_runs_and_what_it_measured(tmp_path, capsys, monkeypatch):
    code, out, err = fit(teacher_args(tmp_path, epochs=2), capsys, monkeypatch)
    assert code == 0, err
    results = read_results(tmp_path)
    starts = [line for line in out.splitlines() if line.startswith("kd-lightning fit: run folder")]
    assert starts == [f"kd-lightning fit: run folder {tmp_path} (new run)"]  # tmp_path: outside the cwd
    ends = [line for line in out.splitlines() if line.startswith("kd-lightning fit: complete")]
    last, best = results["last"]["test/acc"], results["best"]["test/acc"]
    assert ends == [f"kd-lightning fit: complete: test/acc last {last:.4f}, best {best:.4f} "
                    f"(epoch {results['best_epoch'] + 1}); results {tmp_path / 'results.json'}; W&B off"], out


def test_the_default_folder_is_the_runs_own_and_found_again_by_a_resume(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [a for a in teacher_args(tmp_path, epochs=1) if not a.startswith("--trainer.default_root_dir")]
    assert fit(args, capsys, monkeypatch)[0] == 0
    assert fit([*args, "--seed_everything=1"], capsys, monkeypatch)[0] == 0
    folders = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(folders) == 2 and all(re.fullmatch(r"teacher-resnet8-[0-9a-f]{8}", f) for f in folders), folders
    # The same command again is the same run: refused, and resumed with more epochs in the same folder.
    assert fit(args, capsys, monkeypatch)[0] == 1
    code, out, _ = fit([*[a.replace("max_epochs=1", "max_epochs=2") for a in args], "--ckpt_path=last"], capsys,
                       monkeypatch)
    assert code == 0 and "(resuming from last)" in out
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == folders


def test_default_folder_digest_ignores_what_a_resume_may_change():
    config = {"model": {"class_path": "kd_lightning.modules.StudentModule", "init_args": {"backbone": "vgg8"}},
              "trainer": {"max_epochs": 240, "devices": 1}, "seed_everything": 0}
    more = {**config, "trainer": {"max_epochs": 300, "devices": 4}}
    other = {**config, "seed_everything": 1}
    assert default_run_dir(config) == default_run_dir(more)
    assert default_run_dir(config) != default_run_dir(other)
    assert default_run_dir(config).parts[0] == "runs" and default_run_dir(config).name.startswith("student-vgg8-")


def test_changed_keys_names_what_a_resume_may_not_change():
    saved = {"model": {"init_args": {"gate_delta": 0.5, "lr": 0.1}}, "trainer": {"max_epochs": 1, "devices": 1}}
    current = {"model": {"init_args": {"gate_delta": None, "lr": 0.1}}, "trainer": {"max_epochs": 9, "devices": 2},
               "overwrite": None}
    assert changed_keys(saved, current) == ["model.init_args.gate_delta"]
    assert flatten({"a": {"b": [1, 2], "c": {}}}) == {"a.b": [1, 2], "a.c": {}}


def test_the_table_runners_child_is_not_refused(tmp_path, capsys, monkeypatch):
    # The runner holds the lock and has decided to restart a failed run that left no last.ckpt.
    (tmp_path / "results.json").write_text(json.dumps({"status": "failed"}))
    monkeypatch.setenv("KD_LIGHTNING_RUN_LOCK_HELD", str(tmp_path))
    holder = hold_lock(tmp_path, 60)
    try:
        code, _, err = fit(teacher_args(tmp_path, epochs=1), capsys, monkeypatch)
    finally:
        holder.kill()
        holder.wait()
    assert code == 0, err
    assert read_results(tmp_path)["status"] == "complete"


def test_a_ddp_run_says_where_and_what_once(tmp_path):
    # Lightning's launcher runs the command again for rank 1: the folder, its lock and the lines are rank 0's.
    proc = run_cli(teacher_args(tmp_path, "--trainer.devices=2", "--trainer.strategy=ddp",
                                "--trainer.accelerator=cpu", epochs=1))
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("kd-lightning fit: ")]
    results = read_results(tmp_path)
    assert lines == [f"kd-lightning fit: run folder {tmp_path} (new run)",
                     f"kd-lightning fit: complete: test/acc last {results['last']['test/acc']:.4f}, best "
                     f"{results['best']['test/acc']:.4f} (epoch 1); results {tmp_path / 'results.json'}; W&B off"]
