"""DDP end to end: `kd-lightning fit --trainer.accelerator=cpu --trainer.devices=2 --trainer.strategy=ddp` (gloo).

Every DDP run is a CLI subprocess (never in-process DDP under pytest); Lightning's launcher starts rank 1 itself. A
test-only callback (tests/ddp_probe.py, importable through PYTHONPATH=tests) records on every rank what must agree:
losses, gradients, the class memory, metrics and the frozen teacher. Each 2-process run is compared with a
single-process reference run on the same global batches:

- Same rows, same order. The DDP run uses the unmodified SyntheticDataModule: Lightning gives each rank its share of
  a shuffled DistributedSampler, and `gather_rows` lays the ranks' rows out view-major, rank after rank. The
  reference run reads the train set in exactly that order (ddp_probe.EmulatedDDPOrder, built from the same
  DistributedSampler objects), so its global batch k holds the same images in the same row order as the DDP run's
  gathered batch k. `augment=none`, so no random augmentation depends on which process draws it.
- BatchNorm in eval mode during training (the probe's `bn_eval`). Per-rank BatchNorm statistics over a per-device
  batch legitimately differ from statistics over the whole global batch, so with BatchNorm in training mode the
  first-step losses would differ for a reason unrelated to DDP correctness. With fixed statistics the network is
  the same function on both sides, and any difference comes from how the loss sees the batch.
- Gates open (`gate_delta=null`) and λ = 1, so the contrastive term, which is the part that must span the global
  batch, weighs in the loss (a closed gate would make it vanish from the comparison).

What a rank's loss is: CE over its own rows plus λ · the contrastive loss over the GATHERED rows (identical on every
rank). CE over the global batch is the mean of the ranks' CE (equal shards), so the mean over ranks of the ranks'
losses must equal the single-process loss; the contrastive part itself must be equal on both ranks and to the
reference. DDP averages parameter gradients, which must equal the reference gradient (tests/test_gather.py shows why
for the gathered term). Runs go in pairs (DDP and reference at once) to share the two cores' import time.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT, TINY_DATA

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent
DDP = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]
SINGLE = ["--trainer.accelerator=cpu", "--trainer.devices=1"]
WANDB = ["--trainer.logger=pytorch_lightning.loggers.WandbLogger"]
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
STEPS = 4  # train_size 128 / global batch 32: one epoch
# What a 2-process run may differ by from its single-process reference: float32 summation order only (per-rank half
# batches, then the all-reduce, instead of one batch), the same kind of change as another CPU's kernels. MEASURED
# SPREAD, the same single-process reference run under the default kernels (AVX512 here) and under
# ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 (AMD EPYC, torch 2.14.1, 1 thread; teacher of teacher_cmd, 4 steps):
# losses ≤ 2.0e-7 rel, contrastive term ≤ 3.5e-7 rel, first gradient max |Δ| 1.5e-7 (1.5e-6 of its largest entry),
# class memory ≤ 2.4e-6 rel (max |Δ| 9.5e-7), trained weights ≤ 5.0e-6 rel per tensor, test d_intra / d_inter 3.3e-6 /
# 5.8e-6 rel. Student of student_cmd (KD + RKD, 4 steps): trained weights up to 1.75% rel, test d_intra 1.2%,
# d_inter 3.0% (RKD's angle term amplifies the order differences), far too wide to catch a wrong gradient: the
# student tests therefore compare its first step and the same weights evaluated, never its trained values.
# Each tolerance leaves >= 10x over the spread it guards.
# tol: first step: losses 2e-7 rel measured; rtol 1e-5 leaves 50x, atol for the near-0 objective of closed anchors
TOL = dict(rtol=1e-5, atol=1e-6)


def data_args(reference: bool) -> list[str]:
    cls = "ddp_probe.EmulatedDDPSyntheticDataModule" if reference else "kd_lightning.data.SyntheticDataModule"
    return [f"--data={cls}", *[a for a in TINY_DATA if not a.startswith("--data=")], "--data.augment=none"]


def probe_args(run_dir: Path) -> list[str]:
    probe = {"class_path": "ddp_probe.DDPProbe", "init_args": {"out_dir": str(run_dir / "probe"), "bn_eval": True}}
    return [f"--trainer.callbacks={json.dumps([probe])}"]


def teacher_cmd(run_dir: Path, reference: bool, *extra: str) -> list[str]:
    return ["fit", *data_args(reference), "--model=kd_lightning.modules.TeacherModule", "--model.backbone=resnet8",
            "--model.objective=kd_lightning.objectives.IntraClassContrastive", "--model.memory_size=8",
            "--model.gate_delta=null", "--model.contrastive_weight=1.0", "--trainer.max_epochs=1",
            f"--trainer.default_root_dir={run_dir}", *QUIET, *probe_args(run_dir), *extra]


def student_cmd(run_dir: Path, teacher_ckpt: Path, reference: bool, *extra: str) -> list[str]:
    """KD + RKD ("Ours+RKD"): RKD relates the samples of a batch, so it too must span the global batch."""
    return ["fit", *data_args(reference), "--model=kd_lightning.modules.StudentModule", "--model.backbone=resnet8",
            f"--model.teacher_checkpoint={teacher_ckpt}", "--model.rkd_distance_weight=25",
            "--model.rkd_angle_weight=50", "--trainer.max_epochs=1",
            f"--trainer.default_root_dir={run_dir}", *QUIET, *probe_args(run_dir), *extra]


def run_together(*commands: list[str], timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """Runs `python -m kd_lightning CMD` for every command at once (offline W&B, tests/ on PYTHONPATH)."""
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)}
    env.pop("KD_LIGHTNING_DEBUG", None)
    procs = [subprocess.Popen([sys.executable, "-m", "kd_lightning", *cmd], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for cmd in commands]
    done = []
    for proc, cmd in zip(procs, commands):
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        done.append(subprocess.CompletedProcess(cmd, proc.returncode, out, err))
    return done


def check_ok(*procs: subprocess.CompletedProcess) -> None:
    for proc in procs:
        assert proc.returncode == 0, f"kd-lightning {' '.join(proc.args)} failed:\n{proc.stdout[-2000:]}\n" \
                                     f"{proc.stderr[-6000:]}"


def probes(run_dir: Path, world: int) -> list[dict]:
    return [torch.load(run_dir / "probe" / f"rank{r}.pt", weights_only=True) for r in range(world)]


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


# --- the runs (module-scoped: each pair runs once) ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def teacher_runs(tmp_path_factory) -> tuple[Path, Path]:
    """(2-process DDP run with W&B, single-process reference run) of an intra-class teacher with memory."""
    root = tmp_path_factory.mktemp("ddp_teacher")
    ddp, ref = root / "ddp", root / "single"
    check_ok(*run_together(teacher_cmd(ddp, False, *DDP, *WANDB), teacher_cmd(ref, True, *SINGLE,
                                                                              "--trainer.logger=false")))
    return ddp, ref


@pytest.fixture(scope="module")
def student_runs(teacher_runs, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(DDP run, reference run, teacher checkpoint) of a student distilled from the DDP teacher."""
    root = tmp_path_factory.mktemp("ddp_student")
    ddp, ref = root / "ddp", root / "single"
    ckpt = teacher_runs[0] / "checkpoints" / "last.ckpt"
    check_ok(*run_together(student_cmd(ddp, ckpt, False, *DDP, *WANDB), student_cmd(ref, ckpt, True, *SINGLE,
                                                                                    "--trainer.logger=false")))
    return ddp, ref, ckpt


