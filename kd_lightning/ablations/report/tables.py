"""Build an ablation table from its runs (collect.py): results/<table id>.md, .csv and .png.

    python -m kd_lightning.ablations build margin --data synthetic --seeds 0 1 2 3 4
    python -m kd_lightning.ablations build margin --margin_space logit --data cifar100 --seeds 0 1 2 --out results

What each section reports is in docs/ablations.md. A run that is not complete is never a number: its cells say
missing, failed, interrupted or running.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from kd_lightning.ablations.grid.recipe import Recipe
from kd_lightning.ablations.grid.spec import ABLATIONS, Table
from kd_lightning.ablations.grid.store import RunStore
from kd_lightning.ablations.report.collect import RowResult, collect
from kd_lightning.ablations.report.plot import plot
from kd_lightning.ablations.report.published import baselines
from kd_lightning.ablations.report.stats import LEGEND
from kd_lightning.utils.hardware import cpu_kernels, cpu_model, usable_cpus

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
        ("soft_intra_var_last", "last", "test/soft_intra_var"),
        ("soft_nontarget_mass_last", "last", "test/soft_nontarget_mass"),
        ("soft_entropy_last", "last", "test/soft_entropy"),
    ],
    "student": [
        ("test_acc_last", "last", "test/acc"), ("test_acc_best", "best", "test/acc"),
        ("test_loss_last", "last", "test/loss"), ("test_loss_best", "best", "test/loss"),
        ("train_loss", "last", "train/loss"), ("train_loss_ce", "last", "train/loss_ce"),
        ("train_loss_kd", "last", "train/loss_kd"), ("train_loss_rkd", "last", "train/loss_rkd"),
        ("acc_single_view_last", "last", "test/acc_single_view"),
        ("acc_multi_view_last", "last", "test/acc_multi_view"),
        ("soft_intra_var_last", "last", "test/soft_intra_var"),
    ],
}
Column = tuple[str, str, str, str, float, int]  # header, stage, results.json section, metric, scale, digits
ACCURACY: list[Column] = [
    ("teacher acc (last)", "teacher", "last", "test/acc", 100.0, 2), ("teacher acc (best)", "teacher", "best", "test/acc", 100.0, 2),
    ("student acc (last)", "student", "last", "test/acc", 100.0, 2), ("student acc (best)", "student", "best", "test/acc", 100.0, 2),
    ("open gates (teacher, last epoch)", "teacher", "last", "train/gate_open", 100.0, 1),
    ("D_intra", "teacher", "last", "test/d_intra", 1.0, 4), ("D_inter", "teacher", "last", "test/d_inter", 1.0, 4),
    ("R = D_intra / D_inter", "teacher", "last", "test/ratio", 1.0, 3)]
ACCURACY_NOTE = ("Open gates: % of training rows whose margin passed δ in the last epoch (g_i = 1). Geometry: the teacher's "
                 "L2-normalised test embeddings with its last-epoch weights (docs/method.md §8); best-epoch values are in "
                 "the CSV.")
SOFT_LABELS: list[Column] = [
    ("teacher soft_intra_var", "teacher", "last", "test/soft_intra_var", 1.0, 5),
    ("teacher soft_nontarget_mass", "teacher", "last", "test/soft_nontarget_mass", 1.0, 4),
    ("teacher soft_entropy", "teacher", "last", "test/soft_entropy", 1.0, 4),
    ("student acc single-view", "student", "last", "test/acc_single_view", 100.0, 2),
    ("student acc multi-view", "student", "last", "test/acc_multi_view", 100.0, 2)]
SOFT_LABELS_NOTE = ("Teacher soft labels p = softmax(o / T) at the KD temperature on the test set (docs/method.md §8), "
                    "last-epoch weights; view accuracies: the synthetic set's test images showing one feature of their "
                    "class vs several (— on other data sets).")
LOSSES: list[Column] = [
    ("teacher test loss (last)", "teacher", "last", "test/loss", 1.0, 3),
    ("teacher test loss (best)", "teacher", "best", "test/loss", 1.0, 3),
    ("teacher train loss", "teacher", "last", "train/loss", 1.0, 3), ("↳ CE", "teacher", "last", "train/loss_ce", 1.0, 3),
    ("↳ contrastive ℓ (before λ)", "teacher", "last", "train/loss_contrastive", 1.0, 3),
    ("student test loss (last)", "student", "last", "test/loss", 1.0, 3),
    ("student test loss (best)", "student", "best", "test/loss", 1.0, 3),
    ("student train loss", "student", "last", "train/loss", 1.0, 3), ("↳ CE", "student", "last", "train/loss_ce", 1.0, 3),
    ("↳ KD", "student", "last", "train/loss_kd", 1.0, 3)]
LOSSES_NOTE = ("Test loss: cross-entropy on the test set. Train losses: the mean over the final epoch's steps; the "
               "teacher's is CE + λ·ℓ, the student's α·CE + β·KD (docs/method.md §3, 5).")
#: The paired differences to the baseline row (docs/method.md §9): (column, stage, section, key, scale, digits).
DIFFERENCES = [
    ("student acc (last)", "student", "last", "test/acc", 100.0, 2),
    ("student acc (best)", "student", "best", "test/acc", 100.0, 2),
    ("teacher acc (last)", "teacher", "last", "test/acc", 100.0, 2),
    ("teacher R", "teacher", "last", "test/ratio", 1.0, 4),
    ("teacher soft_intra_var", "teacher", "last", "test/soft_intra_var", 1.0, 5),
]


# --- what the table was run with ------------------------------------------------------------------------------------
def _counts(values: list[Any]) -> str:
    distinct = sorted({str(v) for v in values})
    if len(distinct) <= 1:
        return distinct[0] if distinct else "unknown"
    return ", ".join(f"{v} ({sum(str(x) == v for x in values)} runs)" for v in distinct)


def _all_results(rows: list[RowResult], stage: str) -> list[dict]:
    """Every run's results.json once (by its run key): rows share runs (Table D's rows share its two teachers), and a
    run counted once per row would multiply its training time and run count."""
    unique = {row.stages[stage].runs[seed]: r for row in rows for seed, r in row.stages[stage].results.items()}
    return list(unique.values())


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
    """CPU model, its kernel set and the threads this process may use, and GPUs when torch sees any: the machine
    building the table (kd_lightning/utils/hardware.py)."""
    text = f"{cpu_model()}, kernels {cpu_kernels()}, {usable_cpus()} threads available"
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


def settings(rows: list[RowResult], table: Table, data: str, seeds: list[int], want_pair: Optional[str],
             want_epochs: Optional[int]) -> Settings:
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
    lines = [
        ("table", table.title + (f" ({table.heading[len(table.title) + 2:]})" if table.margin_space else "")),
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
    problems = "; ".join(f"{'seeds' if len(v) > 1 else 'seed'} {', '.join(map(str, v))}: {k}" for k, v in why.items())
    return f"{len(done)} of {len(seeds)} ({problems})"


def md_table(header: list[str], lines: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(x) + " |" for x in lines]


def section(title: str, columns: list[Column], rows: list[RowResult], note: str, seeds: Optional[list[int]] = None
            ) -> list[str]:
    """A section of mean ± std cells, one column per (header, stage, section, key, scale, digits)."""
    header = ["row", *(c[0] for c in columns)] + (["seeds"] if seeds is not None else [])
    lines = [[r.label, *(cell(r, *c[1:]) for c in columns)] + ([seeds_cell(r, seeds)] if seeds is not None else [])
             for r in rows]
    return [f"## {title}", "", *md_table(header, lines), "", note, ""]


def markdown(rows: list[RowResult], info: Settings, seeds: list[int], title: str, data: str = "") -> str:
    out = [f"# {title}", "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in info.lines), ""]
    out += [f"> **Warning:** {warning}" for warning in info.warnings] + ([""] if info.warnings else [])
    out += section("Accuracy, open gates and teacher geometry", ACCURACY, rows, ACCURACY_NOTE, seeds)
    out += differences_section(rows) + published_section(rows, data)
    out += section("Soft labels and views", SOFT_LABELS, rows, SOFT_LABELS_NOTE) + shared_section(rows)
    out += section("Losses", LOSSES, rows, LOSSES_NOTE)
    epochs = max((len(r.stages["teacher"].per_epoch("train/gate_open")) for r in rows), default=0)
    if epochs:
        lines = []
        for r in rows:
            series = r.stages["teacher"].per_epoch("train/gate_open")
            cells = [("—" if v is None else f"{100 * v:.1f}") for v in series] or [r.stages["teacher"].status]
            lines.append([r.label, *cells, *[""] * (epochs - len(cells))])
        out += ["## Open gates per epoch (teacher, % of training rows, mean over seeds)", "",
                *md_table(["row", *(f"ep {e}" for e in range(epochs))], lines), ""]
    errors = [e for r in rows for e in r.errors]
    if errors:
        out += ["## Runs that are not complete", ""] + [f"- {e}" for e in errors] + [""]
    return "\n".join(out)


def differences_section(rows: list[RowResult]) -> list[str]:
    """Each row minus the plain cross-entropy teacher row, seed by seed (docs/method.md §9)."""
    student_table = len({r.student.name for r in rows}) > 1
    what = "the same student method's plain CE teacher row" if student_table else "the plain CE teacher row"
    out = [f"## Paired differences to {what}", ""]
    if not any(r.baseline for r in rows):
        return out + ["This table has no plain cross-entropy teacher row: no baseline to pair with.", ""]
    out += [
        "| row | " + " | ".join(f"Δ {name}" for name, *_ in DIFFERENCES) + " | seeds paired |",
        "|---|" + "---|" * (len(DIFFERENCES) + 1),
    ]
    for r in rows:
        base = r.base
        if base is None:
            out.append(f"| {r.label} | " + " | ".join(["baseline"] * len(DIFFERENCES)) + " | |")
            continue
        diffs = [r.difference(base, stage, section, key) for _, stage, section, key, _, _ in DIFFERENCES]
        # No seed to pair: say why (the row's or the baseline's state), never a number.
        cells = [d.text(scale, digits) if d.n else _unpaired(r, base, stage)
                 for d, (_, stage, _, _, scale, digits) in zip(diffs, DIFFERENCES)]
        out.append(f"| {r.label} | " + " | ".join(cells) + f" | {max(d.n for d in diffs)} |")
    out += ["", f"Δ = row − {what} over the seeds both completed (accuracy in points): {LEGEND}. No mark = not "
            "significant, which says only what the interval rules out (below). A single seed has no interval and is "
            "no result.", ""]
    return out + verdict_section(rows)


def verdict_section(rows: list[RowResult]) -> list[str]:
    """The headline Δ (student acc, last epoch) of each row in words: what it shows or rules out (stats.verdict)."""
    name, stage, section, key, scale, digits = DIFFERENCES[0]
    lines = [f"- {r.label}: {r.difference(r.base, stage, section, key).verdict(scale, digits)}"
             for r in rows if r.base is not None and r.difference(r.base, stage, section, key).n]
    return ([f"What Δ {name} shows, row by row:", ""] + lines + [""]) if lines else []


def _backbone(row: RowResult, stage: str) -> Optional[str]:
    names = {r.get("backbone") for r in row.stages[stage].results.values()}
    return names.pop() if len(names) == 1 else None


def published_section(rows: list[RowResult], data: str) -> list[str]:
    """Our best-epoch student (and plain-CE teacher) accuracy beside the published number of the same method and pair
    (published.py), with the difference; the published figures are best-epoch numbers of 240-epoch runs."""
    out = ["## Published numbers", ""]
    if data != "cifar100":
        return out + [f"No published number applies: these runs are on `{data}`, not CIFAR-100.", ""]
    lines, notes = [], set()
    for r in rows:
        teacher, student = _backbone(r, "teacher"), _backbone(r, "student")
        card = r.student.card
        checks = [("student", card.label, "student", card.published_for(teacher or "", student or ""))]
        if r.baseline:  # the plain-CE teacher is the papers' teacher
            checks.append(("teacher", "teacher", "teacher", baselines(teacher or "", student or "", "teacher")))
        for stage, method, who, numbers in checks:
            ours = r.stages[stage].stat("best", "test/acc")
            for p in numbers:
                epochs = {x.get("epochs") for x in r.stages[stage].results.values()}
                if epochs != {p.epochs}:
                    notes.add(f"our {stage} runs have {', '.join(map(str, sorted(epochs, key=str)))} epochs, the "
                              f"published ones {p.epochs}")
                diff = "—" if ours.mean is None else f"{ours.mean * 100 - p.top1:+.2f}"
                spread = f" ± {p.spread:.2f}" if p.spread is not None else ""
                lines.append(f"| {r.label} | {who} {method} | {p.pair} | {ours.text(100.0, 2)} | {p.top1:.2f}{spread} "
                             f"| {diff} | {p.epoch} | {p.source} |")
    if not lines:
        return out + ["No published number is listed for this pair and these methods "
                      "(the method cards, kd_lightning/distillation/).", ""]
    out += ["| row | what | pair | ours (best epoch, %) | published (%) | ours − published | published epoch "
            "| source |", "|---|---|---|---|---|---|---|---|"] + lines
    out += ["", "Ours: the best-epoch weights' test accuracy (highest val/acc), mean ± sample std over seeds; the "
            "published figures are the best test accuracy over training where the source says so (\"published epoch\"). "
            "Our recipe is this framework's (METHOD.md), not the source's code: a difference of a few tenths is within "
            "the run-to-run spread the sources report."]
    out += [f"Differs from the paper: {note}." for note in sorted(notes)]
    return out + [""]


def _unpaired(row: RowResult, base: RowResult, stage: str) -> str:
    mine, theirs = row.stages[stage], base.stages[stage]
    if not mine.complete_seeds:
        return mine.status
    return f"baseline {theirs.status}" if not theirs.complete_seeds else "no common seed"


def shared_section(rows: list[RowResult]) -> list[str]:
    shared = [r for r in rows if r.shared_with]
    if not shared:
        return []
    out = ["## Runs shared with other tables", "",
           "Rows that ask for the same training are trained once (kd_lightning/ablations/runs.py):", ""]
    out += [f"- {r.label}: run `{r.run}`, also {'; '.join(r.shared_with)}" for r in shared]
    return out + [""]


def csv_text(rows: list[RowResult], seeds: list[int], tid: str, data: str) -> str:
    """One line per row: its states, every metric's mean, std and n, every Δ with its interval (pandas writes it)."""
    import pandas as pd

    header = ["table", "data", "row", "label", "run", "seeds_asked", "teacher_status", "student_status",
              "teacher_seeds_complete", "student_seeds_complete"]
    header += [f"{stage}_{name}_{what}" for stage, metrics in METRICS.items() for name, _, _ in metrics
               for what in ("mean", "std", "n")]
    header += [f"diff_{stage}_{key.split('/')[1]}_{section}_{what}" for _, stage, section, key, _, _ in DIFFERENCES
               for what in ("mean", "ci_low", "ci_high", "n")]
    header += ["teacher_gate_open_by_epoch", "teacher_wall_seconds", "student_wall_seconds"]
    fmt = lambda v: "" if v is None else f"{v:.6g}"  # noqa: E731 - empty, never 0, when there is no number
    lines = []
    for r in rows:
        t, s = r.stages["teacher"], r.stages["student"]
        line = [tid, data, r.name, r.label, r.run, " ".join(map(str, seeds)), t.status, s.status,
                len(t.complete_seeds), len(s.complete_seeds)]
        for stage, metrics in METRICS.items():
            for _, section, key in metrics:
                stat = r.stages[stage].stat(section, key)
                line += [fmt(stat.mean), fmt(stat.std), stat.n if r.stages[stage].complete_seeds else ""]
        for _, stage, section, key, _, _ in DIFFERENCES:
            d = r.difference(r.base, stage, section, key) if r.base is not None else None
            low, high = (d.interval if d is not None else None) or (None, None)
            line += [fmt(d.mean), fmt(low), fmt(high), d.n] if d else ["", "", "", ""]
        line.append(";".join(fmt(v) for v in t.per_epoch("train/gate_open")))
        line += [fmt(sum(float(x.get("wall_seconds") or 0) for x in st.results.values())) if st.results else ""
                 for st in (t, s)]
        lines.append(line)
    return pd.DataFrame(lines, columns=header, dtype=object).to_csv(index=False, lineterminator="\n")


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


