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
