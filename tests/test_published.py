"""Published CIFAR-100 numbers (ablations/published.py) and their place in the tables."""
import json
from pathlib import Path

import pytest

from kd_lightning.ablations import published, recipe, table
from kd_lightning.models import MODEL_NAMES


def test_the_file_covers_the_standard_pairs_with_sources():
    entries = published.PUBLISHED
    assert len(entries) >= 12 and len({p.source for p in entries}) >= 3
    for p in entries:
        assert p.teacher in MODEL_NAMES and p.student in MODEL_NAMES, p  # our model names, so a table can match them
        assert p.method in published.METHODS and 40 < p.top1 < 90 and p.epochs == 240
        assert "commit" in p.source and p.epoch in ("best", "last", "not stated")
    key = lambda p: (p.teacher, p.student, p.method)  # noqa: E731
    assert len({key(p) for p in entries}) == len(entries)  # one figure per pair and method
    # Spot checks against the CRD paper's Table 1 (resnet32x4 -> resnet8x4 column) and the DKD/DIST READMEs.
    figures = {key(p): p.top1 for p in entries}
    assert figures[("resnet32x4", "resnet8x4", "teacher")] == 79.42
    assert figures[("resnet32x4", "resnet8x4", "CRD")] == 75.51
    assert figures[("resnet32x4", "resnet8x4", "DKD")] == 76.32
    assert figures[("resnet32x4", "resnet8x4", "DIST")] == 76.31
    assert published.lookup("synthetic", "resnet32x4", "resnet8x4", "KD") == []


def fixture(stage: str, acc: float, backbone: str, epochs: int) -> dict:
    """A complete results.json of a cifar100 run (only what the builder reads)."""
    metrics = {"test/acc": acc, "test/loss": 1.0}
    return {"status": "complete", "backbone": backbone, "epochs": epochs, "last": metrics,
            "best": dict(metrics, **{"test/acc": acc + 0.01}), "history": [{"epoch": 0, "val/acc": acc}],
            "config": {"data": {"class_path": "kd_lightning.data.CIFAR100DataModule", "init_args": {}},
                       "trainer": {"accelerator": "gpu", "devices": 1}}, "wall_seconds": 1.0}


def write(runs: Path, key: str, data: dict) -> None:
    path = runs / key / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("epochs", [240, 30])
def test_table_d_on_cifar100_shows_the_published_column(tmp_path, epochs):
    runs = tmp_path / "runs"
    # KD students 73.0/74.0 % (last), so 74.0/75.0 % at their best epoch; DKD 75.0 % best; teachers 79.0 % best.
    for seed in (0, 1):
        for teacher in ("plain_ce", "paper"):
            write(runs, f"cifar100/{teacher}/seed{seed}/teacher", fixture("teacher", 0.78, "resnet32x4", epochs))
            write(runs, f"cifar100/{teacher}/seed{seed}/student", fixture("student", 0.73 + seed / 100,
                                                                         "resnet8x4", epochs))
            write(runs, f"cifar100/{teacher}/seed{seed}/student-dkd", fixture("student", 0.74, "resnet8x4", epochs))
    paths, _ = table.build("students", recipe.Recipe(data="cifar100"), [0, 1], runs, tmp_path / "out")
    md = paths[0].read_text()
    section = md.split("## Published numbers", 1)[1].split("\n## ", 1)[0]
    lines = {tuple(c.strip() for c in line.strip("|").split("|")[:6]) for line in section.splitlines()
             if line.startswith("| ") and "resnet32x4->resnet8x4" in line}
    # ours (best epoch): KD 74.50 ± 0.71 vs 73.33 published; DKD 75.00 vs 76.32; plain-CE teacher 79.00 vs 79.42.
    assert ("KD ← plain CE teacher", "student KD", "resnet32x4->resnet8x4", "74.50 ± 0.71", "73.33", "+1.17") in lines
    assert ("DKD ← plain CE teacher", "student DKD", "resnet32x4->resnet8x4", "75.00 ± 0.00", "76.32", "-1.32") in lines
    assert ("KD ← plain CE teacher", "teacher teacher", "resnet32x4->resnet8x4", "79.00 ± 0.00", "79.42",
            "-0.42") in lines
    assert "Tian et al., ICLR 2020" in section and "| best |" in section
    assert ("our student runs have 30 epochs, the published ones 240" in section) == (epochs == 30)


def test_proxy_tables_say_no_published_number_applies(tmp_path):
    paths, _ = table.build("students", recipe.Recipe(data="synthetic"), [0], tmp_path / "runs", tmp_path / "out")
    assert "No published number applies: these runs are on `synthetic`" in paths[0].read_text()
