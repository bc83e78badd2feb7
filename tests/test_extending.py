"""docs/extending.md works as written: its files are written into a package outside kd_lightning (`my_kd` in a
temporary `my_project/`), and each of its smoke commands runs as a user's shell would run it, with PYTHONPATH naming
that folder. Each must train, and show the new term non-zero where the guide says it does."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "extending.md"


def guide_files() -> dict[str, str]:
    """The guide's fenced blocks that are files of the user's project, by the path their first line names
    (`# my_kd/objectives.py`, `# my_project/ablations/alignment/table.yaml`), relative to my_project/."""
    blocks = re.findall(r"```(?:python|yaml)\n# (?:my_project/)?((?:my_kd|ablations)/[\w/]+\.(?:py|yaml))\n(.*?)```",
                        GUIDE.read_text(), flags=re.S)
    return {path: code for path, code in blocks}


def guide_yaml() -> list[str]:
    """The config snippets: fenced YAML that is not a file of the project."""
    return [b for b in re.findall(r"```yaml\n(.*?)```", GUIDE.read_text(), flags=re.S) if not b.startswith("# ")]


def guide_commands() -> list[str]:
    """The indented shell commands (`\\` continuations joined) that run kd-lightning."""
    commands, current = [], ""
    for line in GUIDE.read_text().splitlines():
        if not line.startswith("    ") or not (current or line.strip().startswith("PYTHONPATH=")):
            continue
        current += " " + line.strip().rstrip("\\").strip()
        if not line.rstrip().endswith("\\"):
            commands.append(current.strip())
            current = ""
    return commands


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    project = tmp_path_factory.mktemp("ext") / "my_project"
    (project / "my_kd").mkdir(parents=True)
    (project / "my_kd" / "__init__.py").write_text("")
    for path, code in guide_files().items():
        (project / path).parent.mkdir(parents=True, exist_ok=True)
        (project / path).write_text(code)
    return project


def run_guide_command(command: str, project: Path) -> tuple[Path, str]:
    """Run one smoke command from the repository root, its `my_project` and `runs/` moved to temporary folders."""
    words = shlex.split(command)
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline")
    while "=" in words[0] and not words[0].startswith("-"):
        key, _, value = words.pop(0).partition("=")
        env[key] = str(project) if value == "my_project" else value
    runs = project.parent / "runs"
    words = [w.replace("=runs/", f"={runs}/").replace("my_project/", f"{project}/") for w in words]
    if words[:3] == ["python", "-m", "kd_lightning.ablations"]:  # a table's dry run: where it would train, in runs
        argv, run_dir = [*words[3:], f"--runs={runs / 'ablations'}"], runs / "ablations"
        program = "kd_lightning.ablations"
    else:
        assert words[0] == "kd-lightning", command
        argv, program = words[1:], "kd_lightning"
        run_dir = Path(next(w.split("=", 1)[1] for w in argv if w.startswith("--trainer.default_root_dir=")))
    proc = subprocess.run([sys.executable, "-m", program, *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return run_dir, proc.stdout + proc.stderr


def history(run_dir: Path) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "complete"
    return results["history"][-1]


def test_the_guide_has_its_examples():
    assert set(guide_files()) == {"my_kd/objectives.py", "my_kd/losses.py", "my_kd/nets.py",
                                  "ablations/alignment/table.yaml"}
    assert len(guide_commands()) == 4 and len(guide_yaml()) == 1


def test_every_smoke_command_runs_and_shows_its_term(project: Path):
    teacher, student, backbone, _ = guide_commands()
    run_dir, _ = run_guide_command(teacher, project)
    epoch = history(run_dir)
    # The gate is off in the smoke command, so the user's term is on every anchor: 1 - cos > 0 for distinct views.
    assert epoch["train/gate_open"] == 1.0 and epoch["train/loss_contrastive"] > 0
    run_dir, out = run_guide_command(student, project)
    assert history(run_dir)["train/loss_kd"] > 0
    assert str(run_dir / "results.json") in out  # the end line names the results file the guide points to
    run_dir, _ = run_guide_command(backbone, project)
    config = json.loads((run_dir / "results.json").read_text())
    assert config["backbone"] == "my_kd.nets.TinyNet"


def test_the_config_snippet_resolves(project: Path, monkeypatch, tmp_path: Path, capsys):
    from kd_lightning.cli import main

    monkeypatch.syspath_prepend(str(project))
    snippet = tmp_path / "objective.yaml"
    snippet.write_text(guide_yaml()[0])
    monkeypatch.setattr(sys, "argv", ["kd-lightning"])
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--config", "configs/demo/data.yaml", "--config", "configs/demo/teacher.yaml", "--config",
              str(snippet), "--print_config"])
    assert stop.value.code in (0, None)
    assert "class_path: my_kd.objectives.ViewAlignment" in capsys.readouterr().out


def test_the_table_resolves_with_the_users_objective(project: Path):
    *_, table = guide_commands()
    run_dir, out = run_guide_command(table, project)
    # 3 teacher rows x 2 student methods, the user's objective in its own teacher run, nothing trained.
    assert "9 runs for alignment (3 teachers)" in out
    assert "--model.objective=my_kd.objectives.ViewAlignment" in out and "dkd-" in out
    assert not run_dir.exists()
