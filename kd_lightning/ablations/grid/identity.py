"""A run is what its resolved config says: every row, sweep value and recipe is resolved by the CLI's own parser.

`resolve(args, source)` parses `kd-lightning fit ARGS` with the very parser of kd_lightning/cli.py (jsonargparse,
built once per process, nothing instantiated, nothing trained), so `5e-2` is 0.05, `0e0` is 0.0 and an agent's
`1e-05` is a row's `0.00001`. A misspelt key, a wrong type or a missing file raises RowError naming `source` (the
row file, or the sweep agent's arguments) and the key, before anything trains.

`identity(args, source)` is the canonical resolved config: the parsed namespace as a plain dict, without the keys
that do not change what is computed (VOLATILE, each with its reason), and with the one setting that does although it
looks like hardware: the number of processes whose BatchNorm statistics are separate (`batchnorm_world_size`, only
when there is more than one and SyncBatchNorm does not apply).
"""
from __future__ import annotations

import functools
import hashlib
import json
import re
from argparse import ArgumentError
from typing import Any, Iterable

from kd_lightning.exceptions import RowError
from kd_lightning.utils.world_size import sync_batchnorm_applies, world_size

#: Keys of the resolved fit config that do not change what a run computes, and why.
VOLATILE: dict[str, str] = {
    "config": "which files said it; the resolved values are what count",
    "trainer.default_root_dir": "where the run lives, not what it computes",
    "checkpoint.dirpath": "linked from trainer.default_root_dir",
    "trainer.logger": "where metrics are reported (W&B project, online or offline)",
    "trainer.enable_progress_bar": "console output only",
    "trainer.enable_model_summary": "console output only",
    "trainer.log_every_n_steps": "how often metrics are logged, not what is computed",
    "data.init_args.pin_memory": "host-to-GPU copy speed only",
    "ckpt_path": "a resume continues the same run",
    "weights_only": "how a checkpoint is loaded (safety), not what it holds",
    "overwrite": "an action of one command (start the folder over), not a setting of the run",
    "wait_for_lock": "an action of one command (wait for the folder's writer), not a setting of the run",
    "model.init_args.teacher_checkpoint": "the teacher is the run's folder (Job.needs); its path moves with the runs",
    "model.init_args.num_classes": "set from data.init_args.num_classes when the model is built (a link)",
    # Hardware: replaced by batchnorm_world_size below (the global batch is split over the processes, data/base.py).
    "trainer.devices": "hardware; see batchnorm_world_size",
    "trainer.num_nodes": "hardware; see batchnorm_world_size",
    "trainer.strategy": "hardware; see batchnorm_world_size",
    "trainer.sync_batchnorm": "see batchnorm_world_size",
}
#: Arguments stripped before parsing (their keys are VOLATILE), so that runs differing only in them share a parse.
_VOLATILE_ARGS = ("--trainer.default_root_dir", "--model.teacher_checkpoint", "--ckpt_path", "--print_config",
                  "--overwrite", "--wait_for_lock")


class _ParserBuilt(Exception):
    pass


@functools.lru_cache(maxsize=1)
def fit_parser() -> Any:
    """The CLI's own parser (KDLightningCLI's, with its links and defaults), built once per process."""
    from kd_lightning.cli import KDLightningCLI

    holder: dict[str, Any] = {}

    class _ParserOnly(KDLightningCLI):
        def parse_arguments(self, parser: Any, args: Any) -> None:
            holder["parser"] = parser
            raise _ParserBuilt  # stop before parsing sys.argv and instantiating anything

    try:
        _ParserOnly(args=[])
    except _ParserBuilt:
        pass
    parser = holder["parser"]
    parser.exit_on_error = False  # raise ArgumentError instead of printing the usage and exiting
    for sub in parser._subcommands_action._name_parser_map.values():
        sub.exit_on_error = False
    return parser


def summary(message: str) -> str:
    """jsonargparse's nested Union report, cut to the key and what is wrong with it."""
    unknown = re.findall(r"(?:Option|Key) '([^']+)' is not (?:accepted|expected)", message)
    keys = [k for k in re.findall(r'Parser key "([^"]+)"', message) if k]
    where = ".".join(dict.fromkeys(keys))
    if unknown:
        return f"unknown key {'.'.join(filter(None, [where, unknown[-1]]))!r}"
    missing = re.search(r"File does not exist: '([^']+)'", message) or re.search(r"Unable to load config '([^']+)'",
                                                                                 message)
    if missing:
        return f"config file {missing.group(1)} does not exist"
    expected = list(dict.fromkeys(re.findall(r"Expected a <class '([\w.]+)'>", message)))
    given = re.findall(r"Given value: (.*)", message)
    if where and expected:
        value = given[0].strip() if given else "?"  # the innermost (the key's own) value comes first
        return f"key {where!r} expects {' or '.join(t.replace('NoneType', 'null') for t in expected)}, got {value!r}"
    first = message.strip().splitlines()[0] if message.strip() else "invalid arguments"
    return f"{first} ({where})" if where and where not in first else first


def _strip_volatile(args: Iterable[str]) -> tuple[str, ...]:
    return tuple(a for a in args if a.partition("=")[0] not in _VOLATILE_ARGS)


@functools.lru_cache(maxsize=1024)
def _parse(args: tuple[str, ...]) -> Any:
    from kd_lightning.utils.config_files import check_config_files

    check_config_files(list(args))  # a file that is not YAML: named with its line (ConfigFileError)
    return fit_parser().parse_args(["fit", *args]).fit


def resolve(args: Iterable[str], source: str) -> Any:
    """The namespace `kd-lightning fit ARGS` resolves to (VOLATILE arguments left out). Bad input raises RowError:
    `source: <what is wrong>`."""
    try:
        return _parse(_strip_volatile(args))
    except ArgumentError as err:
        raise RowError(f"{source}: {summary(str(err))}; nothing was started: fix it and run again") from None
    except RowError:
        raise
    except Exception as err:
        from kd_lightning.exceptions import KDLightningError

        if isinstance(err, KDLightningError):
            raise RowError(f"{source}: {err}") from None
        raise


def _pop(config: dict, dotted: str) -> Any:
    *parents, leaf = dotted.split(".")
    node = config
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            return None
    return node.pop(leaf, None)


def canonical(namespace: Any) -> dict:
    """The identity of a resolved fit namespace (see the module docstring)."""
    config = json.loads(json.dumps(namespace.clone().as_dict(), sort_keys=True, default=str))
    trainer = config.get("trainer") or {}
    world = world_size(trainer.get("accelerator"), trainer.get("devices"), trainer.get("num_nodes"))
    synced = sync_batchnorm_applies(trainer.get("accelerator"), trainer.get("sync_batchnorm"))
    for key in VOLATILE:
        _pop(config, key)
    if world > 1 and not synced:
        # Each process normalizes over its batch_size // world images: another computation than one process.
        trainer["batchnorm_world_size"] = world
    return config


def identity(args: Iterable[str], source: str) -> dict:
    """The canonical resolved config of `kd-lightning fit ARGS`: equal for two commands exactly when they train
    the same run, whichever way they spell it."""
    return canonical(resolve(args, source))


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


def digest(config: dict) -> str:
    """The short hash of a canonical identity (the run folder's suffix and results.json's config_digest)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:10]
