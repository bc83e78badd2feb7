"""results.json records paths relative to its run folder (kd_lightning/callbacks/results.py), and the committed
proxy's records hold no absolute path."""
import json
from pathlib import Path

from kd_lightning.callbacks.results import make_portable, relative_paths

ROOT = Path(__file__).resolve().parents[1]


def test_paths_become_relative_to_the_run_folder(tmp_path):
    run = Path("/elsewhere/runs/synthetic/paper/seed0/student")
    record = {"checkpoints": {"best": f"{run}/checkpoints/best.ckpt", "last": None},
              "config": {"trainer": {"default_root_dir": str(run)},
                         "model": {"init_args": {"teacher_checkpoint": f"{run.parent}/teacher/checkpoints/last.ckpt"}}},
              "error": "ValueError: /not a path\nsecond line", "args": ["/elsewhere/data", 3]}
    out = relative_paths(record, run)
    assert out["checkpoints"] == {"best": "checkpoints/best.ckpt", "last": None}
    assert out["config"]["trainer"]["default_root_dir"] == "."
    assert out["config"]["model"]["init_args"]["teacher_checkpoint"] == "../teacher/checkpoints/last.ckpt"
    assert out["error"] == record["error"] and out["args"][1] == 3
    # A file made on another machine: relative to the run folder it recorded, wherever it lies now.
    path = tmp_path / "copied" / "results.json"
    path.parent.mkdir()
    path.write_text(json.dumps(record))
    assert make_portable(path) is True and make_portable(path) is False
    assert json.loads(path.read_text())["checkpoints"]["best"] == "checkpoints/best.ckpt"


def test_committed_records_hold_no_absolute_path():
    files = list((ROOT / "results" / "proxy-runs").rglob("results.json"))
    assert files
    bad = [str(f) for f in files if '"/' in f.read_text()]
    assert not bad, f"absolute paths in {bad[:3]}: rewrite them with kd_lightning.callbacks.results.make_portable"
