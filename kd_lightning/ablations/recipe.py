"""How a run of a table row becomes a `kd-lightning fit` command: which configs, in which order.

    configs/trainer/default.yaml            W&B logger (offline unless configured), 240 epochs
    data configs                            synthetic: configs/demo/data.yaml (the demo's set and schedule)
                                            cifar100 / tiny_imagenet: configs/data/<data>.yaml
    stage config                            synthetic: configs/demo/{teacher,student}.yaml (the demo's recipe)
                                            otherwise: configs/teacher/<T>.yaml, configs/student/<S>.yaml
    --model.backbone=...                    when a pair is given on the synthetic proxy
    extra args (make's ARGS)                e.g. --config configs/fast/gpu.yaml
    --trainer.max_epochs / devices / seed / default_root_dir / teacher_checkpoint
    the run's own arguments                 the teacher's canonical overlay (runs.py), a student variant's config

They come last, so their values win over everything before it (the same holds for a sweep's swept values).
The synthetic proxy is the demo: `make demo` and `make tables` (DATA=synthetic) train the very same runs.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from kd_lightning.ablations.rows import ROOT

DATASETS = ("synthetic", "cifar100", "tiny_imagenet")
PROXY = ROOT / "configs" / "demo"
#: The pair each real data set runs when PAIR is not given (METHOD.md 6's headline pair for CIFAR-100).
DEFAULT_PAIRS = {"cifar100": ("resnet32x4", "resnet8x4"), "tiny_imagenet": ("resnet18", "mobilenetv2")}


def rel(path: Path) -> str:
    """A config path as written in commands: relative to the repository root (commands run there)."""
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def parse_pair(pair: Optional[str]) -> Optional[tuple[str, str]]:
    """'resnet32x4->resnet8x4' -> ('resnet32x4', 'resnet8x4'); '' or None -> None (the data set's default)."""
    if not pair:
        return None
    parts = [p.strip() for p in pair.split("->")]
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"PAIR must be TEACHER->STUDENT, e.g. resnet32x4->resnet8x4; got {pair!r}")
    return parts[0], parts[1]


@dataclass
class Recipe:
    """The settings a table shares across its rows (make's DATA, PAIR, EPOCHS, DEVICES, ARGS). Table A's margin
    space is a change of its rows' teachers (runs.py), not of the recipe."""

    data: str = "synthetic"
    pair: Optional[tuple[str, str]] = None
    epochs: Optional[int] = None
    devices: Optional[str] = None
    extra: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.data not in DATASETS:
            raise ValueError(f"DATA must be one of {', '.join(DATASETS)}; got {self.data!r}")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"EPOCHS must be >= 1, got {self.epochs}")

    @property
    def proxy(self) -> bool:
        return self.data == "synthetic"

    def backbone(self, stage: str) -> Optional[str]:
        pair = self.pair or DEFAULT_PAIRS.get(self.data)
        return None if pair is None else pair[0 if stage == "teacher" else 1]

    def configs(self, stage: str) -> list[Path]:
        """The config files of a run of `stage`, in order (the row is not among them)."""
        files = [ROOT / "configs" / "trainer" / "default.yaml"]
        if self.proxy:
            files += [PROXY / "data.yaml", PROXY / f"{stage}.yaml"]
        else:
            files += [ROOT / "configs" / "data" / f"{self.data}.yaml", self._stage_config(stage)]
        for path in files:
            if not path.is_file():
                raise FileNotFoundError(f"config {path} is missing; restore it from git")
        return files

    def _stage_config(self, stage: str) -> Path:
        name = self.backbone(stage)
        path = ROOT / "configs" / stage / f"{name}.yaml"
        if not path.is_file():
            have = sorted(p.stem for p in (ROOT / "configs" / stage).glob("*.yaml") if p.stem not in ("alone", "rkd"))
            raise FileNotFoundError(
                f"no {stage} config for backbone {name!r} ({path}); PAIR takes {stage}s from: {', '.join(have)}"
            )
        return path

    def command(
        self,
        stage: str,
        run_dir: Path,
        seed: int,
        row_args: list[str],
        teacher_checkpoint: Optional[Path] = None,
        resume: bool = False,
    ) -> list[str]:
        """The full `python -m kd_lightning fit ...` command of one run; `row_args` go last."""
        args = [sys.executable, "-m", "kd_lightning", "fit"]
        for path in self.configs(stage):
            args += ["--config", rel(path)]
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
        return args + list(row_args)


# --- what a run was trained with, for the check that a finished run still matches its table ------------------------
#: Arguments that do not change what a run computes (where it lives, how many devices share the same global batch).
VOLATILE = ("--trainer.devices", "--trainer.strategy", "--ckpt_path", "--trainer.default_root_dir",
            "--model.teacher_checkpoint", "--print_config")
_CLASS_GROUPS = ("model", "data")


def _merge(base: dict, update: dict) -> dict:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        elif isinstance(value, str) and isinstance(base.get(key), dict) and "class_path" in base[key]:
            base[key]["class_path"] = value  # `--model.objective=X`: jsonargparse swaps the class, keeps init_args
        else:
            base[key] = value
    return base


def _set_dotted(config: dict, key: str, value) -> None:
    parts = key.split(".")
    # jsonargparse's shorthand: --model.backbone means --model.init_args.backbone.
    if len(parts) > 1 and parts[0] in _CLASS_GROUPS and parts[1] not in ("class_path", "init_args"):
        parts.insert(1, "init_args")
    update: dict = {}
    node = update
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    _merge(config, update)


def effective(args: list[str]) -> dict:
    """The config that `args` (the arguments of `kd-lightning fit`) asks for, merged the way jsonargparse merges it
    (later configs and `--dotted.key=value` override earlier ones), without the VOLATILE arguments. Two commands that
    ask for the same run give the same dict, whichever way they say it (a row file or a sweep's dotted keys)."""
    import yaml

    config: dict = {}
    i = 0
    while i < len(args):
        name, has_value, value = args[i].partition("=")
        if not has_value and i + 1 < len(args) and not args[i + 1].startswith("--"):
            value, i = args[i + 1], i + 1  # `--config FILE`
        i += 1
        if not name.startswith("--") or name in VOLATILE:
            continue  # the program and subcommand (python -m kd_lightning fit), or a VOLATILE argument
        if name == "--config":
            path = Path(value) if Path(value).is_absolute() else ROOT / value
            _merge(config, yaml.safe_load(path.read_text()) or {})
        else:
            _set_dotted(config, name[2:], yaml.safe_load(value) if value != "" else None)
    return config


def differences(expected: dict, found: dict, prefix: str = "") -> list[str]:
    """`key: found -> expected` for every leaf that differs."""
    out = []
    for key in sorted(set(expected) | set(found)):
        a, b = expected.get(key), found.get(key)
        path = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, path + ".")
        elif a != b:
            out.append(f"{path}: {b!r} -> {a!r}")
    return out