# --- one run, one record ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["teacher", "student"])
def test_ddp_run_writes_one_results_json_and_one_wandb_run(which, request):
    run = request.getfixturevalue(f"{which}_runs")[0]
    assert probes(run, 2)[0]["strategy_model"] == "DistributedDataParallel"
    assert probes(run, 2)[1]["world_size"] == 2
    summary = results(run)
    assert summary["status"] == "complete"
    assert "test/acc" in summary["last"] and "test/acc" in summary["best"]
    assert list(run.rglob("results.json")) == [run / "results.json"]
    # results.json's writer ran on rank 0 only (the probe logs every call of it, per rank).
    assert (run / "probe" / "results-writes-rank0.txt").is_file()
    assert not (run / "probe" / "results-writes-rank1.txt").exists()
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1


# --- the teacher: gathered loss, gradients, memory --------------------------------------------------------------------
def test_teacher_first_step_loss_and_gradient_equal_single_process(teacher_runs):
    ddp, ref = teacher_runs
    (r0, r1), (single,) = probes(ddp, 2), probes(ref, 1)
    assert len(single["loss"]) == len(r0["loss"]) == len(r1["loss"]) == STEPS
    # The objective saw the whole global batch, on each rank, in the reference's row order (view-major).
    for rank in (r0, r1):
        assert rank["objective_ids"][0].shape == (64,)
        assert torch.equal(rank["objective_ids"][0], single["objective_ids"][0])
    ids = single["objective_ids"][0]
    assert torch.equal(ids[:32], ids[32:]) and len(set(ids[:32].tolist())) == 32
    # The contrastive term: one global value, on both ranks, equal to the single-process one.
    assert torch.equal(r0["objective"][0], r1["objective"][0])
    # tol: TOL (first step: measured 3.5e-7 rel for the contrastive term)
    torch.testing.assert_close(r0["objective"][0], single["objective"][0], **TOL)
    assert float(single["objective"][0]) > 0.5  # not a vanishing term
    # The loss of the first step (mean over ranks, see the module docstring) equals the single-process loss.
    # tol: TOL (first-step loss: measured 2e-7 rel)
    torch.testing.assert_close((r0["loss"][0] + r1["loss"][0]) / 2, single["loss"][0], **TOL)
    # Gradients after DDP's all-reduce: identical on both ranks and equal to the single-process gradient.
    assert r0["grad_names"] == single["grad_names"]
    assert torch.equal(r0["grad"], r1["grad"])
    # tol: gradient entries near 0 carry the measured max |Δ| 1.5e-7 (atol 1e-6 = 7x); rtol 1e-4 for the large ones
    torch.testing.assert_close(r0["grad"], single["grad"], rtol=1e-4, atol=1e-6)


