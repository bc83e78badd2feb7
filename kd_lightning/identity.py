"""A run's identity: its resolved `kd-lightning fit` config without what does not change what it computes, and the
short hash of that, which names the table runner's run folders and is results.json's `config_digest`.

Keys are left out for two reasons. VOLATILE keys never count (each with its reason). A key that identity v1 did not
know (KNOWN_KEYS, identity_v1_keys.json: every key of the fit parser and of the package's classes when the hash was
introduced, frozen) counts only when its value differs from its default: a new option, Trainer argument or
constructor argument with its default leaves every existing run's identity (and folder) as it was.

fit_parser.identity() gives it for `kd-lightning fit ARGS`, resolved by the CLI's own parser offline.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import json
from pathlib import Path
from typing import Any, Callable

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
#: {"": the fit parser's own dotted keys, class path: its constructor's arguments} of identity v1. Never regenerate it:
#: its point is that a key added later is not in it.
KNOWN_KEYS: dict[str, frozenset[str]] = {
    owner: frozenset(keys)
    for owner, keys in json.loads((Path(__file__).with_name("identity_v1_keys.json")).read_text()).items()
}
_MISSING = object()


def class_key(class_path: str) -> str:
    """The class a class_path names, as `module.Name` of where it is defined (a re-export is the same class)."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return class_path
    return f"{cls.__module__}.{cls.__qualname__}"


@functools.lru_cache(maxsize=None)
def class_defaults(class_path: str) -> dict:
    """The constructor defaults jsonargparse fills in for `class_path` (nothing for a class it cannot describe)."""
    from jsonargparse import ArgumentParser

    module, _, name = class_path.rpartition(".")
    parser = ArgumentParser(exit_on_error=False)
    try:
        parser.add_class_arguments(getattr(importlib.import_module(module), name), fail_untyped=False)
    except Exception:  # not a class jsonargparse can read: every key of it counts
        return {}
    return defaults_of(parser)


def _drop_new_defaults(node: dict, owner: str, defaults: Callable[[], dict], prefix: str = "") -> None:
    """Drop from `node` (in place) every leaf that identity v1 did not know and that has its default value."""
    known = KNOWN_KEYS.get(owner, frozenset())
    for key, value in list(node.items()):
        dotted = prefix + key
        if isinstance(value, dict) and "class_path" in value:
            args = value.get("init_args")
            if isinstance(args, dict):
                path = value["class_path"]
                _drop_new_defaults(args, class_key(path), lambda path=path: class_defaults(path))
        elif isinstance(value, dict) and not owner:  # a group of the parser's own keys (trainer, checkpoint)
            _drop_new_defaults(value, owner, defaults, dotted + ".")
        elif dotted not in known and _get(defaults(), dotted) == value:
            del node[key]


def _get(config: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(config, dict) or part not in config:
            return _MISSING
        config = config[part]
    return config


def _pop(config: dict, dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    node = _get(config, ".".join(parents)) if parents else config
    if isinstance(node, dict):
        node.pop(leaf, None)


def defaults_of(parser: Any) -> dict:
    """A (sub)command parser's defaults as a plain dict."""
    return json.loads(json.dumps(parser.get_defaults().as_dict(), default=str))


def canonical(namespace: Any, defaults: Callable[[], dict]) -> dict:
    """The identity of a resolved fit namespace (see the module docstring). `defaults`: the fit parser's defaults
    as a dict, asked for only when a key identity v1 did not know is there (the caller holds the parser: this
    module is imported by the CLI, so it builds none)."""
    config = json.loads(json.dumps(namespace.clone().as_dict(), sort_keys=True, default=str))
    trainer = config.get("trainer") or {}
    world = world_size(trainer.get("accelerator"), trainer.get("devices"), trainer.get("num_nodes"))
    synced = sync_batchnorm_applies(trainer.get("accelerator"), trainer.get("sync_batchnorm"))
    for key in VOLATILE:
        _pop(config, key)
    _drop_new_defaults(config, "", defaults)
    if world > 1 and not synced:
        # Each process normalizes over its batch_size // world images: another computation than one process.
        trainer["batchnorm_world_size"] = world
    return config


def run_identity(namespace: Any, defaults: Callable[[], dict]) -> dict:
    """What a run computes, its seed aside: the run folder's hash is of this (the seed is a folder of its own)."""
    config = canonical(namespace, defaults)
    config.pop("seed_everything", None)
    return config


def digest(config: dict) -> str:
    """The short hash of a canonical identity (the run folder's suffix and results.json's config_digest)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:10]
