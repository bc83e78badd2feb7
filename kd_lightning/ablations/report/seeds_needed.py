"""`python -m kd_lightning.ablations seeds-needed --effect 0.5`: per row of Tables A-D, the seeds that would detect a
true Δ of EFFECT points in the headline Δ (tables.DIFFERENCES[0]) with 80% power, estimated from the runs there are
(docs/method.md §9)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from kd_lightning.ablations.grid.recipe import Recipe
from kd_lightning.ablations.grid.spec import ABLATIONS, Table
from kd_lightning.ablations.grid.store import RunStore, seed_folders
from kd_lightning.ablations.report.collect import collect, difference, table_rows
from kd_lightning.ablations.report.tables import DIFFERENCES
from kd_lightning.exceptions import UserValueError
from kd_lightning.stats import MAX_SEEDS, POWER, seeds_needed


def report(tables: list[Table], recipe: Recipe, store: RunStore, effect: float, seeds: Optional[list[int]] = None,
           ablations: Path = ABLATIONS) -> str:
    """The table of seeds needed, one line per paired row of each table."""
    runs = store.root
    seeds = seeds or sorted(seed_folders(runs, recipe.data))
    if not seeds:
        raise UserValueError(f"no runs under {runs / recipe.data}: pass --runs (the committed proxy is "
                             "results/proxy-runs)")
    _, stage, column, scale, _ = DIFFERENCES[0]
    out = [f"Seeds for {POWER:.0%} power to detect a true Δ of ±{effect:g} points in student test accuracy (last "
           f"epoch), two-sided paired t-test at 5%, runs in {runs}/{recipe.data}. Each count is an estimate: it uses "
           "the sd of the paired differences observed over the n seeds there are.", ""]
    for table in tables:
        out += [f"{table.title} ({table.id})", "",
                "| row | n seeds | sd of Δ (points) | detects now (±points) | seeds needed |", "|---|---|---|---|---|"]
        frame = collect(table, recipe, seeds, store, ablations)
        for cell, label in table_rows(frame).label.items():
            d = difference(frame, cell, stage, column)
            if d is None:
                continue
            if d.sd is None:
                cells = f"{d.n} | — | — | no spread from {d.n} seed(s): run 2 or more"
            elif d.sd == 0:  # the same Δ on every seed (e.g. a row that trains exactly as its baseline)
                cells = f"{d.n} | 0 | — | — (the same Δ, {d.mean * scale:+.2f}, on every seed)"
            else:
                need = seeds_needed(effect, d.sd * scale)
                cells = (f"{d.n} | {d.sd * scale:.2f} | {d.detectable * scale:.2f} | "
                         f"{f'more than {MAX_SEEDS}' if need is None else need} (estimate from {d.n} seeds)")
            out.append(f"| {label} | {cells} |")
        out.append("")
    return "\n".join(out)
