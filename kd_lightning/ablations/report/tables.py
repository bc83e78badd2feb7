"""Build an ablation table from its runs (collect.py): results/<table id>.md, .csv and .png.

    python -m kd_lightning.ablations build margin --data synthetic --seeds 0 1 2 3 4
    python -m kd_lightning.ablations build margin --margin_space logit --data cifar100 --seeds 0 1 2 --out results

What each section reports is in docs/ablations.md.
"""
from __future__ import annotations

import math
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Optional

import pandas as pd

from kd_lightning.ablations.grid.recipe import Recipe
from kd_lightning.ablations.grid.spec import ABLATIONS, Table
from kd_lightning.ablations.grid.store import RunStore
from kd_lightning.ablations.report.collect import STAGES, collect, difference, gates, table_rows
from kd_lightning.ablations.report.plot import plot
from kd_lightning.distillation.registry import baselines
from kd_lightning.stats import LEGEND, spread
from kd_lightning.utils.atomic import atomic_write_bytes, atomic_write_text
from kd_lightning.utils.hardware import describe_machine

#: The CSV's metrics per stage (<stage>_<name>_mean, _std, _n): a name ending in _last or _best is that section's test
#: metric (test_acc_best: collect's best/test/acc), any other the last epoch's train metric (gate_open: last/train/...).
_BOTH = "test_acc_last test_acc_best test_loss_last test_loss_best train_loss train_loss_ce "
METRICS = {"teacher": (_BOTH + "train_loss_contrastive gate_open d_intra_last d_inter_last ratio_last "
                       "d_intra_best d_inter_best ratio_best soft_intra_var_last soft_nontarget_mass_last "
                       "soft_entropy_last").split(),
           "student": (_BOTH + "train_loss_kd train_loss_rkd acc_single_view_last acc_multi_view_last "
                       "soft_intra_var_last").split()}


def source(name: str) -> str:
    stem, _, section = name.rpartition("_")
    if section in ("last", "best"):
        return f"{section}/test/{stem.removeprefix('test_')}"
    return f"last/train/{name.removeprefix('train_')}"


Column = tuple[str, str, str, float, int]  # header, stage, collect's column, scale, digits
ACCURACY: list[Column] = [
    ("teacher acc (last)", "teacher", "last/test/acc", 100.0, 2),
    ("teacher acc (best)", "teacher", "best/test/acc", 100.0, 2),
    ("student acc (last)", "student", "last/test/acc", 100.0, 2),
    ("student acc (best)", "student", "best/test/acc", 100.0, 2),
    ("open gates (teacher, last epoch)", "teacher", "last/train/gate_open", 100.0, 1),
    ("D_intra", "teacher", "last/test/d_intra", 1.0, 4), ("D_inter", "teacher", "last/test/d_inter", 1.0, 4),
    ("R = D_intra / D_inter", "teacher", "last/test/ratio", 1.0, 3)]
ACCURACY_NOTE = ("Open gates: % of training rows whose margin passed δ in the last epoch (g_i = 1). Geometry: the "
                 "teacher's L2-normalised test embeddings with its last-epoch weights (docs/method.md §8); best-epoch "
                 "values are in the CSV.")
SOFT_LABELS: list[Column] = [
    ("teacher soft_intra_var", "teacher", "last/test/soft_intra_var", 1.0, 5),
    ("teacher soft_nontarget_mass", "teacher", "last/test/soft_nontarget_mass", 1.0, 4),
    ("teacher soft_entropy", "teacher", "last/test/soft_entropy", 1.0, 4),
    ("student acc single-view", "student", "last/test/acc_single_view", 100.0, 2),
    ("student acc multi-view", "student", "last/test/acc_multi_view", 100.0, 2)]
SOFT_LABELS_NOTE = ("Teacher soft labels p = softmax(o / T) at the KD temperature on the test set (docs/method.md §8), "
                    "last-epoch weights; view accuracies: the synthetic set's test images showing one feature of their "
                    "class vs several (— on other data sets).")
