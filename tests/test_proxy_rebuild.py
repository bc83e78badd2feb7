"""The committed proxy tables (results/proxy/) rebuild unchanged from the committed runs (results/proxy-runs/, in the
run store's layout; Table D from its own store, results/proxy-runs-students/): Tables A-D byte for byte (markdown, CSV and picture), the build's clock line aside, and the
demo's table, its "finished" date (a file time) aside."""
from pathlib import Path

import pytest

from kd_lightning.ablations.__main__ import build_found
from kd_lightning.ablations.grid.recipe import Recipe
from kd_lightning.ablations.grid.spec import ROOT, tables_of
from kd_lightning.ablations.grid.store import RESULTS_FILE, RunStore
from kd_lightning.demo_report import LABELS, jobs, table

PROXY, RUNS = ROOT / "results" / "proxy", ROOT / "results" / "proxy-runs"
STUDENT_RUNS = ROOT / "results" / "proxy-runs-students"


def without_clock(text: str, clock: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith(clock)]


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("proxy")
    assert build_found(tables_of(["margin", "contrastive", "lambda"]), Recipe(), None, RunStore(RUNS), out) == 0
    assert build_found(tables_of(["students"]), Recipe(), None, RunStore(STUDENT_RUNS), out) == 0
    return out


@pytest.mark.parametrize("name", ["margin", "contrastive", "lambda", "students"])
def test_tables_a_to_d_rebuild_identical_from_the_committed_runs(rebuilt, name):
    assert without_clock((rebuilt / f"{name}.md").read_text(), "| built |") == \
        without_clock((PROXY / f"{name}.md").read_text(), "| built |")
    assert (rebuilt / f"{name}.csv").read_bytes() == (PROXY / f"{name}.csv").read_bytes()
    assert (rebuilt / f"{name}.png").read_bytes() == (PROXY / f"{name}.png").read_bytes()


def test_the_demo_table_rebuilds_identical_from_the_committed_runs():
    store, recipe, seeds = RunStore(RUNS), Recipe(), [0, 1, 2, 3, 4]
    by_seed = [jobs(recipe, seed) for seed in seeds]
    results = {role: [store.results(j[role]) for j in by_seed] for role in LABELS}
    paths = [store.dir(j[role]) / RESULTS_FILE for j in by_seed for role in LABELS]
    text = "# The demo: the paper's comparison on the synthetic proxy\n\n" + table(results, seeds, paths)
    assert without_clock(text, "Hardware:") == without_clock((PROXY / "demo.md").read_text(), "Hardware:")