def test_teacher_later_steps_with_memory_equal_single_process(teacher_runs):
    """Later steps use the memory filled by earlier ones: still the single-process losses."""
    ddp, ref = teacher_runs
    (r0, r1), (single,) = probes(ddp, 2), probes(ref, 1)
    for step in range(1, STEPS):
        assert torch.equal(r0["objective_ids"][step], single["objective_ids"][step])
        # tol: after k updates the order differences compound: measured ≤ 3.5e-7 rel by step 4; 1e-4 leaves >100x
        torch.testing.assert_close(r0["objective"][step], single["objective"][step], rtol=1e-4, atol=1e-5)
        # tol: as for the objective just above (losses measured ≤ 2e-7 rel)
        torch.testing.assert_close((r0["loss"][step] + r1["loss"][step]) / 2, single["loss"][step],
                                   rtol=1e-4, atol=1e-5)


def test_both_ranks_hold_the_identical_memory(teacher_runs):
    """Copied right after every enqueue (before DDP's buffer broadcast could paper over a difference)."""
    ddp, ref = teacher_runs
    (r0, r1), (single,) = probes(ddp, 2), probes(ref, 1)
    assert len(r0["memory"]) == len(r1["memory"]) == len(single["memory"]) == STEPS
    for m0, m1, ms in zip(r0["memory"], r1["memory"], single["memory"]):
        for key in ("embeddings", "ids", "ptr", "count"):
            assert torch.equal(m0[key], m1[key]), key
        # and it is the memory one process builds from the same global batches (same entries, same slots)
        assert torch.equal(m0["ids"], ms["ids"]) and torch.equal(m0["ptr"], ms["ptr"])
        # tol: stored embeddings moved by ≤ 2.4e-6 rel / 9.5e-7 abs across kernel sets (measured); 1e-4 / 1e-5 = 10x+
        torch.testing.assert_close(m0["embeddings"], ms["embeddings"], rtol=1e-4, atol=1e-5)
    last = r0["memory"][-1]
    assert bool((last["count"] == 8).all())  # every class's FIFO filled (and wrapped: 4 steps x ~6 rows per class)
    # After step 1 the memory holds first views of that step only, rank 1's images among them.
    first, step1 = r0["memory"][0], r0["objective_ids"][0][:32].tolist()
    stored = set(first["ids"][first["ids"] >= 0].tolist())
    assert stored <= set(step1) and len(stored) == int(first["count"].sum())
    assert stored & set(step1[:16]) and stored & set(step1[16:])  # rank 0's images and rank 1's


def test_memory_is_global_even_without_gathered_pools(tmp_path):
    """gather_distributed=false contrasts within each rank, but the memory still receives every rank's rows."""
    run = tmp_path / "local_pools"
    check_ok(*run_together(teacher_cmd(run, False, *DDP, "--model.gather_distributed=false",
                                       "--trainer.logger=false", "--test_after_fit=false")))
    r0, r1 = probes(run, 2)
    assert r0["objective_ids"][0].shape == (32,)  # local pools ...
    assert not torch.equal(r0["objective"][0], r1["objective"][0])
    for m0, m1 in zip(r0["memory"], r1["memory"]):  # ... one memory
        for key in ("embeddings", "ids", "ptr", "count"):
            assert torch.equal(m0[key], m1[key]), key
    stored = set(r0["memory"][0]["ids"].flatten().tolist())
    assert stored & set(r0["objective_ids"][0][:16].tolist()) and stored & set(r1["objective_ids"][0][:16].tolist())


# --- metrics -----------------------------------------------------------------------------------------------------------
def evaluate_cmd(fit_cmd: list[str], ckpt: Path, out: Path, *extra: str) -> list[str]:
    """`kd-lightning test` of the checkpoint `ckpt` with the model arguments of `fit_cmd` (probe into `out`)."""
    keep = [a for a in fit_cmd[1:] if not a.startswith(("--trainer.callbacks=", "--trainer.default_root_dir=",
                                                        "--trainer.max_epochs="))]
    return ["test", *keep, f"--ckpt_path={ckpt}", f"--trainer.default_root_dir={out}", "--trainer.logger=false",
            *probe_args(out), *extra]