LOSSES: list[Column] = [
    ("teacher test loss (last)", "teacher", "last/test/loss", 1.0, 3),
    ("teacher test loss (best)", "teacher", "best/test/loss", 1.0, 3),
    ("teacher train loss", "teacher", "last/train/loss", 1.0, 3), ("↳ CE", "teacher", "last/train/loss_ce", 1.0, 3),
    ("↳ contrastive ℓ (before λ)", "teacher", "last/train/loss_contrastive", 1.0, 3),
    ("student test loss (last)", "student", "last/test/loss", 1.0, 3),
    ("student test loss (best)", "student", "best/test/loss", 1.0, 3),
    ("student train loss", "student", "last/train/loss", 1.0, 3), ("↳ CE", "student", "last/train/loss_ce", 1.0, 3),
    ("↳ KD", "student", "last/train/loss_kd", 1.0, 3)]
LOSSES_NOTE = ("Test loss: cross-entropy on the test set. Train losses: the mean over the final epoch's steps; the "
               "teacher's is CE + λ·ℓ, the student's α·CE + β·KD (docs/method.md §3, 5).")
#: The paired differences to the baseline row (docs/method.md §9); the CSV names each diff_<stage>_<metric>_<section>.
DIFFERENCES: list[Column] = [
    ("student acc (last)", "student", "last/test/acc", 100.0, 2),
    ("student acc (best)", "student", "best/test/acc", 100.0, 2),
    ("teacher acc (last)", "teacher", "last/test/acc", 100.0, 2),
    ("teacher R", "teacher", "last/test/ratio", 1.0, 4),
    ("teacher soft_intra_var", "teacher", "last/test/soft_intra_var", 1.0, 5),
]
NUMBERS = sorted({source(n) for m in METRICS.values() for n in m} | {c[2] for c in ACCURACY + SOFT_LABELS + LOSSES})


def _counts(values) -> str:
    """The one value, or each with its number of runs."""
    counts = sorted(Counter(map(str, values)).items())
    if len(counts) <= 1:
        return counts[0][0] if counts else "unknown"
    return ", ".join(f"{value} ({n} runs)" for value, n in counts)


def settings(frame: pd.DataFrame, table: Table, data: str, seeds: list[int], want_pair: Optional[str],
             want_epochs: dict[str, Optional[int]]) -> tuple[list[tuple[str, str]], list[str]]:
    """The table's header lines and its warnings. Every run counts once: rows share runs (Table D's rows share its two
    teachers), and a run counted once per row would multiply its training time."""
    runs = frame[frame.state == "complete"].drop_duplicates("key")
    by_stage = {stage: runs[runs.stage == stage] for stage in STAGES}
    never = "finished runs are never re-run; delete them or use another RUNS folder"
    warnings = []
    for stage, part in by_stage.items():
        epochs = list(part.epochs)
        if len(set(epochs)) > 1:
            warnings.append(f"the {stage} runs do not all have the same number of epochs: {_counts(epochs)}")
        want = want_epochs.get(stage)
        if want and epochs and set(epochs) != {want}:
            warnings.append(f"EPOCHS={want} was asked for but the {stage} runs have {_counts(epochs)} epochs: " + never)
    warnings += [f"the {stage} runs do not all use the same backbone: {_counts(part.backbone)}"
                 for stage, part in by_stage.items() if part.backbone.nunique(dropna=False) > 1]
    pair_t, pair_s = (_counts(part.backbone) for part in by_stage.values())
    if want_pair and all(len(part) for part in by_stage.values()):
        wants = [p.strip() for p in want_pair.split("->")]
        if any(set(part.backbone) != {want} for part, want in zip(by_stage.values(), wants)):
            warnings.append(f"PAIR={want_pair} was asked for but the runs use {pair_t} -> {pair_s}: {never}")
    hardware = _counts(h for h in runs.hardware if h)
    if hardware == "unknown":
        hardware = describe_machine() + " (read when this table was built; results.json does not record it)"
    synthetic = " — the CPU synthetic proxy, not a paper number" if data == "synthetic" else ""
    lines = [
        ("table", table.title + (f" ({table.heading[len(table.title) + 2:]})" if table.margin_space else "")),
        ("data", f"{data}: {_counts(runs.data) if len(by_stage['teacher']) else '—'}{synthetic}"),
        ("pair", f"{pair_t} -> {pair_s} (teacher -> student)"),
        ("epochs", f"teacher {_counts(by_stage['teacher'].epochs)}, student {_counts(by_stage['student'].epochs)}"),
        ("seeds", f"{' '.join(map(str, seeds))} ({len(seeds)} asked for; cells are mean ± sample std over the "
                  "complete seeds, with their count in the last column)"),
        ("devices", _counts(runs.devices)), ("hardware", hardware),
        ("time", f"{runs.wall_seconds.sum() / 60:.1f} min of training in all (the runs' wall_seconds; a resumed run "
                 "counts its last part only)"),
        ("numbers", "test top-1 accuracy in %; *last* = the last-epoch weights, *best* = the weights of the epoch "
                    "with the highest val/acc (checkpoints/best.ckpt); the student is distilled from the teacher's "
                    "last.ckpt"),
        ("built", time.strftime("%Y-%m-%d %H:%M %Z")),
    ]
    return lines, warnings


