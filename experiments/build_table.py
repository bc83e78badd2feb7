"""Build an ablation table from the results.json of its runs: results/<table id>.md, .csv and .png.

    python experiments/build_table.py margin --data synthetic --seeds 0 1 2
    python experiments/build_table.py margin-logit --data cifar100 --seeds 0 1 2 --runs runs --out results

Rows come from configs/ablations/<table>/ (experiments/rows.py); runs from <runs>/<table id>/<data>/<row>/seed<k>/.
Per row: teacher and student test accuracy and test loss of the last-epoch and of the best-epoch weights (best =
highest val/acc), the final epoch's train loss and its parts, the fraction of open gates (last epoch, and per epoch),
and the teacher's test-set embedding geometry (METHOD.md 8). Several seeds give mean ± std (sample std) and the count.
A run that is not complete is never a number: its cells say missing, failed, interrupted or running.
Exit status 1 when a run is not complete or the runs disagree with the asked-for settings (the files are written).
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rows import (  # noqa: E402
    ABLATIONS, RESULTS_FILE, ROOT, STAGES, TITLES, Row, RunKey, load_rows, parse_table_id, read_results, run_state,
)

#: (column name, results.json section, metric key) per stage; "acc" metrics are shown in %.
METRICS: dict[str, list[tuple[str, str, str]]] = {
    "teacher": [
        ("test_acc_last", "last", "test/acc"), ("test_acc_best", "best", "test/acc"),
        ("test_loss_last", "last", "test/loss"), ("test_loss_best", "best", "test/loss"),
        ("train_loss", "last", "train/loss"), ("train_loss_ce", "last", "train/loss_ce"),
        ("train_loss_contrastive", "last", "train/loss_contrastive"), ("gate_open", "last", "train/gate_open"),
        ("d_intra_last", "last", "test/d_intra"), ("d_inter_last", "last", "test/d_inter"),
        ("ratio_last", "last", "test/ratio"),
        ("d_intra_best", "best", "test/d_intra"), ("d_inter_best", "best", "test/d_inter"),
        ("ratio_best", "best", "test/ratio"),
    ],
    "student": [
        ("test_acc_last", "last", "test/acc"), ("test_acc_best", "best", "test/acc"),
        ("test_loss_last", "last", "test/loss"), ("test_loss_best", "best", "test/loss"),
        ("train_loss", "last", "train/loss"), ("train_loss_ce", "last", "train/loss_ce"),
        ("train_loss_kd", "last", "train/loss_kd"), ("train_loss_rkd", "last", "train/loss_rkd"),
    ],
}


# --- collecting ----------------------------------------------------------------------------------------------------
@dataclass
class Stat:
    """mean ± sample std over the complete seeds (std None with one seed)."""

    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> Optional[float]:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> Optional[float]:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    def text(self, scale: float = 1.0, digits: int = 2) -> str:
        if not self.values:
            return "—"
        mean = f"{self.mean * scale:.{digits}f}"
        return mean if self.std is None else f"{mean} ± {self.std * scale:.{digits}f}"


@dataclass
class StageResult:
    """One stage (teacher or student) of one row over the seeds."""

    states: dict[int, str] = field(default_factory=dict)  # seed -> missing|complete|failed|interrupted|running
    results: dict[int, dict] = field(default_factory=dict)  # complete seeds only

    @property
    def complete_seeds(self) -> list[int]:
        return [s for s, state in self.states.items() if state == "complete"]

    @property
    def status(self) -> str:
        """complete, or the worst state among the seeds (failed > interrupted > running > missing)."""
        states = set(self.states.values())
        if states == {"complete"}:
            return "complete"
        for state in ("failed", "interrupted", "running", "missing"):
            if state in states:
                return state
        return "missing"

    def stat(self, section: str, key: str) -> Stat:
        values = [(self.results[s].get(section) or {}).get(key) for s in self.complete_seeds]
        return Stat([float(v) for v in values if v is not None and math.isfinite(float(v))])

    def per_epoch(self, key: str) -> list[Optional[float]]:
        """Mean over complete seeds of `key` per epoch (history)."""
        series = [[h.get(key) for h in self.results[s].get("history", [])] for s in self.complete_seeds]
        length = max((len(x) for x in series), default=0)
        out = []
        for epoch in range(length):
            values = [x[epoch] for x in series if epoch < len(x) and x[epoch] is not None]
            out.append(statistics.fmean(values) if values else None)
        return out


@dataclass
class RowResult:
    row: Row
    stages: dict[str, StageResult]
    errors: list[str] = field(default_factory=list)


def collect(tid: str, data: str, seeds: list[int], runs: Path, ablations: Path = ABLATIONS) -> list[RowResult]:
    table, _ = parse_table_id(tid)
    out = []
    for row in load_rows(table, ablations):
        result = RowResult(row, {stage: StageResult() for stage in STAGES})
        for seed in seeds:
            key = RunKey(tid, data, row.name, seed)
            for stage in STAGES:
                path = key.dir(runs, stage) / RESULTS_FILE
                results = read_results(path)
                state = run_state(results)
                result.stages[stage].states[seed] = state
                if state == "complete":
                    result.stages[stage].results[seed] = results
                elif state != "missing":
                    message = (results or {}).get("error") or (
                        "not finished: still running, or killed; the same make command resumes it"
                        if state == "running" else "no error recorded")
                    result.errors.append(f"{key}/{stage}: {state}: {str(message).splitlines()[0][:200]}")
        out.append(result)
    return out


# --- what the table was run with ------------------------------------------------------------------------------------
def _counts(values: list[Any]) -> str:
    distinct = sorted({str(v) for v in values})
    if len(distinct) <= 1:
        return distinct[0] if distinct else "unknown"
    return ", ".join(f"{v} ({sum(str(x) == v for x in values)} runs)" for v in distinct)


def _all_results(rows: list[RowResult], stage: str) -> list[dict]:
    return [r for row in rows for r in row.stages[stage].results.values()]


def describe_data(config: dict) -> str:
    data = config.get("data") or {}
    init = data.get("init_args") or {}
    name = str(data.get("class_path", "?")).rsplit(".", 1)[-1]
    parts = [name]
    if "num_classes" in init:
        parts.append(f"{init['num_classes']} classes")
    if "train_size" in init:
        parts.append(f"{init['train_size']} train / {init.get('val_size')} val / {init.get('test_size')} test images")
    if "image_size" in init:
        parts.append(f"{init['image_size']}x{init['image_size']}")
    if "data_dir" in init:
        parts.append(f"from {init['data_dir']}")
    if "batch_size" in init:
        parts.append(f"global batch {init['batch_size']}")
    return ", ".join(parts)


def hardware_now() -> str:
    """CPU model and core count, and GPUs when torch sees any: the machine building the table."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} CPU cores"
    try:
        import torch

        if torch.cuda.is_available():
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            text += "; GPUs: " + _counts(names).replace(" runs)", ")")
        else:
            text += "; no GPU"
    except Exception:  # noqa: BLE001 - a broken CUDA install must not stop the table
        pass
    return text


