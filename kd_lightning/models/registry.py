"""Backbones by name: the zoo's, a user's registered ones, or any backbone given by its dotted import path.

A user's own network joins in one of two ways (docs/extending.md):
- by class path: `--model.backbone=mypkg.nets.MyNet` (or a function, `mypkg.nets.my_net`), importable from the
  user's installed package or PYTHONPATH. Nothing to register; a teacher checkpoint records the path, so the
  student finds the same network again.
- by name: decorate the builder with `@register_model` (`@register_model("my_net")`) in a module that is imported
  before the run (e.g. the user's package's `__init__`), then `--model.backbone=my_net`.
Either way the builder takes `num_classes` and returns a `Backbone` (kd_lightning/models/base.py).
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Optional, TypeVar, Union

from kd_lightning.exceptions import UserValueError
from kd_lightning.models.base import Backbone

Builder = Callable[..., Backbone]
B = TypeVar("B", bound=Builder)

_REGISTRY: dict[str, Builder] = {}


def register_model(name_or_builder: Union[str, B, None] = None) -> Any:
    """Registers a backbone builder (a function or a Backbone subclass taking `num_classes`) under a name.

    `@register_model` uses the builder's `__name__`; `@register_model("my_net")` names it. A second builder under a
    taken name is an error (re-registering the same one, as a re-import does, is not)."""
    def add(builder: B, name: Optional[str] = None) -> B:
        name = name or builder.__name__
        known = _REGISTRY.get(name)
        if known is not None and _qualname(known) != _qualname(builder):
            raise UserValueError(f"backbone name {name!r} is taken by {_qualname(known)}; register "
                                 f"{_qualname(builder)} under another name")
        _REGISTRY[name] = builder
        return builder

    if isinstance(name_or_builder, str):
        return lambda builder: add(builder, name_or_builder)
    if name_or_builder is None:
        return add
    return add(name_or_builder)


def _qualname(builder: Builder) -> str:
    return f"{builder.__module__}.{builder.__qualname__}"


def model_names() -> tuple[str, ...]:
    """Every registered name, the zoo's first."""
    return tuple(_REGISTRY)


def resolve_builder(name: str) -> Builder:
    """The builder registered as `name`, or imported from the dotted path `name`; one error naming both ways."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if "." in name:
        module, _, attribute = name.rpartition(".")
        try:
            return getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError) as err:
            raise UserValueError(
                f"backbone {name!r} is not importable ({err}); a backbone given by class path must be importable "
                "from an installed package or PYTHONPATH, e.g. mypkg.nets.MyNet") from None
    raise UserValueError(f"Unknown model name {name!r}; choose one of: {', '.join(_REGISTRY)}, register your own "
                         "with kd_lightning.models.register_model, or give its class path (mypkg.nets.MyNet)")


def create_model(name: str, num_classes: int, **kwargs: Any) -> Backbone:
    """Builds the backbone called `name` (a registered name or a dotted import path) with a `num_classes`-way
    classifier."""
    model = resolve_builder(name)(num_classes=num_classes, **kwargs)
    if not isinstance(model, Backbone):
        raise UserValueError(
            f"backbone {name!r} built a {type(model).__name__}, not a kd_lightning.models.Backbone; subclass "
            "Backbone (forward_intermediates or forward_features, and _build_head) so the modules find its "
            "classifier and pooled embedding")
    return model
