"""Every target `make help` lists runs as a dry run (`make -n`) with the variables the README documents, and the
command it would run carries each variable's effect; the ablation lines are then run with `--dry-run` through the
real ablations CLI, so a flag make passes that the CLI does not accept fails here, not in a user's 10-hour table.

`make -n` of a target that depends on `install` prints nothing for `install` when `.venv/.installed` is up to date
(it is here, and in CI after `make test` installed it); the assertions look only at the target's own lines.
"""
from __future__ import annotations

import contextlib
import io
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAIR = "wrn_40_2->wrn_16_2"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def make(*args: str, dry: bool = True) -> str:
    proc = subprocess.run(["make", "--no-print-directory", *(["-n"] if dry else []), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"make {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def help_targets() -> dict[str, str]:
    text = re.sub(r"\x1b\[[0-9;]*m", "", make("help", dry=False))
    return dict(re.findall(r"^\s+(\S+)\s+(.*)$", text, flags=re.M))


def ablations_line(output: str) -> list[str]:
    """The argv after `python -m kd_lightning.ablations` of the one ablations command in a dry run."""
    lines = [line for line in output.replace("\\\n", " ").splitlines() if "-m kd_lightning.ablations" in line]
    assert len(lines) == 1, output
    words = shlex.split(lines[0])
    return words[words.index("kd_lightning.ablations") + 1:]


def run_ablations_dry(argv: list[str]) -> tuple[int, str]:
    from kd_lightning.ablations.__main__ import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main([*argv, "--dry-run"])
    return code, out.getvalue()


# The README's variables for the table targets, and what each must turn into on the ablations command line.
TABLE_VARS = ["DATA=cifar100", f"PAIR={PAIR}", "EPOCHS=3", "SEEDS=0 1", "DEVICES=2", "JOBS=3",
              "MARGIN_SPACE=logit", "RESULTS=out/tables", "RUNS=out/runs", "ARGS=--data.download=true"]
TABLE_EFFECTS = ["--data=cifar100", f"--pair={PAIR}", "--epochs=3", "--devices=2", "--jobs", "3", "--margin_space",
                 "logit", "--out", "out/tables", "--runs=out/runs", "--args=--data.download=true"]
TABLE_TARGETS = {"table-margin": ["margin"], "table-contrastive": ["contrastive"], "table-lambda": ["lambda"],
                 "table-students": ["students"], "tables": ["margin", "contrastive", "lambda"]}
# Every other target in `make help`: (variables, strings its dry run must contain).
OTHER_TARGETS = {
    "demo": (["SEEDS=0 1", "RUNS=out/runs"], ["experiments/demo.py --seeds 0 1 --runs 'out/runs'"]),
    "proxy": ([], ["--out 'results/proxy'", "--runs 'results/proxy-runs'", "for seed in 0 1 2 3 4"]),
    "proxy-students": ([], ["run students --seeds 0 1 2", "--runs 'results/proxy-runs-students'",
                            "--out 'results/proxy'"]),
    "sweeps": ([], ["-m kd_lightning.sweeps --write"]),
    "seeds-needed": (["EFFECT=0.7", "DATA=cifar100"], ["seeds-needed all --effect '0.7'", "--data 'cifar100'"]),
    "tables-status": (["STATUS=margin", "SEEDS=0 1", "DATA=cifar100", "RUNS=out/runs"],
                      ["-m kd_lightning.ablations status margin --seeds 0 1", "--data='cifar100'", "--runs='out/runs'"]),
    "test": ([], ["pytest -q"]),
    "install": ([], []),  # rc 0 only: up to date it prints nothing, else the install steps
    "lock": ([], ["pip freeze", "constraints.txt"]),
    "clean": ([], ["rm -rf lightning_logs wandb"]),
    "clean-runs": ([], ["rm -rf runs"]),
    "bench": ([], ["experiments/benchmark.py"]),
    "bench-smoke": ([], ["experiments/benchmark.py --smoke"]),
    "bench-wheels": ([], ["pip download", "-d .whl"]),
    "help": ([], []),  # run for real in test_help_lists_every_target_and_quotes_pair
    "table-build": (["SEEDS=1 2", "RUNS=out/runs", "RESULTS=out/tables"], ["build all",
                                                                          "--seeds 1 2", "--runs='out/runs'",
                                                                          "--out 'out/tables'"]),
}


def test_every_help_target_is_covered_here():
    assert set(help_targets()) == set(TABLE_TARGETS) | set(OTHER_TARGETS)


def test_help_lists_every_target_and_quotes_pair():
    targets = help_targets()
    assert "table-margin" in targets and "MARGIN_SPACE=prob|logit" in targets["table-margin"]
    text = make("help", dry=False)
    # An unquoted PAIR=a->b is a shell redirection: every PAIR example the help shows is quoted.
    assert "PAIR='" in text and not re.search(r"PAIR=[^'\s]", text)


@pytest.mark.parametrize("target", sorted(TABLE_TARGETS))
def test_table_target_passes_every_variable(target: str):
    argv = ablations_line(make(target, *TABLE_VARS))
    assert argv[0] == "run" and argv[1:1 + len(TABLE_TARGETS[target])] == TABLE_TARGETS[target]
    assert argv[argv.index("--seeds") + 1:argv.index("--seeds") + 3] == ["0", "1"]
    for effect in TABLE_EFFECTS:
        assert effect in argv, (effect, argv)


def test_table_target_passes_the_slurm_launcher_variables():
    argv = ablations_line(make("table-margin", "LAUNCHER=slurm", "SLURM_PARTITION=gpu", "SLURM_TIME=600",
                               "SLURM_GPUS=2", "SLURM_CPUS=8", "SLURM_EXTRA=--qos=high --account=lab", "WAIT=1"))
    for effect in ["--launcher=slurm", "--slurm_partition=gpu", "--slurm_time=600", "--slurm_gpus=2",
                   "--slurm_cpus=8", "--slurm_extra=--qos=high --account=lab", "--wait"]:
        assert effect in argv, (effect, argv)
    assert "--wait" not in ablations_line(make("table-margin"))
    # Unset, GPUs and CPUs per job are the launcher's own defaults (one place: grid/slurm.py), not make's.
    assert not any(a.startswith(("--slurm_gpus", "--slurm_cpus")) for a in ablations_line(make("table-margin")))


def test_dry_makes_every_table_target_a_dry_run():
    assert "--dry-run" in ablations_line(make("table-margin", "DRY=1"))
    assert "--dry-run" in ablations_line(make("table-build", "DRY=1"))
    assert "--dry-run" not in ablations_line(make("table-margin"))
    assert "DRY=1" in help_targets()["table-margin"]


def test_clean_keeps_the_trained_runs():
    """`make clean` removes caches and logs, never runs/ (hours of training); `make clean-runs` is the explicit way."""
    clean = make("clean")
    assert "rm -rf" in clean and not re.search(r"rm -rf[^\n]*\bruns\b", clean.replace("-prune", ""))
    assert "-path ./runs -prune" in clean


def test_table_defaults_are_the_cpu_proxy():
    argv = ablations_line(make("tables"))
    assert "--data=synthetic" in argv and argv[argv.index("--jobs") + 1] == "2"  # two single-thread runs at once
    assert argv[argv.index("--out") + 1] == "results" and "--runs=runs/ablations" in argv
    assert argv[argv.index("--margin_space") + 1] == "prob"
    real = ablations_line(make("tables", "DATA=cifar100"))
    assert real[real.index("--jobs") + 1] == "1"  # one run per GPU (or GPU set) on real data


@pytest.mark.parametrize("target", sorted(set(OTHER_TARGETS) - {"help"}))
def test_other_target_dry_run(target: str):
    variables, effects = OTHER_TARGETS[target]
    output = make(target, *variables).replace("\\\n", " ")
    for effect in effects:
        assert effect in output, (effect, output)


def test_table_build_without_seeds_builds_every_seed_found():
    argv = ablations_line(make("table-build"))
    assert argv[0] == "build" and "--seeds" not in argv  # the builder finds the seeds under RUNS


def test_table_lines_are_accepted_by_the_ablations_cli(tmp_path: Path):
    """The make lines, run with --dry-run: every flag make passes parses, and the table-build line on the committed
    runs finds every committed seed and builds all four tables without touching results/."""
    argv = ablations_line(make("tables", *TABLE_VARS[:-3], f"RUNS={tmp_path / 'runs'}",
                               f"RESULTS={tmp_path / 'out'}", "ARGS=--data.download=true"))
    code, text = run_ablations_dry(argv)
    assert code == 0, text
    assert "seed 0:" in text and "seed 1:" in text
    argv = ablations_line(make("table-build", "RUNS=results/proxy-runs", f"RESULTS={tmp_path / 'out'}"))
    code, text = run_ablations_dry(argv)
    assert code == 0, text
    for tid in ("margin", "contrastive", "lambda", "students"):
        assert f"would build {tid} from seeds 0 1 2" in text, text
    assert not (tmp_path / "out").exists()


def test_table_build_skips_tables_without_runs(tmp_path: Path):
    """Runs of the demo's teachers only: Tables A-C are built, and a folder with no runs at all is an error."""
    runs = tmp_path / "runs" / "synthetic"
    for name in ("plain_ce", "paper"):
        (committed,) = (ROOT / "results/proxy-runs/synthetic").glob(f"{name}-*")
        shutil.copytree(committed / "seed3" / "teacher", runs / committed.name / "seed3" / "teacher",
                        ignore=shutil.ignore_patterns("checkpoints"))
    code, text = run_ablations_dry(["build", "margin", "students", f"--runs={tmp_path / 'runs'}",
                                    "--out", str(tmp_path / "out")])
    assert code == 0 and "would build margin from seeds 3:" in text and "would build students from seeds 3:" in text
    code, text = run_ablations_dry(["build", "margin", f"--runs={tmp_path / 'none'}", "--out", str(tmp_path)])
    assert code == 1 and "skipped margin: no runs" in text and "nothing built" in text


@pytest.mark.skipif(not (ROOT / ".git").exists() or shutil.which("git") is None, reason="needs a git clone")
def test_user_tables_are_git_ignored_and_committed_ones_are_not():
    """`make tables` (and the demo, table-build) write under RESULTS=results and RUNS=runs/ablations: git ignores
    both, so a user's tables leave `git status` clean; the committed proxy in results/proxy/ is not ignored."""
    out = ablations_line(make("tables"))
    results = out[out.index("--out") + 1]
    written = [f"{results}/{tid}.{ext}" for tid in ("margin", "margin-logit", "contrastive", "lambda", "students")
               for ext in ("md", "csv", "png")] + ["runs/ablations/synthetic/paper-0123456789/seed0/teacher/results.json"]
    ignored = subprocess.run(["git", "check-ignore", *written], cwd=ROOT, capture_output=True, text=True)
    assert sorted(ignored.stdout.split()) == sorted(written)
    (paper,) = (ROOT / "results/proxy-runs/synthetic").glob("paper-*")
    committed = subprocess.run(["git", "check-ignore", "results/proxy/margin.md",
                                str((paper / "seed0/teacher/results.json").relative_to(ROOT))],
                               cwd=ROOT, capture_output=True, text=True)
    assert committed.stdout == "" and committed.returncode == 1