@dataclass
class Settings:
    lines: list[tuple[str, str]]
    warnings: list[str]


def settings(rows: list[RowResult], tid: str, data: str, seeds: list[int], want_pair: Optional[str],
             want_epochs: Optional[int]) -> Settings:
    table, space = parse_table_id(tid)
    teachers, students = _all_results(rows, "teacher"), _all_results(rows, "student")
    warnings = []
    pair_t = [r.get("backbone") for r in teachers]
    pair_s = [r.get("backbone") for r in students]
    epochs = {stage: [r.get("epochs") for r in res] for stage, res in (("teacher", teachers), ("student", students))}
    data_text = _counts([describe_data(r.get("config") or {}) for r in teachers + students]) if teachers else "—"
    trainers = [(r.get("config") or {}).get("trainer", {}) for r in teachers + students]
    devices = _counts([f"{t.get('accelerator', '?')} x {t.get('devices', '?')}" for t in trainers])
    hardware = _counts([r["hardware"] for r in teachers + students if r.get("hardware")])
    if hardware == "unknown":
        hardware = hardware_now() + " (read when this table was built; results.json does not record it)"
    wall = sum(float(r.get("wall_seconds") or 0) for r in teachers + students)
    for stage, values in epochs.items():
        if len(set(values)) > 1:
            warnings.append(f"the {stage} runs do not all have the same number of epochs: {_counts(values)}")
        if want_epochs and values and set(values) != {want_epochs}:
            warnings.append(f"EPOCHS={want_epochs} was asked for but the {stage} runs have {_counts(values)} epochs: "
                            "finished runs are never re-run; delete them or use another RUNS folder")
    for stage, values in (("teacher", pair_t), ("student", pair_s)):
        if len(set(values)) > 1:
            warnings.append(f"the {stage} runs do not all use the same backbone: {_counts(values)}")
    if want_pair and teachers and students:
        want_t, want_s = [p.strip() for p in want_pair.split("->")]
        if set(pair_t) != {want_t} or set(pair_s) != {want_s}:
            warnings.append(f"PAIR={want_pair} was asked for but the runs use {_counts(pair_t)} -> {_counts(pair_s)}: "
                            "finished runs are never re-run; delete them or use another RUNS folder")
    space_text = {"prob": "probability space", "logit": "logit space"}[space]
    lines = [
        ("table", f"{TITLES[table]}" + (f" ({space_text})" if table == "margin" else "")),
        ("data", f"{data}: {data_text}" + (" — the CPU synthetic proxy, not a paper number" if data == "synthetic"
                                           else "")),
        ("pair", f"{_counts(pair_t)} -> {_counts(pair_s)} (teacher -> student)"),
        ("epochs", f"teacher {_counts(epochs['teacher'])}, student {_counts(epochs['student'])}"),
        ("seeds", f"{' '.join(map(str, seeds))} ({len(seeds)} asked for; cells are mean ± sample std over the "
                  "complete seeds, with their count in the last column)"),
        ("devices", devices),
        ("hardware", hardware),
        ("time", f"{wall / 60:.1f} min of training in all (the runs' wall_seconds; a resumed run counts its last "
                 "part only)"),
        ("numbers", "test top-1 accuracy in %; *last* = the last-epoch weights, *best* = the weights of the epoch "
                    "with the highest val/acc (checkpoints/best.ckpt); the student is distilled from the teacher's "
                    "last.ckpt"),
        ("built", time.strftime("%Y-%m-%d %H:%M %Z")),
    ]
    return Settings(lines, warnings)


