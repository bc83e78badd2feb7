"""`migrate OLD --runs NEW` (docs/ablations.md): move the runs of the layout before the store into it; a run whose
recorded config differs from what the recipe asks for is another recipe's: left there and named."""
from __future__ import annotations

import shutil
from pathlib import Path

from kd_lightning.ablations.grid.local import expected_identity, job_command, say
from kd_lightning.ablations.grid.recipe import Recipe
from kd_lightning.ablations.grid.runs import alone_job, grid_jobs, unique
from kd_lightning.ablations.grid.spec import MARGIN_SPACES, tables_of
from kd_lightning.ablations.grid.store import RECIPE_FILE, RunStore, legacy_dir, read_json, seed_folders
from kd_lightning.fit_parser import differences, identity


def migrate(old: Path, recipe: Recipe, store: RunStore, ablations: Path) -> int:
    old = Path(old).resolve()
    tables = [t for space in MARGIN_SPACES for t in tables_of(["all"], space, ablations)
              if t.margin_space or space == MARGIN_SPACES[0]]
    moved, kept = 0, []
    for seed in sorted(seed_folders(old, recipe.data)):
        for job in unique(grid_jobs(recipe, tables, seed) + [alone_job(recipe, seed)]):
            source, target = legacy_dir(old, job), store.dir(job)
            if not source.is_dir() or source.resolve() == target.resolve():
                continue
            recorded = (read_json(source / RECIPE_FILE) or {}).get("identity")
            if recorded is None and (source / "config.yaml").is_file():  # recipe.json before it held the identity:
                recorded = identity(["--config", str(source / "config.yaml")], str(source))  # the run's own dump
            expected = expected_identity(job, recipe, store)
            diff = differences(expected, recorded or {})
            if diff or target.exists():
                kept.append(f"{source}: " + ("; ".join(diff[:3]) if diff else f"{target} exists already"))
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(source), str(target))
            store.write_recipe(job, job_command(job, recipe, store)[1:], expected)
            moved += 1
    for parent in sorted((p for p in old.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if not any(parent.iterdir()):
            parent.rmdir()
    say(f"[migrate] moved {moved} runs into {store.root}" + "".join(f"\n  not moved: {k}" for k in kept))
    return 1 if kept else 0