@pytest.mark.parametrize("which", ["teacher", "student"])
def test_metrics_are_synchronised_across_ranks(which, request, tmp_path):
    """The SAME weights (the DDP run's last.ckpt) tested by 1 and by 2 processes. DistributedSampler splits the
    64 test images evenly and evaluation is deterministic, so the synchronised metrics of 2 processes equal the
    single process's; an unsynchronised rank 0 would report its half only (32 images: accuracy moves by >= 1/64)."""
    runs = request.getfixturevalue(f"{which}_runs")
    ckpt = runs[0] / "checkpoints" / "last.ckpt"
    fit = teacher_cmd(tmp_path, False) if which == "teacher" else student_cmd(tmp_path, runs[2], False)
    one, two = tmp_path / "one", tmp_path / "two"
    check_ok(*run_together(evaluate_cmd(fit, ckpt, one, *SINGLE), evaluate_cmd(fit, ckpt, two, *DDP)))
    (single,) = [torch.load(one / "probe" / "test-rank0.pt", weights_only=True)]
    r0, r1 = [torch.load(two / "probe" / f"test-rank{r}.pt", weights_only=True) for r in range(2)]
    assert single["world_size"] == 1 and r0["world_size"] == r1["world_size"] == 2
    assert r0["test"] == r1["test"]  # both ranks hold the synchronised value, bit for bit
    for key in ("test/acc", "test/loss", "test/d_intra", "test/d_inter"):
        # Same kernels on the same images; only the float32 summation order differs (per-rank sums, then the
        # all-reduce): relative 1e-5 is ~100 float32 ulps, orders of magnitude below one image's 1/64 in accuracy.
        assert r0["test"][key] == pytest.approx(single["test"][key], rel=1e-5, abs=1e-6), key
    # The fit-time record agrees too: rank 0 reported the synchronised validation metrics, as rank 1 did.
    assert probes(runs[0], 2)[0]["val"] == probes(runs[0], 2)[1]["val"]


# --- the student and its frozen teacher ---------------------------------------------------------------------------------
def test_student_first_step_loss_and_gradient_equal_single_process(student_runs):
    ddp, ref, _ = student_runs
    (r0, r1), (single,) = probes(ddp, 2), probes(ref, 1)
    # tol: TOL (first-step loss)
    torch.testing.assert_close((r0["loss"][0] + r1["loss"][0]) / 2, single["loss"][0], **TOL)
    assert torch.equal(r0["grad"], r1["grad"])
    # tol: gradient entries near 0 carry the measured max |Δ| 1.5e-7 (atol 1e-6 = 7x); rtol 1e-4 for the large ones
    torch.testing.assert_close(r0["grad"], single["grad"], rtol=1e-4, atol=1e-6)
    assert not any(name.startswith("teacher") for name in r0["grad_names"])


def test_frozen_teacher_is_never_wrapped_updated_or_trained(student_runs):
    ddp, _, ckpt = student_runs
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    for rank in probes(ddp, 2):
        assert rank["strategy_model"] == "DistributedDataParallel"
        assert rank["teacher_tensors_in_ddp"] == 0 and not rank["teacher_module_in_ddp"]
        assert not rank["teacher_requires_grad"] and not rank["teacher_has_grad"]
        assert len(rank["teacher_training"]) == 2 * STEPS and not any(rank["teacher_training"])
        before, after = rank["teacher_before"], rank["teacher_after"]
        assert before.keys() == after.keys() and any("running_mean" in k for k in after)
        for key, value in after.items():  # parameters and BatchNorm buffers, bit for bit
            assert torch.equal(value, before[key]), key
            assert torch.equal(value, saved[key]), key


# --- SyncBatchNorm -----------------------------------------------------------------------------------------------------
def test_sync_batchnorm_on_cpu_is_turned_off_and_recorded(tmp_path):
    """torch's SyncBatchNorm is GPU-only (DDP refuses it at wrap time on CPU tensors), so on the CPU the CLI keeps
    each process's own BatchNorm, even when asked explicitly, and the saved config says so (the table runner then
    counts the world size in the run's identity). One process under the ddp strategy takes the wrap path of two."""
    (proc,) = run_together(teacher_cmd(tmp_path / "sbn", False, "--trainer.accelerator=cpu", "--trainer.devices=1",
                                       "--trainer.strategy=ddp", "--trainer.sync_batchnorm=true",
                                       "--trainer.logger=false"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = yaml.safe_load((tmp_path / "sbn" / "config.yaml").read_text())
    assert saved["trainer"]["sync_batchnorm"] is False
