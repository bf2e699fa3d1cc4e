"""Reports of a run's results table: per-day summaries, the paper's Table 1 in Markdown, report files.

The results table has one row per (run, test case): ``model, feature_set, day, user_id, item_id,
rank`` plus optional ``cold_start``, ``stand_in`` (see ``metrics.check_results``) and ``duration_s``
(the clip length of the target item, NaN when unknown: ``duration_markdown``). Every number
is derived from the ranks; every delta is printed with the p-value of a paired t-test over the same
cases (and, in a second table, over per-day means) and its Benjamini-Hochberg q-value among all the
tests of that table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from evaluate.metrics import KS, METRICS, check_results
from evaluate.plots import LABELS, plot_bars, plot_days, run_order, stand_in_runs
from evaluate.significance import PairedTest, align_runs, bh_qvalues, paired_on

__all__ = ["duration_markdown", "plot_bars", "plot_days", "summarize", "table1_markdown", "write_report"]

GROUP = ["model", "feature_set", "day"]
TABLE_KS = (10, 30)
"""The paper's Table 1 columns: HR@10, HR@30, nDCG@10, nDCG@30."""
DEFAULT_BASELINE = "id"
DURATION_THRESHOLD_S = 30.0
"""Short vs long clips in the duration breakdown (the paper's split)."""
STAND_IN_NOTE = (
    "† features produced by tiny randomly initialised stand-in models (`tiny:`): "
    "these rows check the pipeline, their numbers say nothing about the real models."
)


def summarize(cases: pd.DataFrame, ks: Sequence[int] = KS) -> pd.DataFrame:
    """Mean of every metric per (model, feature_set, day, k), plus day "all" (mean over all cases).

    Columns exactly ``model, feature_set, day, k, hr, ndcg, n_cases``; rows sorted by model,
    feature_set, day (ISO dates, then "all"), k.
    """
    check_results(cases)
    keys = cases[GROUP].astype(str)
    ranks = cases["rank"].to_numpy()
    agg = {name: (name, "mean") for name in METRICS} | {"n_cases": ("model", "size")}
    parts = []
    for k in ks:
        per_case = keys.assign(k=k, **{name: fn(ranks, k) for name, fn in METRICS.items()})
        parts.append(per_case.groupby([*GROUP, "k"], sort=False).agg(**agg).reset_index())
        overall = per_case.groupby(["model", "feature_set", "k"], sort=False).agg(**agg).reset_index()
        parts.append(overall.assign(day="all"))
    out = pd.concat(parts, ignore_index=True)[[*GROUP, "k", *METRICS, "n_cases"]]
    # ISO dates start with a digit, so they sort before "all".
    out = out.sort_values([*GROUP, "k"], kind="stable").reset_index(drop=True)
    return out.astype({"k": "int64", "n_cases": "int64"})


def _md(text: str) -> str:
    """Escape what would break a Markdown table cell or turn a name into emphasis."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")


def _pq(name: str, value: float) -> str:
    if value != value:  # NaN
        return f"{name}=n/a"
    return f"{name}<0.001" if value < 0.001 else f"{name}={value:.3f}"


def _delta(test: PairedTest, q: float) -> str:
    rel = "n/a" if test.rel_delta != test.rel_delta else f"{test.rel_delta:+.1%}"
    return f"{rel}, {_pq('p', test.p)}, {_pq('q', q)}"


@dataclass(frozen=True)
class _Row:
    """One representation of Table 1 with its tests against the model's baseline (none for a baseline)."""

    model: str
    feature_set: str
    name: str
    is_base: bool
    case_tests: list[PairedTest]
    day_tests: list[PairedTest]
    n_days: int


def _delta_cells(tests: list[list[PairedTest]]) -> list[list[str]]:
    """Format each row's tests with its q-value: Benjamini-Hochberg over every test of the table."""
    q = iter(bh_qvalues([t.p for row in tests for t in row]))
    return [[_delta(t, next(q)) for t in row] for row in tests]


def _baselines(cases: pd.DataFrame, baselines: dict[str, str] | None) -> dict[str, str]:
    """model -> baseline feature_set: the given ones (checked), else "id" where the model has it."""
    runs = set(run_order(cases))
    models = dict.fromkeys(m for m, _ in run_order(cases))
    chosen = {}
    for model in models:
        if baselines and model in baselines:
            if (model, baselines[model]) not in runs:
                have = sorted(f for m, f in runs if m == model)
                raise ValueError(
                    f"baselines: model {model!r} has no feature_set {baselines[model]!r}; it has {have}"
                )
            chosen[model] = baselines[model]
        elif (model, DEFAULT_BASELINE) in runs:
            chosen[model] = DEFAULT_BASELINE
    unknown = sorted(set(baselines or {}) - set(models))
    if unknown:
        raise ValueError(f"baselines: unknown model(s) {unknown}; models in cases: {list(models)}")
    return chosen


