"""`kd-lightning fit|validate|test --config A.yaml [--config B.yaml] [--dotted.key=value ...]`.

A LightningCLI whose model is chosen by `model.class_path` (TeacherModule or StudentModule) and whose data by
`data.class_path`. On top of Lightning's CLI it:
  - links `model.num_classes` from the datamodule;
  - always adds a ModelCheckpoint (best by `val/acc` plus last, in `<default_root_dir>/checkpoints/`) and the
    results.json writer;
  - owns its run folder (`fit` only): takes its OS lock (one writer; `--wait_for_lock=true` waits for the holder
    instead of stopping), refuses a folder that already holds a run unless `--ckpt_path last` resumes it or
    `--overwrite=true` starts it over, refuses a resume whose config differs from the run's config.yaml in a key a
    resume may not change (utils/run_folder.py), and without `--trainer.default_root_dir` picks a folder of its own
    (`runs/<stage>-<backbone>-<digest>`); says which folder at the start and what it measured at the end
    (utils/run_summary.py);
  - points W&B at the run directory, online only when the server answers (else offline, in one line), and keeps the
    W&B run id in the run folder so that a resume continues the same W&B run (utils/wandb_setup.py);
  - after `fit`, tests the last-epoch and best-epoch weights (logged as `test/*` and `test_best/*`) and writes
    results.json;
  - turns errors a user can cause into one message and exit code 1 (`KD_LIGHTNING_DEBUG=1` shows tracebacks),
    including a `--config` file that is not valid YAML (named, with its line);
  - keeps the console to what matters: a progress bar on a terminal, else one line per epoch (EpochLog); the known
    harmless library messages silenced one by one (utils/console_noise.py); `trainer.log_every_n_steps` clamped to
    an epoch (ClampLogInterval); wandb silent when offline (the run files stay; `kd_lightning.utils.wandb_hint.
    sync_hint` says what to `wandb sync`);
  - loads every checkpoint weights-only (`--weights_only` defaults to true) and checks a `--ckpt_path` file first;
  - resumes exactly: `last.ckpt` is written every epoch and checkpoints carry the random states (RNGState).
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import torch
import yaml
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from kd_lightning.callbacks import BEST_TEST_PREFIX, ClampLogInterval, EpochLog, ResultsWriter, RNGState, RunCheckpoint
# The classes a config names by short name (`--model.help TeacherModule`, `--data=SyntheticDataModule`): jsonargparse
# resolves a short name only among the subclasses imported when the command line is parsed.
import kd_lightning.data  # noqa: F401
import kd_lightning.distillation  # noqa: F401
import kd_lightning.modules  # noqa: F401
import kd_lightning.objectives  # noqa: F401
from kd_lightning.error_report import report_user_errors
from kd_lightning.exceptions import CheckpointError, RunFolderError, StaleRunError
from kd_lightning.identity import defaults_of, digest, run_identity
from kd_lightning.utils.checkpoint import load_checkpoint_file
from kd_lightning.utils.config_files import check_config_files
from kd_lightning.utils.console_noise import drop_unset_wandb_anonymous, silence_known_noise
from kd_lightning.utils.hardware import describe_hardware
from kd_lightning.utils.launch_rank import is_main_process
from kd_lightning.utils.run_folder import (CONFIG_FILE, changed_keys, clear_run, default_run_dir, flatten, inside,
                                           run_files, run_status)
from kd_lightning.utils.run_lock import RunBusy, held_by_parent, run_lock
from kd_lightning.utils.run_summary import end_line, start_line, wandb_part
from kd_lightning.utils.wandb_setup import RUN_ID_FILE, choose_mode, run_id, sync_command
from kd_lightning.utils.world_size import sync_batchnorm_applies

PROG = "kd-lightning"
# jsonargparse prints the usage line before a parse error; the full one lists ~150 options and buries the error.
SHORT_USAGE = "%(prog)s [-h] [-c CONFIG.yaml ...] [--print_config] [--dotted.key=value ...]"
SUBCOMMANDS = ("fit", "validate", "test", "predict")
# ckpt_path values Lightning resolves itself (no file to check here, or none yet).
SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")


class SaveConfigToRun(SaveConfigCallback):
    """Saves the resolved config to the run directory (overwriting on re-runs, atomically: a resume and the table
    runner read it) and into the W&B run config."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.already_saved or not self.save_to_log_dir:
            return super().setup(trainer, pl_module, stage)
        log_dir = trainer.log_dir  # on every rank: it broadcasts
        if trainer.is_global_zero:
            from kd_lightning.utils.atomic import atomic_write_text

            atomic_write_text(Path(log_dir) / self.config_filename, self.parser.dump(self.config, skip_none=False))
        self.save_to_log_dir = False  # written above; the rest of Lightning's setup (W&B config, broadcast) as is
        try:
            super().setup(trainer, pl_module, stage)
        finally:
            self.save_to_log_dir = True

    def save_config(self, trainer, pl_module, stage: str) -> None:
        config = yaml.safe_load(self.parser.dump(self.config, skip_unset=False))
        for logger in trainer.loggers:
            logger.log_hyperparams(config)