# --- rendering -----------------------------------------------------------------------------------------------------
def cell(row: RowResult, stage: str, section: str, key: str, scale: float = 1.0, digits: int = 2) -> str:
    result = row.stages[stage]
    stat = result.stat(section, key)
    if not result.complete_seeds:
        return result.status
    return stat.text(scale, digits)


def seeds_cell(row: RowResult, seeds: list[int]) -> str:
    t, s = row.stages["teacher"], row.stages["student"]
    done = [seed for seed in seeds if t.states.get(seed) == "complete" and s.states.get(seed) == "complete"]
    if len(done) == len(seeds):
        return str(len(seeds))
    why: dict[str, list[int]] = {}
    for seed in seeds:
        if seed not in done:
            reason = f"teacher {t.states[seed]}" if t.states[seed] != "complete" else f"student {s.states[seed]}"
            why.setdefault(reason, []).append(seed)
    problems = "; ".join(f"seed{'s' * (len(v) > 1)} {', '.join(map(str, v))}: {k}" for k, v in why.items())
    return f"{len(done)} of {len(seeds)} ({problems})"


def markdown(rows: list[RowResult], info: Settings, seeds: list[int], title: str) -> str:
    out = [f"# {title}", "", "| | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in info.lines]
    out.append("")
    for warning in info.warnings:
        out.append(f"> **Warning:** {warning}")
    if info.warnings:
        out.append("")
    pct = dict(scale=100.0, digits=2)
    out += [
        "## Accuracy, open gates and teacher geometry",
        "",
        "| row | teacher acc (last) | teacher acc (best) | student acc (last) | student acc (best) | open gates "
        "(teacher, last epoch) | D_intra | D_inter | R = D_intra / D_inter | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append("| " + " | ".join([
            r.row.label,
            cell(r, "teacher", "last", "test/acc", **pct), cell(r, "teacher", "best", "test/acc", **pct),
            cell(r, "student", "last", "test/acc", **pct), cell(r, "student", "best", "test/acc", **pct),
            cell(r, "teacher", "last", "train/gate_open", 100.0, 1),
            cell(r, "teacher", "last", "test/d_intra", digits=4), cell(r, "teacher", "last", "test/d_inter", digits=4),
            cell(r, "teacher", "last", "test/ratio", digits=3), seeds_cell(r, seeds),
        ]) + " |")
    out += [
        "",
        "Open gates: % of training rows whose margin passed δ in the last epoch (g_i = 1). Geometry: the teacher's "
        "L2-normalised test embeddings with its last-epoch weights (METHOD.md 8); best-epoch values are in the CSV.",
        "",
        "## Losses",
        "",
        "| row | teacher test loss (last) | teacher test loss (best) | teacher train loss | ↳ CE "
        "| ↳ contrastive ℓ (before λ) | student test loss (last) | student test loss (best) | student train loss "
        "| ↳ CE | ↳ KD |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append("| " + " | ".join([
            r.row.label,
            cell(r, "teacher", "last", "test/loss", digits=3), cell(r, "teacher", "best", "test/loss", digits=3),
            cell(r, "teacher", "last", "train/loss", digits=3), cell(r, "teacher", "last", "train/loss_ce", digits=3),
            cell(r, "teacher", "last", "train/loss_contrastive", digits=3),
            cell(r, "student", "last", "test/loss", digits=3), cell(r, "student", "best", "test/loss", digits=3),
            cell(r, "student", "last", "train/loss", digits=3), cell(r, "student", "last", "train/loss_ce", digits=3),
            cell(r, "student", "last", "train/loss_kd", digits=3),
        ]) + " |")
    out += ["", "Test loss: cross-entropy on the test set. Train losses: the mean over the final epoch's steps; the "
            "teacher's is CE + λ·ℓ, the student's α·CE + β·KD (METHOD.md 3, 5).", ""]
    epochs = max((len(r.stages["teacher"].per_epoch("train/gate_open")) for r in rows), default=0)
    if epochs:
        out += ["## Open gates per epoch (teacher, % of training rows, mean over seeds)", "",
                "| row | " + " | ".join(f"ep {e}" for e in range(epochs)) + " |",
                "|---|" + "---|" * epochs]
        for r in rows:
            series = r.stages["teacher"].per_epoch("train/gate_open")
            cells = [("—" if v is None else f"{100 * v:.1f}") for v in series] or [r.stages["teacher"].status]
            cells += [""] * (epochs - len(cells))
            out.append(f"| {r.row.label} | " + " | ".join(cells) + " |")
        out.append("")
    errors = [e for r in rows for e in r.errors]
    if errors:
        out += ["## Runs that are not complete", ""] + [f"- {e}" for e in errors] + [""]
    return "\n".join(out)