def table1_markdown(
    cases: pd.DataFrame,
    baselines: dict[str, str] | None = None,
    title: str = "",
    ks: Sequence[int] = TABLE_KS,
) -> str:
    """The paper's Table 1: representations grouped by model, HR@K and nDCG@K for K in ``ks``.

    Each value of a non-baseline row is followed by its relative delta vs the model's baseline row,
    the paired t-test p-value over cases and its Benjamini-Hochberg q-value over all the tests of the
    table, e.g. ``0.0489 (+24.4%, p=0.003, q=0.010)``. ``baselines`` maps
    model -> feature_set (default: "id" where present; models without one get no deltas). A model
    such as ``most-popular`` is simply its own group. Stand-in runs are flagged with †. A second
    table gives the deltas with p-values over per-day means.
    """
    check_results(cases)
    base = _baselines(cases, baselines)
    stand_ins = stand_in_runs(cases)
    summary = summarize(cases, ks).query("day == 'all'").set_index(["model", "feature_set", "k"])
    cols = [(name, k) for name in METRICS for k in ks]
    header = [f"{LABELS.get(name, name)}@{k}" for name, k in cols]
    # First every test of the table, then the cells: a q-value depends on the whole family.
    rows = []
    for model, feature_set in run_order(cases):
        name = _md(feature_set) + (" †" if (model, feature_set) in stand_ins else "")
        is_base = base.get(model) == feature_set
        aligned = (
            None
            if is_base or model not in base
            else align_runs(cases, (model, base[model]), (model, feature_set))
        )
        case_tests = [] if aligned is None else [paired_on(aligned, k, m, "cases") for m, k in cols]
        day_tests = [] if aligned is None else [paired_on(aligned, k, m, "days") for m, k in cols]
        n_days = 0 if aligned is None else aligned["day"].nunique()
        rows.append(_Row(model, feature_set, name, is_base, case_tests, day_tests, n_days))
    case_cells = _delta_cells([r.case_tests for r in rows])
    day_cells = _delta_cells([r.day_tests for r in rows])
    lines = [f"**{title}**", ""] if title else []
    lines += ["| Representation | " + " | ".join(header) + " | n_cases |", "|---" * (len(cols) + 2) + "|"]
    day_rows = []
    current = None
    for row, deltas, day_deltas in zip(rows, case_cells, day_cells):
        if row.model != current:
            current = row.model
            lines.append(f"| *{_md(row.model)}* |" + " |" * (len(cols) + 1))
        values = [f"{summary.loc[(row.model, row.feature_set, k), metric]:.4f}" for metric, k in cols]
        cells = [f"{v} ({d})" for v, d in zip(values, deltas)] if deltas else values
        n_cases = int(summary.loc[(row.model, row.feature_set, ks[0]), "n_cases"])
        baseline_mark = " (baseline)" if row.is_base else ""
        lines.append(f"| {row.name}{baseline_mark} | " + " | ".join(cells) + f" | {n_cases} |")
        if day_deltas:
            vs = f"| {_md(row.model)} | {row.name} | {_md(base[row.model])} | "
            day_rows.append(vs + " | ".join(day_deltas) + f" | {row.n_days} |")
    n_case_tests = sum(len(r.case_tests) for r in rows)
    notes = [
        "",
        "Deltas: relative to the model's baseline row; p: paired t-test over the same test cases; "
        f"q: Benjamini-Hochberg adjusted p-value over the {n_case_tests} tests of this table "
        "(false discovery rate).",
    ]
    if stand_ins:
        notes.append(STAND_IN_NOTE)
    lines += notes
    if day_rows:
        lines += [
            "",
            "Over days: relative delta of the mean of per-day means, p of a paired t-test over per-day means:",
            "",
            "| Model | Representation | vs | " + " | ".join(header) + " | n_days |",
            "|---" * (len(cols) + 4) + "|",
            *day_rows,
            "",
            f"q: Benjamini-Hochberg adjusted p-value over the {sum(len(r.day_tests) for r in rows)} tests of this table.",
        ]
    return "\n".join(lines) + "\n"


def per_day_markdown(cases: pd.DataFrame, k: int = 10) -> str:
    """HR@k and nDCG@k of every run on every evaluated day (and over all days)."""
    summary = summarize(cases, (k,))
    stand_ins = stand_in_runs(cases)
    days = [*sorted(d for d in summary["day"].unique() if d != "all"), "all"]
    lines = []
    for metric in METRICS:
        table = summary.pivot_table(index=["model", "feature_set"], columns="day", values=metric, sort=False)
        lines += [
            f"{LABELS.get(metric, metric)}@{k}:",
            "",
            "| Model | Representation | " + " | ".join(days) + " |",
            "|---" * (len(days) + 2) + "|",
        ]
        for model, feature_set in run_order(cases):
            row = table.loc[(model, feature_set)].reindex(days)
            vals = ["–" if v != v else f"{v:.4f}" for v in row]
            name = _md(feature_set) + (" †" if (model, feature_set) in stand_ins else "")
            lines.append(f"| {_md(model)} | {name} | " + " | ".join(vals) + " |")
        lines.append("")
    first = run_order(cases)[0]
    counts = summary[(summary["model"] == first[0]) & (summary["feature_set"] == first[1])].set_index("day")
    lines.append("Cases per day: " + ", ".join(f"{d}: {int(counts.loc[d, 'n_cases'])}" for d in days) + ".")
    return "\n".join(lines) + "\n"