def build(table: Table, recipe: Recipe, seeds: list[int], store: RunStore, out: Path,
          ablations: Path = ABLATIONS, strict: bool = True) -> int:
    """Write <out>/<table id>.md, .csv, .png and say so; the table's problems (incomplete runs, runs that do not
    match the request) go to stderr. Returns 1 when there are any and `strict`, else 0."""
    from kd_lightning.utils.atomic import atomic_write_text

    rows = collect(table, recipe, seeds, store, ablations)
    want_pair = "->".join(recipe.pair) if recipe.pair else None
    info = settings(rows, table, recipe.data, seeds, want_pair, recipe.epochs)
    title = f"{table.heading} — {recipe.data}"
    paths = [out / f"{table.id}.md", out / f"{table.id}.csv", out / f"{table.id}.png"]
    atomic_write_text(paths[0], markdown(rows, info, seeds, title, recipe.data))
    atomic_write_text(paths[1], csv_text(rows, seeds, table.id, recipe.data))
    write_atomic_bytes(paths[2], plot(rows, title, dict(info.lines)))
    problems = [e for r in rows for e in r.errors] + info.warnings
    problems += [f"{key}: missing" for r in rows for key in r.missing]
    print("wrote " + ", ".join(str(p) for p in paths), flush=True)
    if problems:
        sys.stderr.write(f"ablations: {table.id} is not complete (seeds {' '.join(map(str, seeds))}):\n"
                         + "".join(f"  {p}\n" for p in problems))
    return int(bool(problems) and strict)
