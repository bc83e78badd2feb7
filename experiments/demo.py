"""The demo: on the built-in synthetic set, on CPU, offline, train a contrastive teacher, distil a student from it,
train the same student alone, and print their test accuracy and loss.

    python experiments/demo.py --seeds 0 1 2

Each run is a plain `kd-lightning fit` (configs/demo/); a run whose results.json says "complete" is not re-run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo"

RUNS = {
    "teacher": ["--config", str(DEMO / "teacher.yaml")],
    "student_kd": ["--config", str(DEMO / "student.yaml")],
    "student_alone": ["--config", str(DEMO / "student.yaml"), "--config", str(ROOT / "configs/student/alone.yaml")],
}
LABELS = {
    "teacher": "teacher (intra-class contrastive)",
    "student_kd": "student distilled from it (KD)",
    "student_alone": "student alone (CE)",
}


def run(name: str, seed: int, out: Path, extra: list[str]) -> dict:
    run_dir = out / f"seed{seed}" / name
    results = run_dir / "results.json"
    if results.is_file() and json.loads(results.read_text()).get("status") == "complete":
        print(f"[demo] {name} seed {seed}: already complete in {run_dir}", flush=True)
        return json.loads(results.read_text())
    command = [sys.executable, "-m", "kd_lightning", "fit", "--config", str(DEMO / "data.yaml"), *RUNS[name],
               f"--seed_everything={seed}", f"--trainer.default_root_dir={run_dir}", *extra]
    print(f"[demo] {name} seed {seed}: {' '.join(command[2:])}", flush=True)
    started = time.time()
    subprocess.run(command, check=True, env={**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline")})
    print(f"[demo] {name} seed {seed}: {time.time() - started:.0f} s", flush=True)
    return json.loads(results.read_text())


def fmt(values: list[float], scale: float = 1.0) -> str:
    values = [v * scale for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "demo")
    args = parser.parse_args()
    started = time.time()
    results: dict[str, list[dict]] = {name: [] for name in RUNS}
    for seed in args.seeds:
        teacher = run("teacher", seed, args.out, [])
        ckpt = teacher["checkpoints"]["last"]
        results["teacher"].append(teacher)
        results["student_kd"].append(run("student_kd", seed, args.out, [f"--model.teacher_checkpoint={ckpt}"]))
        results["student_alone"].append(run("student_alone", seed, args.out, []))
    print(f"\nSynthetic set, CPU, seeds {args.seeds}; last-epoch weights on the test split (best-epoch in brackets).")
    print(f"| run | test acc % | (best-epoch acc %) | test loss |")
    print(f"|---|---|---|---|")
    for name, rows in results.items():
        last = [r["last"].get("test/acc") for r in rows]
        best = [r.get("best", {}).get("test/acc") for r in rows]
        loss = [r["last"].get("test/loss") for r in rows]
        print(f"| {LABELS[name]} | {fmt(last, 100)} | ({fmt(best, 100)}) | {fmt(loss)} |")
    gain = [s["last"]["test/acc"] - a["last"]["test/acc"] for s, a in zip(results["student_kd"], results["student_alone"])]
    print(f"\nKD gain over the student alone: {fmt(gain, 100)} points; total {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