def md_table(header: list[str], lines: list[list[str]]) -> list[str]:
    """A Markdown table, unpadded (pandas' to_markdown needs tabulate, and pads)."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(x) + " |" for x in lines]


def seeds_cell(frame: pd.DataFrame, cell: int, seeds: list[int]) -> str:
    """How many seeds have both stages complete, and why the others do not."""
    states = frame[frame.cell == cell].pivot(index="seed", columns="stage", values="state")
    why: dict[str, list[int]] = {}
    for seed in seeds:
        teacher, student = states.at[seed, "teacher"], states.at[seed, "student"]
        if (teacher, student) != ("complete", "complete"):
            why.setdefault(f"teacher {teacher}" if teacher != "complete" else f"student {student}", []).append(seed)
    if not why:
        return str(len(seeds))
    problems = "; ".join(f"{'seeds' if len(v) > 1 else 'seed'} {', '.join(map(str, v))}: {k}" for k, v in why.items())
    return f"{len(seeds) - sum(map(len, why.values()))} of {len(seeds)} ({problems})"


def section(title: str, columns: list[Column], frame: pd.DataFrame, rows: pd.DataFrame, note: str,
            seeds: Optional[list[int]] = None) -> list[str]:
    """Mean ± std over the complete seeds per cell and column; a stage with none complete says its status."""
    done = frame[frame.state == "complete"]
    cells = pd.concat([done[done.stage == stage].groupby("cell")[column].agg(spread, scale=scale, digits=digits)
                       .reindex(rows.index).astype(object).fillna(rows[f"{stage}_status"])
                       for _, stage, column, scale, digits in columns], axis=1)
    lines = [[rows.label[cell], *cells.loc[cell]] + ([seeds_cell(frame, cell, seeds)] if seeds is not None else [])
             for cell in rows.index]
    header = ["row", *(c[0] for c in columns)] + (["seeds"] if seeds is not None else [])
    return [f"## {title}", "", *md_table(header, lines), "", note, ""]


def markdown(frame: pd.DataFrame, rows: pd.DataFrame, deltas: dict, info: tuple[list, list], seeds: list[int],
             title: str, data: str, students: dict) -> str:
    lines, warnings = info
    out = [f"# {title}", "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in lines), ""]
    out += [f"> **Warning:** {warning}" for warning in warnings] + ([""] if warnings else [])
    out += section("Accuracy, open gates and teacher geometry", ACCURACY, frame, rows, ACCURACY_NOTE, seeds)
    out += differences_section(rows, deltas) + published_section(frame, rows, data, students)
    out += section("Soft labels and views", SOFT_LABELS, frame, rows, SOFT_LABELS_NOTE)
    shared = rows[rows.shared_with != ""]
    if len(shared):
        out += ["## Runs shared with other tables", "",
                "Rows that ask for the same training are trained once (kd_lightning/ablations/runs.py):", ""]
        out += [f"- {r.label}: run `{r.run}`, also {r.shared_with}" for r in shared.itertuples()] + [""]
    out += section("Losses", LOSSES, frame, rows, LOSSES_NOTE)
    by_epoch = gates(frame, rows)
    epochs = max(map(len, by_epoch.values()), default=0)
    if epochs:
        lines = []
        for cell, series in by_epoch.items():
            cells = [("—" if math.isnan(v) else f"{100 * v:.1f}") for v in series] or [rows.teacher_status[cell]]
            lines.append([rows.label[cell], *cells, *[""] * (epochs - len(cells))])
        out += ["## Open gates per epoch (teacher, % of training rows, mean over seeds)", "",
                *md_table(["row", *(f"ep {e}" for e in range(epochs))], lines), ""]
    errors = list(frame.error.dropna())
    if errors:
        out += ["## Runs that are not complete", ""] + [f"- {e}" for e in errors] + [""]
    return "\n".join(out)


def differences_section(rows: pd.DataFrame, deltas: dict) -> list[str]:
    """Each row minus its baseline row, seed by seed (docs/method.md §9), and the headline Δ in words."""
    several = rows.student.nunique() > 1
    what = "the same student method's plain CE teacher row" if several else "the plain CE teacher row"
    out = [f"## Paired differences to {what}", ""]
    if not rows.baseline.any():
        return out + ["This table has no plain cross-entropy teacher row: no baseline to pair with.", ""]
    lines = []
    for cell, r in rows.iterrows():
        if r.base is None:
            # its "seeds paired" cell is empty, and written "| |" as it always has been
            lines.append([r.label, *["baseline"] * (len(DIFFERENCES) - 1), "baseline |"])
            continue
        cells = [d.text(scale, digits) if d.n else _unpaired(r, rows.loc[r.base], stage)
                 for d, (_, stage, _, scale, digits) in zip(deltas[cell], DIFFERENCES)]
        lines.append([r.label, *cells, str(max(d.n for d in deltas[cell]))])
    out += md_table(["row", *(f"Δ {c[0]}" for c in DIFFERENCES), "seeds paired"], lines)
    out += ["", f"Δ = row − {what} over the seeds both completed (accuracy in points): {LEGEND}. No mark = not "
            "significant, which says only what the interval rules out (below). A single seed has no interval and is "
            "no result.", ""]
    name, _, _, scale, digits = DIFFERENCES[0]
    verdicts = [f"- {rows.label[cell]}: {d[0].verdict(scale, digits)}" for cell, d in deltas.items() if d[0] and d[0].n]
    return out + ([f"What Δ {name} shows, row by row:", "", *verdicts, ""] if verdicts else [])


def _unpaired(row: pd.Series, base: pd.Series, stage: str) -> str:
    """Why a Δ has no seed to pair, never a number: the row's state, the baseline's, or no seed they share."""
    if not row[f"{stage}_seeds_complete"]:
        return row[f"{stage}_status"]
    if not base[f"{stage}_seeds_complete"]:
        return f"baseline {base[f'{stage}_status']}"
    return "no common seed"


def published_section(frame: pd.DataFrame, rows: pd.DataFrame, data: str, students: dict) -> list[str]:
    """Our best-epoch student (and plain-CE teacher) accuracy beside the published number of the same method and pair
    (its method card; the teachers' in distillation/registry.py), with the difference."""
    out = ["## Published numbers", ""]
    if data != "cifar100":
        return out + [f"No published number applies: these runs are on `{data}`, not CIFAR-100.", ""]
    lines, notes = [], set()
    done = frame[frame.state == "complete"]
    for cell, r in rows.iterrows():
        runs = {stage: done[(done.cell == cell) & (done.stage == stage)] for stage in STAGES}
        teacher, student = (runs[s].backbone.iloc[0] if runs[s].backbone.nunique() == 1 else "" for s in STAGES)
        card = students[r.student].card
        checks = [("student", card.label, card.published_for(teacher, student))]
        if r.baseline:  # the plain-CE teacher is the papers' teacher
            checks.append(("teacher", "teacher", baselines(teacher, student, "teacher")))
        for stage, method, numbers in checks:
            ours, epochs = runs[stage]["best/test/acc"].dropna(), set(runs[stage].epochs)
            for p in numbers:
                if epochs != {p.epochs}:
                    notes.add(f"our {stage} runs have {', '.join(map(str, sorted(epochs, key=str)))} epochs, the "
                              f"published ones {p.epochs}")
                diff = "—" if ours.empty else f"{ours.mean() * 100 - p.top1:+.2f}"
                spread_ = f" ± {p.spread:.2f}" if p.spread is not None else ""
                lines.append([r.label, f"{stage} {method}", p.pair, spread(ours, 100.0), f"{p.top1:.2f}{spread_}", diff,
                              str(p.epoch), p.source])
    if not lines:
        return out + ["No published number is listed for this pair and these methods "
                      "(the method cards, kd_lightning/distillation/).", ""]
    out += md_table(["row", "what", "pair", "ours (best epoch, %)", "published (%)", "ours − published",
                     "published epoch", "source"], lines)
    out += ["", "Ours: the best-epoch weights' test accuracy (highest val/acc), mean ± sample std over seeds; the "
            "published figures are the best test accuracy over training where the source says so "
            "(\"published epoch\"). Our recipe is this framework's (docs/method.md), not the source's code: a "
            "difference of a few tenths is within the run-to-run spread the sources report."]
    return out + [f"Differs from the paper: {note}." for note in sorted(notes)] + [""]


def number(value) -> str:
    """The CSV's number: empty, never 0, when there is none."""
    return "" if value is None or pd.isna(value) else f"{value:.6g}"


def csv_text(frame: pd.DataFrame, rows: pd.DataFrame, deltas: dict, seeds: list[int], tid: str, data: str) -> str:
    """One line per row: its states, every metric's mean, std and n, every Δ with its interval."""
    done = frame[frame.state == "complete"]
    cells = pd.MultiIndex.from_product([STAGES, rows.index])  # a stage with no complete run: empty
    stats = done.groupby(["stage", "cell"])[NUMBERS].agg(["mean", "std", "count"]).reindex(cells)
    walls = done.groupby(["stage", "cell"]).wall_seconds.sum().reindex(cells)
    out = {"table": tid, "data": data, "row": rows.row, "label": rows.label, "run": rows.run,
           "seeds_asked": " ".join(map(str, seeds))}
    out |= {f"{stage}_{what}": rows[f"{stage}_{what}"] for what in ("status", "seeds_complete") for stage in STAGES}
    out |= {f"{stage}_{name}_{what}": stats.loc[stage][(source(name), agg)].to_numpy()
            for stage, names in METRICS.items() for name in names
            for what, agg in (("mean", "mean"), ("std", "std"), ("n", "count"))}
    for i, (_, stage, column, _, _) in enumerate(DIFFERENCES):
        section, _, key = column.split("/")
        name = f"diff_{stage}_{key}_{section}"
        ds = [deltas[cell][i] for cell in rows.index]
        intervals = [(d.interval if d else None) or (None, None) for d in ds]
        out |= {f"{name}_mean": [d and d.mean for d in ds], f"{name}_ci_low": [i[0] for i in intervals],
                f"{name}_ci_high": [i[1] for i in intervals], f"{name}_n": [d and d.n for d in ds]}
    out["teacher_gate_open_by_epoch"] = [";".join(map(number, g)) for g in gates(frame, rows).values()]
    out |= {f"{stage}_wall_seconds": walls.loc[stage].to_numpy() for stage in STAGES}
    table = pd.DataFrame(out).map(lambda v: v if isinstance(v, str) else number(v))
    return table.to_csv(index=False, lineterminator="\n")


def build(table: Table, recipe: Recipe, seeds: list[int], store: RunStore, out: Path,
          ablations: Path = ABLATIONS, strict: bool = True) -> int:
    """Write <out>/<table id>.md, .csv, .png and say so; the table's problems (incomplete runs, runs that do not
    match the request) go to stderr. Returns 1 when there are any and `strict`, else 0."""
    frame = collect(table, recipe, seeds, store, ablations)
    frame = frame.reindex(columns=[*frame.columns, *(c for c in NUMBERS if c not in frame)])
    rows = table_rows(frame)
    deltas = {cell: [difference(frame, cell, stage, column) for _, stage, column, _, _ in DIFFERENCES]
              for cell in rows.index}
    want_epochs = {stage: recipe.epochs_of(stage) for stage in STAGES}
    info = settings(frame, table, recipe.data, seeds, "->".join(recipe.pair) if recipe.pair else None, want_epochs)
    title = f"{table.heading} — {recipe.data}"
    paths = [out / f"{table.id}.{ext}" for ext in ("md", "csv", "png")]
    atomic_write_text(paths[0], markdown(frame, rows, deltas, info, seeds, title, recipe.data,
                                         {row.name: row for row in table.students}))
    atomic_write_text(paths[1], csv_text(frame, rows, deltas, seeds, table.id, recipe.data))
    atomic_write_bytes(paths[2], plot(frame, rows, title, dict(info[0])))
    problems = list(frame.error.dropna()) + info[1] + [f"{key}: missing" for key in frame.key[frame.state == "missing"]]
    print("wrote " + ", ".join(str(p) for p in paths), flush=True)
    if problems:
        sys.stderr.write(f"ablations: {table.id} is not complete (seeds {' '.join(map(str, seeds))}):\n"
                         + "".join(f"  {p}\n" for p in problems))
    return int(bool(problems) and strict)
