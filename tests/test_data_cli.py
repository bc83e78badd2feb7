"""The real datamodules through the console entry point: configs resolve, and tiny fits run on fixture files in the
exact on-disk formats (CIFAR-100 pickles, the Tiny-ImageNet tree with grayscale JPEGs)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import QUIET, ROOT, read_results, run_cli
from fixtures_data import write_cifar100, write_tiny_imagenet

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("data, teacher, expected", [
    ("cifar100", "resnet32x4", "kd_lightning.data.CIFAR100DataModule"),
    ("tiny_imagenet", "resnet18", "kd_lightning.data.TinyImageNetDataModule"),
])
def test_real_data_configs_resolve(data: str, teacher: str, expected: str):
    proc = run_cli(["fit", "--config", str(ROOT / f"configs/data/{data}.yaml"),
                    "--config", str(ROOT / f"configs/teacher/{teacher}.yaml"), "--print_config"])
    config = yaml.safe_load(proc.stdout)
    assert config["data"]["class_path"] == expected
    assert config["model"]["init_args"]["backbone"] == teacher


def test_tiny_fits_on_fixture_files(tmp_path: Path):
    cifar = tmp_path / "cifar"
    write_cifar100(str(cifar), n_train=96, n_test=32)
    teacher_dir = tmp_path / "teacher"
    run_cli(["fit", "--config", str(ROOT / "configs/data/cifar100.yaml"), f"--data.data_dir={cifar}",
             "--data.batch_size=32", "--data.eval_batch_size=32", "--data.num_workers=0",
             "--model=kd_lightning.modules.TeacherModule", "--model.backbone=resnet8", "--model.memory_size=4",
             "--trainer.max_epochs=1", f"--trainer.default_root_dir={teacher_dir}", *QUIET])
    results = read_results(teacher_dir)
    assert results["status"] == "complete" and results["num_classes"] == 100

    tiny = tmp_path / "tiny"
    write_tiny_imagenet(str(tiny), n_classes=5, per_class=8, n_val=16)
    student_dir = tmp_path / "student"
    run_cli(["fit", "--config", str(ROOT / "configs/data/tiny_imagenet.yaml"), f"--data.data_dir={tiny}",
             "--data.verify=false", "--data.batch_size=20", "--data.eval_batch_size=16", "--data.num_workers=0",
             "--model=kd_lightning.modules.StudentModule", "--model.backbone=resnet8", "--model.kd_weight=0",
             "--model.ce_weight=1", "--trainer.max_epochs=1", f"--trainer.default_root_dir={student_dir}", *QUIET])
    results = read_results(student_dir)
    assert results["status"] == "complete" and results["num_classes"] == 200
    assert 0.0 <= results["last"]["test/acc"] <= 1.0
