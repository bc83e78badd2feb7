"""Published CIFAR-100 numbers (the method cards and the teacher/student baselines, distillation/registry.py) and
their place in the tables."""
import json
from pathlib import Path

import pytest

from kd_lightning.ablations.grid import recipe, runs, spec
from kd_lightning.ablations.grid.store import RunStore
from kd_lightning.ablations.report.tables import build
from kd_lightning.distillation.registry import baselines, method_cards
from kd_lightning.models import MODEL_NAMES


def test_every_method_card_and_baseline_names_our_pairs_with_sources():
    cards = method_cards()
    for card in cards:
        for p in card.published:
            assert p.teacher in MODEL_NAMES and p.student in MODEL_NAMES, (card.name, p)  # a table can match them
            assert 40 < p.top1 < 90 and p.epochs == 240 and "commit" in p.source, (card.name, p)
            assert p.epoch in ("best", "last", "not stated")
        assert len({p.pair for p in card.published}) == len(card.published), card.name  # one figure per pair
    figures = {(c.label, p.pair): p.top1 for c in cards for p in c.published}
    # Spot checks against the CRD paper's Table 1 (resnet32x4 -> resnet8x4 column) and the DKD/DIST READMEs.
    assert figures[("CRD", "resnet32x4->resnet8x4")] == 75.51 and figures[("DKD", "resnet32x4->resnet8x4")] == 76.32
    assert figures[("DIST", "resnet32x4->resnet8x4")] == 76.31 and figures[("KD", "resnet32x4->resnet8x4")] == 73.33
    assert [p.top1 for p in baselines("resnet32x4", "resnet8x4", "teacher")] == [79.42]
    assert [p.top1 for p in baselines("vgg13", "vgg8", "student")] == [70.36]
    assert baselines("resnet20", "resnet8", "teacher") == []


def fixture(stage: str, acc: float, backbone: str, epochs: int) -> dict:
    """A complete results.json of a cifar100 run (only what the builder reads)."""
    metrics = {"test/acc": acc, "test/loss": 1.0}
    return {"status": "complete", "backbone": backbone, "epochs": epochs, "last": metrics,
            "best": dict(metrics, **{"test/acc": acc + 0.01}), "history": [{"epoch": 0, "val/acc": acc}],
            "config": {"data": {"class_path": "kd_lightning.data.CIFAR100DataModule", "init_args": {}},
                       "trainer": {"accelerator": "gpu", "devices": 1}}, "wall_seconds": 1.0}


def write(out: Path, job: runs.Job, data: dict) -> None:
    path = RunStore(out).dir(job) / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("epochs", [240, 30])
def test_table_d_on_cifar100_shows_the_published_column(tmp_path, epochs):
    out, cifar = tmp_path / "runs", recipe.Recipe(data="cifar100")
    table = spec.load_table("students")
    # KD students 73.0/74.0 % (last), so 74.0/75.0 % at their best epoch; DKD 75.0 % best; teachers 79.0 % best.
    for seed in (0, 1):
        cells = {(s.name, t.name): job for t, s, job in runs.table_jobs(cifar, table, seed)}
        for teacher in ("plain_ce", "paper"):
            write(out, cells[("kd", teacher)].teacher, fixture("teacher", 0.78, "resnet32x4", epochs))
            write(out, cells[("kd", teacher)], fixture("student", 0.73 + seed / 100, "resnet8x4", epochs))
            write(out, cells[("dkd", teacher)], fixture("student", 0.74, "resnet8x4", epochs))
    build(table, cifar, [0, 1], RunStore(out), tmp_path / "out")
    md = (tmp_path / "out" / "students.md").read_text()
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
    build(spec.load_table("students"), recipe.Recipe(data="synthetic"), [0], RunStore(tmp_path / "runs"),
          tmp_path / "out")
    assert "No published number applies: these runs are on `synthetic`" in (tmp_path / "out" / "students.md").read_text()