def csv_text(rows: list[RowResult], seeds: list[int], tid: str, data: str) -> str:
    header = ["table", "data", "row", "label", "seeds_asked", "teacher_status", "student_status",
              "teacher_seeds_complete", "student_seeds_complete"]
    for stage, metrics in METRICS.items():
        for name, _, _ in metrics:
            header += [f"{stage}_{name}_mean", f"{stage}_{name}_std", f"{stage}_{name}_n"]
    header += ["teacher_gate_open_by_epoch", "teacher_wall_seconds", "student_wall_seconds"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    fmt = lambda v: "" if v is None else f"{v:.6g}"  # noqa: E731 - empty, never 0, when there is no number
    for r in rows:
        t, s = r.stages["teacher"], r.stages["student"]
        line = [tid, data, r.row.name, r.row.label, " ".join(map(str, seeds)), t.status, s.status,
                len(t.complete_seeds), len(s.complete_seeds)]
        for stage, metrics in METRICS.items():
            for _, section, key in metrics:
                stat = r.stages[stage].stat(section, key)
                line += [fmt(stat.mean), fmt(stat.std), stat.n if r.stages[stage].complete_seeds else ""]
        line.append(";".join(fmt(v) for v in t.per_epoch("train/gate_open")))
        for stage in (t, s):
            walls = [float(x.get("wall_seconds") or 0) for x in stage.results.values()]
            line.append(fmt(sum(walls)) if walls else "")
        writer.writerow(line)
    return buffer.getvalue()


def write_atomic_bytes(path: Path, data: bytes) -> None:
    """kd_lightning.utils.atomic has text and JSON only: the same temporary-sibling-then-rename, for bytes."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; a picture is for everyone who may read the folder
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build(tid: str, data: str, seeds: list[int], runs: Path, out: Path, ablations: Path = ABLATIONS,
          want_pair: Optional[str] = None, want_epochs: Optional[int] = None) -> tuple[list[Path], list[str]]:
    """Write <out>/<tid>.md, .csv, .png; returns the paths and the problems (incomplete runs, warnings)."""
    from kd_lightning.utils.atomic import atomic_write_text
    from table_plot import plot

    rows = collect(tid, data, seeds, runs, ablations)
    info = settings(rows, tid, data, seeds, want_pair, want_epochs)
    table, space = parse_table_id(tid)
    space_text = {"prob": "probability space", "logit": "logit space"}[space]
    title = f"{TITLES[table]}" + (f", {space_text}" if table == "margin" else "") + f" — {data}"
    paths = [out / f"{tid}.md", out / f"{tid}.csv", out / f"{tid}.png"]
    atomic_write_text(paths[0], markdown(rows, info, seeds, title))
    atomic_write_text(paths[1], csv_text(rows, seeds, tid, data))
    write_atomic_bytes(paths[2], plot(rows, title, dict(info.lines)))
    problems = [e for r in rows for e in r.errors] + info.warnings
    problems += [f"{RunKey(tid, data, r.row.name, seed)}/{stage}: missing" for r in rows for stage in STAGES
                 for seed, state in r.stages[stage].states.items() if state == "missing"]
    return paths, problems


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", help="margin | margin-logit | contrastive | lambda")
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--runs", default=str(ROOT / "runs"))
    parser.add_argument("--out", default=str(ROOT / "results"))
    parser.add_argument("--ablations", default=str(ABLATIONS), help="folder of the row files (configs/ablations)")
    parser.add_argument("--pair", default="", help="the asked-for TEACHER->STUDENT, to check the runs against")
    parser.add_argument("--epochs", default="", help="the asked-for epochs, to check the runs against")
    ns = parser.parse_args(argv)
    try:
        paths, problems = build(ns.table, ns.data, ns.seeds, Path(ns.runs), Path(ns.out), Path(ns.ablations),
                                ns.pair or None, int(ns.epochs) if ns.epochs else None)
    except (ValueError, FileNotFoundError) as err:
        sys.stderr.write(f"build_table: error: {err}\n")
        return 2
    print("wrote " + ", ".join(str(p) for p in paths))
    if problems:
        sys.stderr.write("build_table: the table is not complete:\n" + "".join(f"  {p}\n" for p in problems))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
