"""How a run of a table row becomes a `kd-lightning fit` command (docs/ablations.md, "Runs, resuming, failures")."""
from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from kd_lightning.ablations.grid.spec import ABLATIONS, ROOT, rel
from kd_lightning.exceptions import UserFileError, UserValueError

DATASETS = ("synthetic", "cifar100", "tiny_imagenet")
PROXY = ROOT / "configs" / "demo"
#: The pair each real data set runs when PAIR is not given (docs/method.md §6's headline pair for CIFAR-100).
DEFAULT_PAIRS = {"cifar100": ("resnet32x4", "resnet8x4"), "tiny_imagenet": ("resnet18", "mobilenetv2")}


def parse_pair(pair: Optional[str]) -> Optional[tuple[str, str]]:
    """'resnet32x4->resnet8x4' -> ('resnet32x4', 'resnet8x4'); '' or None -> None (the data set's default)."""
    parts = tuple(p.strip() for p in (pair or "").split("->"))
    if pair and (len(parts) != 2 or not all(parts)):
        raise UserValueError(f"PAIR must be TEACHER->STUDENT, e.g. resnet32x4->resnet8x4; got {pair!r}")
    return parts if pair else None


@dataclass
class Recipe:
    """The settings a table shares across its rows: make's DATA, PAIR, EPOCHS, DEVICES, ARGS and STUDENT_ARGS."""

    data: str = "synthetic"
    pair: Optional[tuple[str, str]] = None
    epochs: Optional[int] = None
    devices: Optional[str] = None
    extra: list[str] = field(default_factory=list)
    student_extra: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.data not in DATASETS:
            raise UserValueError(f"DATA must be one of {', '.join(DATASETS)}; got {self.data!r}")
        if self.epochs is not None and self.epochs < 1:
            raise UserValueError(f"EPOCHS must be >= 1, got {self.epochs}")
        from kd_lightning.models import MODEL_NAMES as known

        for name in self.pair or ():
            if name not in known and "." not in name:  # a dotted name: a user's own class path
                raise UserValueError(f"PAIR names backbone {name!r}, which does not exist; known: {', '.join(known)}")
        if self.devices and not (self.devices.isdigit() and int(self.devices) >= 1) and self.devices != "auto":
            raise UserValueError(f"DEVICES must be a whole number >= 1 (GPUs per run), got {self.devices!r}")

    def given_keys(self, args: Optional[list[str]] = None) -> set[str]:
        """The dotted keys ARGS and STUDENT_ARGS (or `args`) set (`--key=value` or `--key value`): a method card's
        pair setting yields to them."""
        words = self.extra + self.student_extra if args is None else args
        return {a[2:].partition("=")[0] for a in words if a.startswith("--")}

    def epochs_of(self, stage: str) -> Optional[int]:
        """The trainer.max_epochs the recipe asks of `stage`'s runs: EPOCHS, or None when it does not set them,
        as for students whose STUDENT_ARGS give their own (they come last on the command line: command())."""
        if stage == "student" and "trainer.max_epochs" in self.given_keys(self.student_extra):
            return None
        return self.epochs

    @property
    def proxy(self) -> bool:
        return self.data == "synthetic"

    def backbone(self, stage: str) -> Optional[str]:
        pair = self.pair or DEFAULT_PAIRS.get(self.data)
        return pair[0 if stage == "teacher" else 1] if pair else None

    def configs(self, stage: str) -> list[Path]:
        """The config files of a run of `stage`, in order (the row is not among them)."""
        own = PROXY / f"{stage}.yaml" if self.proxy else ROOT / "configs" / stage / f"{self.backbone(stage)}.yaml"
        if not self.proxy and not own.is_file():
            have = sorted(p.stem for p in own.parent.glob("*.yaml") if p.stem not in ("alone", "rkd"))
            raise UserFileError(f"no {stage} config for backbone {self.backbone(stage)!r} ({own}); PAIR takes "
                                f"{stage}s from: {', '.join(have)}")
        data = PROXY / "data.yaml" if self.proxy else ROOT / "configs" / "data" / f"{self.data}.yaml"
        files = [ROOT / "configs" / "trainer" / "default.yaml", data, own]
        for path in files:
            if not path.is_file():
                raise UserFileError(f"config {path} is missing; restore it from git")
        return files

    def command(self, stage: str, run_dir: Path, seed: int, row_args: list[str],
                teacher_checkpoint: Optional[Path] = None, resume: bool = False) -> list[str]:
        """The full `python -m kd_lightning fit ...` command of one run; `row_args` go last."""
        args = [sys.executable, "-m", "kd_lightning", "fit"]
        args += [word for path in self.configs(stage) for word in ("--config", rel(path))]
        if self.proxy and self.pair:
            args.append(f"--model.backbone={self.backbone(stage)}")
        args += self.extra
        if self.epochs is not None:
            args.append(f"--trainer.max_epochs={self.epochs}")
        if self.devices:
            args.append(f"--trainer.devices={self.devices}")
            if self.devices.isdigit() and int(self.devices) > 1:
                args.append("--trainer.strategy=ddp")  # the tested multi-GPU strategy (docs/multi_gpu.md)
        args += [f"--seed_everything={seed}", f"--trainer.default_root_dir={run_dir}"]
        if teacher_checkpoint is not None:  # a student of a teacher (the student alone has none)
            args.append(f"--model.teacher_checkpoint={teacher_checkpoint}")
        if resume:
            args.append("--ckpt_path=last")
        # STUDENT_ARGS come after the row (a method's overlay), so that they override its settings.
        return args + list(row_args) + (self.student_extra if stage == "student" else [])


def fit_args(command: list[str]) -> list[str]:
    return command[command.index("fit") + 1:]


def add_recipe_options(parser: argparse.ArgumentParser) -> None:
    """The table-wide settings (make's variables), shared by the runner's commands and the sweep program."""
    parser.add_argument("--data", default="synthetic", help="synthetic | cifar100 | tiny_imagenet")
    parser.add_argument("--pair", default="", help="TEACHER->STUDENT backbones (default: the data set's)")
    parser.add_argument("--epochs", default="", help="trainer.max_epochs of every run (default: the configs')")
    parser.add_argument("--devices", default="", help="trainer.devices; N > 1 adds --trainer.strategy=ddp")
    parser.add_argument("--args", default="", help="extra kd-lightning arguments for every run (one shell string)")
    parser.add_argument("--student_args", default="", help="extra arguments for the students only (a method's "
                        "setting: it wins over the method card's setting for the pair)")
    parser.add_argument("--runs", default=str(ROOT / "runs" / "ablations"), help="root folder of the runs")
    parser.add_argument("--ablations", default=str(ABLATIONS), help="folder of the tables (configs/ablations)")


def recipe_of(ns: argparse.Namespace) -> Recipe:
    """The recipe that add_recipe_options' options give; a bad value is one error naming make's variable."""
    if ns.epochs and not str(ns.epochs).isdigit():
        raise UserValueError(f"EPOCHS must be a whole number, got {ns.epochs!r}")
    words = {}
    for name, text in (("ARGS", ns.args), ("STUDENT_ARGS", ns.student_args)):
        try:
            words[name] = shlex.split(text or "")
        except ValueError as err:
            raise UserValueError(f"{name} is not a valid shell string ({err}): {text!r}") from None
    return Recipe(data=ns.data, pair=parse_pair(ns.pair), epochs=int(ns.epochs) if ns.epochs else None,
                  devices=ns.devices or None, extra=words["ARGS"], student_extra=words["STUDENT_ARGS"])