def stdout_is_terminal() -> bool:
    """Whether a progress bar would reach a terminal (a function, so that tests can stand in for one)."""
    return sys.stdout.isatty()


class KDLightningCLI(LightningCLI):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        silence_known_noise()
        kwargs.setdefault("save_config_callback", SaveConfigToRun)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("parser_kwargs", {
            "default_env": False, "prog": PROG, **{name: {"usage": SHORT_USAGE} for name in SUBCOMMANDS},
        })
        # No default_root_dir: parse_arguments names a folder for the run (utils/run_folder.default_run_dir).
        defaults = dict(kwargs.get("trainer_defaults") or {})
        # More than one process: one BatchNorm over the global batch, as on one GPU (opt out with
        # --trainer.sync_batchnorm=false; on the CPU torch has no SyncBatchNorm, see before_instantiate_classes).
        defaults.setdefault("sync_batchnorm", True)
        defaults.setdefault("devices", 1)  # not Lightning's "auto" (every GPU of the node): more only when asked
        extra = defaults.get("callbacks") or []
        defaults["callbacks"] = [*(extra if isinstance(extra, list) else [extra]), RNGState(), EpochLog(),
                                 ClampLogInterval()]
        kwargs["trainer_defaults"] = defaults
        self._ckpt_file: Optional[Path] = None
        # What the command holds while it runs (the run folder's lock), released however it ends.
        self._held = contextlib.ExitStack()
        with self._held:
            try:
                super().__init__(*args, **kwargs)
            except RuntimeError as err:
                self._raise_if_checkpoint_mismatch(err)
                raise

    def _raise_if_checkpoint_mismatch(self, err: RuntimeError) -> None:
        # A checkpoint from another model or config (e.g. another backbone or memory_size): one line, not
        # Lightning's traceback through load_state_dict.
        if self._ckpt_file is None or "Error(s) in loading state_dict" not in str(err):
            return
        detail = "; ".join(line.strip() for line in str(err).splitlines()[1:3])
        raise CheckpointError(
            f"checkpoint {self._ckpt_file} does not fit this model ({detail}); it was written by a run with "
            f"another model config: use that run's config.yaml (next to its checkpoints/ folder)"
        ) from None

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/acc",
            "checkpoint.mode": "max",
            "checkpoint.filename": "best",
            "checkpoint.save_last": True,
            "checkpoint.save_top_k": 1,
            "checkpoint.save_on_train_epoch_end": True,
            "checkpoint.enable_version_counter": False,
            "checkpoint.auto_insert_metric_name": False,
        })
        parser.link_arguments(  # no root yet: parse_arguments names one and sets both
            "trainer.default_root_dir", "checkpoint.dirpath",
            compute_fn=lambda root: str(Path(root) / "checkpoints") if root else None,
        )
        parser.add_lightning_class_args(ResultsWriter, "results")
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.add_argument(
            "--test_after_fit", type=bool, default=True,
            help="after fit, test the last-epoch and best-epoch weights and record both in results.json",
        )
        # Optional[bool] with None for "no": a key that is null counts as absent in the table runner's run identity.
        parser.add_argument(
            "--overwrite", type=Optional[bool], default=None,
            help="fit: start the run folder over (delete its results.json, config.yaml, checkpoints/ and W&B files) "
                 "when it already holds a run; without it such a fit is refused unless --ckpt_path last resumes it",
        )
        parser.add_argument(
            "--wait_for_lock", type=Optional[bool], default=None,
            help="fit: when another process trains the run folder, wait for it to finish instead of stopping",
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        command_line = sys.argv[1:] if args is None else args
        if isinstance(command_line, (list, tuple)):
            check_config_files(command_line)  # before jsonargparse, whose YAML errors do not name the file
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")  # none with run=False
        config = self.config[subcommand] if subcommand else self.config
        if not config.get("trainer.default_root_dir"):
            dumped = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
            config["trainer.default_root_dir"] = str(default_run_dir(dumped[subcommand] if subcommand else dumped))
        if not config.get("checkpoint.dirpath"):
            config["checkpoint.dirpath"] = str(Path(config["trainer.default_root_dir"]) / "checkpoints")
        if subcommand:
            # LightningCLI reads the hyperparameters of an explicit --ckpt_path right after this: check it first.
            self._guard_ckpt_path(config)

    def before_instantiate_classes(self) -> None:
        config = self.config.get(str(self.subcommand), self.config)
        self._choose_progress_bar(config.trainer)
        self._choose_sync_batchnorm(config.trainer)
        how = self._claim_run_folder(config) if self.subcommand == "fit" else ""
        if how and is_main_process():
            self._check_resume(config)
        self._configure_wandb(config)
        if how and is_main_process():
            print(start_line(Path(config.trainer.default_root_dir), how), flush=True)

    # --- the run folder: one writer, nothing overwritten by accident, a resume continues the same run ------------
    def _claim_run_folder(self, config: Any) -> str:
        """Lock the run folder and decide what this fit does with it; returns how it starts ("new run", ...)."""
        root = Path(config.trainer.default_root_dir)
        resume, overwrite, wait = (bool(config.get(key)) for key in ("ckpt_path", "overwrite", "wait_for_lock"))
        config.overwrite = config.wait_for_lock = None  # actions of this command, not settings of the run
        if not is_main_process():
            return "rank > 0"  # global rank zero decided, before it started this process (or beside it)
        if overwrite and inside(config.get("ckpt_path"), root):
            raise RunFolderError(f"--overwrite=true deletes the checkpoints of {root} that --ckpt_path "
                                 f"{config.ckpt_path} resumes from: pass one of the two")
        if not held_by_parent(root):
            self._lock_run_folder(root, wait=wait)
            found = run_files(root)
            if found and not resume and not overwrite:
                raise RunFolderError(
                    f"run folder {root} already holds a {run_status(root)} run ({', '.join(found[:3])}): resume it "
                    "with --ckpt_path last, start it over with --overwrite=true (deletes its results.json, "
                    "checkpoints and W&B files), or pass another --trainer.default_root_dir"
                )
            if found and overwrite:
                clear_run(root, extra=[RUN_ID_FILE])
                return "started over: --overwrite=true deleted the earlier run"
        if config.get("ckpt_path") == "last" and not (Path(config.checkpoint.dirpath) / "last.ckpt").is_file():
            return "new run: no checkpoints/last.ckpt to resume from yet"  # Lightning starts from scratch
        if resume:
            return f"resuming from {config.ckpt_path}"
        return "new run"

    def _lock_run_folder(self, root: Path, wait: bool) -> None:
        def waiting(owner: str) -> None:
            print(f"kd-lightning fit: run folder {root} is being trained by {owner}; waiting for it "
                  "(--wait_for_lock=true)", flush=True)

        try:
            self._held.enter_context(run_lock(root, wait=wait, on_wait=waiting))
        except RunBusy as busy:
            raise RunFolderError(
                f"run folder {root} is being trained by {busy.owner}: wait for it with --wait_for_lock=true, or "
                "pass another --trainer.default_root_dir"
            ) from None

    def _check_resume(self, config: Any) -> None:
        """A resume must train the run its folder holds: refuse a changed setting, naming the keys."""
        saved_file = Path(config.trainer.default_root_dir) / CONFIG_FILE
        if not config.get("ckpt_path") or not saved_file.is_file():
            return
        saved = yaml.safe_load(saved_file.read_text()) or {}
        current = yaml.safe_load(self.parser.dump(self.config, skip_none=False))[self.subcommand]
        changed = changed_keys(saved, current)
        if changed:
            old, new = flatten(saved), flatten(current)
            # Named as on the command line (--model.gate_delta), not as in config.yaml (model.init_args.gate_delta).
            detail = ", ".join(f"{k.replace('.init_args.', '.')}: {old.get(k)!r} -> {new.get(k)!r}"
                               for k in changed[:5])
            more = f" (and {len(changed) - 5} more)" if len(changed) > 5 else ""
            raise StaleRunError(
                f"resuming {saved_file.parent} with other settings than it was trained with ({detail}{more}): a "
                "resume may change only the epochs, the hardware and the logging. Resume with the run's own "
                f"settings (--config {saved_file} --ckpt_path last), or train a new run in another folder"
            )

    @staticmethod
    def _choose_sync_batchnorm(trainer: Any) -> None:
        # torch's SyncBatchNorm raises on CPU tensors: on the CPU each process keeps its own BatchNorm statistics
        # (the table runner then counts the world size as part of the run's identity, kd_lightning/identity.py).
        if trainer.sync_batchnorm and not sync_batchnorm_applies(trainer.accelerator, True):
            trainer.sync_batchnorm = False

    # --- console: a progress bar on a terminal, else EpochLog's lines ------------------------------------------------
    @staticmethod
    def _choose_progress_bar(trainer: Any) -> None:
        if stdout_is_terminal() or trainer.enable_progress_bar is False:
            return
        callbacks = trainer.callbacks or []
        explicit_bar = any("ProgressBar" in str(getattr(c, "class_path", c)) for c in
                           (callbacks if isinstance(callbacks, list) else [callbacks]))
        if not explicit_bar:  # a bar the config names is kept (Lightning refuses one with the flag off)
            trainer.enable_progress_bar = False

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        drop_unset_wandb_anonymous(self.trainer.loggers)  # before fit creates the W&B run

    # --- W&B: offline unless configured, files inside the run directory, silent when offline ----------------------
    def _configure_wandb(self, config: Any) -> None:
        root = Path(config.trainer.default_root_dir)
        loggers = config.trainer.logger
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            class_path = getattr(logger, "class_path", "") or ""
            if class_path.endswith("WandbLogger"):
                if logger.init_args.get("save_dir") in (None, "."):
                    logger.init_args.save_dir = str(root)
                if is_main_process():  # the other ranks never start a W&B run
                    choose_mode(root)
                    if self.subcommand == "fit":
                        given = (logger.init_args.get("id") or logger.init_args.get("version")
                                 or os.environ.get("WANDB_RUN_ID"))
                        logger.init_args.id = run_id(root, resume=bool(config.get("ckpt_path")), given=given)
                        logger.init_args.version = None
                if os.environ.get("WANDB_MODE") in ("offline", "dryrun"):
                    # Offline, all wandb prints is a banner and a sync hint per run; online it shows the run's URL.
                    os.environ.setdefault("WANDB_SILENT", "true")
                root.mkdir(parents=True, exist_ok=True)

    # --- after fit: test last and best weights, write results.json -------------------------------------------------
    def _results_writer(self) -> Optional[ResultsWriter]:
        return next((cb for cb in self.trainer.callbacks if isinstance(cb, ResultsWriter)), None)

    # --- checkpoint files given on the command line: weights only, checked before anything reads them ----------
    def _guard_ckpt_path(self, config: Any) -> None:
        if "weights_only" in config and config.weights_only is None:
            config.weights_only = True  # torch's default since 2.6, made explicit: no code runs from a checkpoint
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path:
            return
        if ckpt_path == "last":
            # What Lightning will resume from; when there is none it warns and starts from scratch.
            root = config.get("trainer.default_root_dir")
            dirpath = config.get("checkpoint.dirpath") or Path(root) / "checkpoints"
            path = Path(dirpath) / "last.ckpt"
            if not path.is_file():
                return
        elif str(ckpt_path) in SPECIAL_CKPT_PATHS or "://" in str(ckpt_path):
            return
        else:
            path = Path(ckpt_path)
        hint = "pass --ckpt_path=last (with the run's trainer.default_root_dir) or the path of a .ckpt it wrote"
        load_checkpoint_file(path, "--ckpt_path checkpoint", hint, mmap=True)
        self._ckpt_file = path

    def before_fit(self) -> None:
        writer = self._results_writer()
        if writer is None:
            return
        # Lightning's resolved dump of this subcommand's config (links applied). A private method, the one left here
        # (tested with pytorch-lightning 2.6.x; tests/test_cli.py fails when the name disappears): no public hook
        # gives the dump with link targets.
        self._dump_config()
        dumped = json.dumps(self.config_dump, sort_keys=True, default=str)
        # The run's identity without its seed (kd_lightning/identity.py): resuming, the hardware and the logging do
        # not change it, and a table run's digest is its run folder's hash suffix. `_parser` (LightningCLI's, private,
        # tested with pytorch-lightning 2.6.x): the defaults of this subcommand's options, read only for an option
        # that identity v1 did not know.
        config_digest = digest(run_identity(self.config[self.subcommand],
                                            lambda: defaults_of(self._parser(self.subcommand))))
        writer.extra.update({
            "seed": self.config_dump.get("seed_everything"),
            "config_digest": config_digest,
            "config": json.loads(dumped),
            "hardware": describe_hardware(
                "cuda" if self.trainer.strategy.root_device.type == "cuda" else "cpu", self.trainer.world_size
            ),
            "torch": torch.__version__,
        })

    def after_fit(self) -> None:
        writer = self._results_writer()
        if writer is None:
            return
        teacher_acc = getattr(self.model, "teacher_val_acc_value", None)
        if teacher_acc is not None:
            writer.extra["teacher_val_acc"] = teacher_acc
        checkpoint = self.trainer.checkpoint_callback
        # Read before testing: trainer.test re-runs callback setup.
        writer.extra["checkpoints"] = {
            "best": getattr(checkpoint, "best_model_path", "") or None,
            "last": getattr(checkpoint, "last_model_path", "") or None,
        }
        tests: dict[str, dict] = {}
        if self.config[self.subcommand].test_after_fit and not self.trainer.interrupted:
            tests["last"] = self.trainer.test(self.model, datamodule=self.datamodule, verbose=False)[0]
            best = writer.extra["checkpoints"]["best"]
            if best and Path(best).is_file():
                tests["best"] = self._test_best(best)
        writer.finalize(self.trainer, self.model, tests)
        if is_main_process():
            status = "interrupted" if self.trainer.interrupted else "complete"
            wandb = self._finish_wandb()
            best = writer.best_index
            best_epoch = writer.history[best]["epoch"] if best is not None else None
            print(end_line(status, tests, best_epoch, writer.path(self.trainer), wandb), flush=True)

    def _finish_wandb(self) -> str:
        """Close this command's W&B run (its files complete; a next command in this process starts its own) and
        say where it went."""
        from pytorch_lightning.loggers import WandbLogger

        logger = next((lg for lg in self.trainer.loggers if isinstance(lg, WandbLogger)), None)
        if logger is None:
            return wandb_part(None)
        mode = os.environ.get("WANDB_MODE", "online")
        url = (getattr(logger.experiment, "url", "") or "") if mode == "online" else ""
        logger.experiment.finish()
        if mode == "online":
            return wandb_part("online", url=url)
        return wandb_part(mode, sync=sync_command(Path(logger.save_dir or self.trainer.default_root_dir)))

    def _test_best(self, ckpt_path: str) -> dict:
        # Under its own names: loggers keep the last value of a name, so W&B's summary would show only this pass.
        default = self.model.test_log_name
        self.model.test_log_name = BEST_TEST_PREFIX
        try:
            return self.trainer.test(
                self.model, datamodule=self.datamodule, ckpt_path=ckpt_path, weights_only=True, verbose=False
            )[0]
        finally:
            self.model.test_log_name = default


def main(args: Optional[list[str]] = None) -> None:
    with report_user_errors():
        KDLightningCLI(args=args)


if __name__ == "__main__":
    main()