def duration_markdown(
    cases: pd.DataFrame, baselines: dict[str, str] | None = None, threshold_s: float = DURATION_THRESHOLD_S
) -> str:
    """Table 1 for cases whose target clip is shorter than ``threshold_s`` and for the rest.

    Reads the ``duration_s`` column (seconds, NaN when unknown); cases with an unknown duration are
    left out of both tables and counted. The paper reports larger gains on longer clips.
    """
    if not pd.api.types.is_numeric_dtype(cases["duration_s"].dtype):
        raise ValueError(
            f"cases: column 'duration_s': expected seconds (numbers), got {cases['duration_s'].dtype}"
        )
    if not threshold_s > 0:
        raise ValueError(f"duration threshold must be > 0 seconds, got {threshold_s}")
    dur = cases["duration_s"].to_numpy(dtype=float)
    known = ~np.isnan(dur)
    cut = f"{threshold_s:g} s"
    lines = [
        f"Clip length of the target item: {int(known.sum())} case rows with a known duration, "
        f"{int((~known).sum())} without (left out).",
        "",
    ]
    for label, mask in (
        (f"shorter than {cut}", known & (dur < threshold_s)),
        (f"{cut} or longer", known & (dur >= threshold_s)),
    ):
        part = cases[mask]
        lines += [f"### Clips {label}", ""]
        if part.empty:
            lines += ["No test case.", ""]
        else:
            lines += [f"{len(part) / len(cases):.1%} of case rows.", "", table1_markdown(part, baselines)]
    return "\n".join(lines) + "\n"


def write_report(
    cases: pd.DataFrame,
    out_dir: str | Path,
    title: str,
    baselines: dict[str, str] | None = None,
    extra_md: str = "",
    duration_threshold_s: float = DURATION_THRESHOLD_S,
    writer: Callable[[Path, Callable[[Path], object]], object] | None = None,
) -> dict[str, Path]:
    """Write report.md, results/summary.csv, plots/bars.png and plots/days.png under ``out_dir``.

    ``writer(path, write)`` produces each file by calling ``write(some_path)``; the default writes in
    place, a caller that needs crash-safe files passes e.g. ``featurize.durable.write_atomic``.

    Returns their paths under the keys "report", "summary", "bars", "days". With a ``cold_start``
    column, report.md also shows Table 1 restricted to cold-start cases (items unseen in training);
    with a ``duration_s`` column, Table 1 for clips shorter than ``duration_threshold_s`` and the rest.
    """
    check_results(cases)
    if cases.empty:
        raise ValueError("cases: the results table is empty; nothing to report")
    out = Path(out_dir)
    paths = {
        "report": out / "report.md",
        "summary": out / "results" / "summary.csv",
        "bars": out / "plots" / "bars.png",
        "days": out / "plots" / "days.png",
    }
    write = writer or _write_in_place
    paths["summary"].parent.mkdir(parents=True, exist_ok=True)
    paths["bars"].parent.mkdir(parents=True, exist_ok=True)
    summary = summarize(cases)
    write(paths["summary"], lambda p: summary.to_csv(p, index=False))
    write(paths["bars"], lambda p: plot_bars(cases, p))
    write(paths["days"], lambda p: plot_days(cases, p))
    days = sorted(cases["day"].astype(str).unique())
    md = [
        f"# {title}",
        "",
        f"{len(run_order(cases))} runs, {len(cases)} case rows, test days {days[0]} .. {days[-1]} "
        "(full ranking over the catalogue; the user's history items masked).",
        "",
        "## Table 1",
        "",
        table1_markdown(cases, baselines),
        "## Per day",
        "",
        per_day_markdown(cases),
        "## Plots",
        "",
        "![HR@10 and nDCG@10 per representation, 95% CIs](plots/bars.png)",
        "",
        "![HR@10 per day](plots/days.png)",
        "",
    ]
    if "cold_start" in cases.columns:
        cold = cases[cases["cold_start"].to_numpy(dtype=bool)]
        md += ["## Cold start", ""]
        if cold.empty:
            md += ["No test case has a cold-start target item (every target was seen in training).", ""]
        else:
            share = len(cold) / len(cases)
            md += [f"Cases whose target item never appears in training: {share:.1%} of case rows.", ""]
            md += [table1_markdown(cold, baselines)]
    if "duration_s" in cases.columns:
        md += ["## Clip duration", "", duration_markdown(cases, baselines, duration_threshold_s)]
    if extra_md:
        md += [extra_md.rstrip(), ""]
    text = "\n".join(md)
    write(paths["report"], lambda p: Path(p).write_text(text, encoding="utf-8"))
    return paths


def _write_in_place(path: Path, write: Callable[[Path], object]) -> None:
    write(path)
