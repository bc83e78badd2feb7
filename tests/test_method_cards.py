"""The method cards (kd_lightning/distillation/registry.py): every method module's card is well formed, its overlay
selects a distillation term, and the docs' method table is rendered from them. Nothing here lists the methods."""
from __future__ import annotations

import pytest

from conftest import ROOT
from kd_lightning.distillation.base import DistillationObjective
from kd_lightning.distillation.registry import MethodCard, method_cards, method_table_markdown

CARDS = method_cards()


def test_orders_and_names_are_unique():
    assert len({c.order for c in CARDS}) == len(CARDS)
    assert len({c.name for c in CARDS}) == len(CARDS)


@pytest.mark.parametrize("card", CARDS, ids=[c.name for c in CARDS])
def test_card_overlay_selects_a_distillation_term(card: MethodCard):
    cls = card.distillation_class(ROOT)
    assert issubclass(cls, DistillationObjective)
    _, init_args = card.distillation_spec(ROOT)
    term = cls(**init_args)  # the overlay's arguments are the constructor's
    if card.pre_phase_key:
        assert card.pre_phase_key.startswith("model.distillation.init_args.")
        assert term.pre_phase_epochs == init_args[card.pre_phase_key.rsplit(".", 1)[1]] > 0
    else:
        assert term.pre_phase_epochs == 0
    for p in card.published:
        assert 0 < p.top1 < 100 and p.source


def test_method_table_has_a_row_per_card_in_order():
    rows = method_table_markdown().splitlines()[2:]
    assert [r.split(" | ")[0].lstrip("| ") for r in rows] == [c.label for c in CARDS]


def test_every_proxy_student_trains_the_proxys_epochs_after_its_pre_phase(tmp_path):
    """On the synthetic proxy every Table D student, resolved as the runner runs it, trains the proxy's epochs
    (configs/demo/data.yaml, read here) after its pre-phase: an overlay's 270-epoch CIFAR-100 schedule must not leak
    into the proxy."""
    import yaml

    from kd_lightning.ablations.grid.local import expected_identity
    from kd_lightning.ablations.grid.recipe import Recipe
    from kd_lightning.ablations.grid.runs import grid_jobs
    from kd_lightning.ablations.grid.spec import tables_of
    from kd_lightning.ablations.grid.store import RunStore

    proxy_epochs = yaml.safe_load((ROOT / "configs/demo/data.yaml").read_text())["trainer"]["max_epochs"]
    recipe, store = Recipe(data="synthetic"), RunStore(tmp_path)
    students = {job.key.rsplit("/", 1)[1]: job for job in grid_jobs(recipe, tables_of(["students"]), 0)
                if job.stage != "teacher"}
    assert len({key.rsplit("-", 1)[0] for key in students}) == len(CARDS)
    for key, job in students.items():
        identity = expected_identity(job, recipe, store)
        distillation = identity["model"]["init_args"].get("distillation") or {}
        pre_phase = (distillation.get("init_args") or {}).get("init_epochs") or 0
        assert identity["trainer"]["max_epochs"] - pre_phase == proxy_epochs, key
