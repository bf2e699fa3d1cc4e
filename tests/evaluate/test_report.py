"""Reports: summary numbers by hand, the Table 1 Markdown (rows, deltas, p-values), report files."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from evaluate.metrics import hit_rate, ndcg
from evaluate.report import duration_markdown, plot_bars, plot_days, summarize, table1_markdown, write_report
from evaluate.significance import align_runs, bh_qvalues, paired_on, paired_ttest

D1, D2 = "2021-06-14", "2021-06-15"
KEYS = [(D1, 1, 10), (D1, 2, 11), (D2, 1, 12)]
PNG = b"\x89PNG\r\n\x1a\n"


def run(model: str, feature_set: str, ranks: list[int], stand_in: bool = False) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "model": model,
            "feature_set": feature_set,
            "day": [d for d, _, _ in KEYS],
            "user_id": np.array([u for _, u, _ in KEYS], dtype=np.int64),
            "item_id": np.array([i for _, _, i in KEYS], dtype=np.int64),
            "rank": np.array(ranks, dtype=np.int64),
            "cold_start": [False, True, True],
            "stand_in": stand_in,
        }
    )


@pytest.fixture
def cases() -> pd.DataFrame:
    return pd.concat(
        [
            run("two-tower", "id", [1, 20, 5]),
            run("two-tower", "mllm-video", [2, 3, 40], stand_in=True),
            run("sasrec", "title", [31, 9, 9]),
            run("sasrec", "id", [7, 8, 30]),
            run("most-popular", "popularity", [50, 50, 50]),
        ],
        ignore_index=True,
    )


def test_summarize_by_hand(cases: pd.DataFrame) -> None:
    s = summarize(cases, ks=(10, 30))
    assert s.columns.tolist() == ["model", "feature_set", "day", "k", "hr", "ndcg", "n_cases"]
    assert len(s) == 5 * 3 * 2  # runs x (2 days + "all") x ks
    tt = s[(s.model == "two-tower") & (s.feature_set == "id")]
    assert tt[["day", "k"]].values.tolist() == [
        [D1, 10],
        [D1, 30],
        [D2, 10],
        [D2, 30],
        ["all", 10],
        ["all", 30],
    ]
    row = tt.set_index(["day", "k"])
    assert row.loc[(D1, 10), "hr"] == 0.5 and row.loc[(D1, 10), "n_cases"] == 2
    assert row.loc[(D1, 10), "ndcg"] == pytest.approx(0.5)  # (1/log2(2) + 0) / 2
    assert row.loc[(D1, 30), "ndcg"] == pytest.approx((1 + 1 / math.log2(21)) / 2)
    assert row.loc[(D2, 10), "ndcg"] == pytest.approx(1 / math.log2(6))
    assert row.loc[("all", 10), "hr"] == pytest.approx(2 / 3)
    assert row.loc[("all", 10), "n_cases"] == 3
    assert row.loc[("all", 30), "ndcg"] == pytest.approx((1 + 1 / math.log2(21) + 1 / math.log2(6)) / 3)
    assert s["model"].tolist() == sorted(s["model"].tolist())  # deterministic order
    shuffled = summarize(cases.sample(frac=1.0, random_state=3), ks=(10, 30))
    pd.testing.assert_frame_equal(shuffled, s)


def delta_cell(base: list[int], other: list[int], metric, k: int, q: float) -> str:
    a, b = metric(np.array(base), k), metric(np.array(other), k)
    t = paired_ttest(a, b)
    return f"{b.mean():.4f} ({t.rel_delta:+.1%}, p={t.p:.3f}, q={q:.3f})"


def table_qvalues(cases: pd.DataFrame) -> dict[tuple[str, str, int], float]:
    """BH q-values of the fixture's Table 1 over its 8 tests: 2 compared runs x (HR, nDCG) x (10, 30)."""
    keys, ps = [], []
    for model, fs in [("two-tower", "mllm-video"), ("sasrec", "title")]:
        aligned = align_runs(cases, (model, "id"), (model, fs))
        for metric in ("hr", "ndcg"):
            for k in (10, 30):
                keys.append((fs, metric, k))
                ps.append(paired_on(aligned, k, metric, "cases").p)
    return dict(zip(keys, bh_qvalues(ps)))


def test_table1_markdown(cases: pd.DataFrame) -> None:
    md = table1_markdown(cases, title="Table 1: test run")
    lines = md.splitlines()
    assert lines[0] == "**Table 1: test run**"
    assert lines[2] == "| Representation | HR@10 | HR@30 | nDCG@10 | nDCG@30 | n_cases |"
    rows = [line for line in lines if line.startswith("| ")][1:]
    names = [r.split(" | ")[0][2:] for r in rows[:8]]
    assert names == [
        "*two-tower*",
        "id (baseline)",
        "mllm-video †",
        "*sasrec*",
        "title",
        "id (baseline)",
        "*most-popular*",
        "popularity",
    ]
    q = table_qvalues(cases)
    mllm = rows[2].split(" | ")
    assert mllm[1] == delta_cell([1, 20, 5], [2, 3, 40], hit_rate, 10, q[("mllm-video", "hr", 10)])
    assert mllm[4] == delta_cell([1, 20, 5], [2, 3, 40], ndcg, 30, q[("mllm-video", "ndcg", 30)])
    assert mllm[5] == "3 |"
    title = rows[4].split(" | ")
    assert title[1] == delta_cell([7, 8, 30], [31, 9, 9], hit_rate, 10, q[("title", "hr", 10)])
    assert rows[1].split(" | ")[1] == f"{2 / 3:.4f}"  # the baseline row has no delta
    assert rows[7].split(" | ")[1] == "0.0000"  # no "id" run: no deltas for most-popular
    assert "(" not in rows[7]
    assert any(line.startswith("† features produced by tiny") for line in lines)
    assert (
        "q: Benjamini-Hochberg adjusted p-value over the 8 tests of this table (false discovery rate)." in md
    )
    assert "q: Benjamini-Hochberg adjusted p-value over the 8 tests of this table." in lines
    # Second table: p-values over per-day means (2 days).
    i = lines.index("| Model | Representation | vs | HR@10 | HR@30 | nDCG@10 | nDCG@30 | n_days |")
    assert lines[i + 2].startswith("| two-tower | mllm-video † | id | ") and lines[i + 2].endswith(" | 2 |")
    assert lines[i + 3].startswith("| sasrec | title | id | ")
    assert lines[i + 2].split(" | ")[3].endswith(", q=0.833")  # BH over the 8 per-day tests


def test_table1_baselines_and_coverage(cases: pd.DataFrame) -> None:
    md = table1_markdown(cases, baselines={"sasrec": "title"})
    assert "| title (baseline) | " in md and "| id | " in md
    with pytest.raises(ValueError, match="model 'sasrec' has no feature_set 'video'"):
        table1_markdown(cases, baselines={"sasrec": "video"})
    with pytest.raises(ValueError, match=r"unknown model\(s\) \['gru'\]"):
        table1_markdown(cases, baselines={"gru": "id"})
    partial = cases.drop(index=cases.index[(cases.model == "sasrec") & (cases.feature_set == "title")][0])
    with pytest.raises(ValueError, match="do not cover the same test cases"):
        table1_markdown(partial)


def test_write_report(cases: pd.DataFrame, tmp_path) -> None:
    paths = write_report(cases, tmp_path / "out", "Smoke run", extra_md="Extra notes.")
    assert set(paths) == {"report", "summary", "bars", "days"}
    for key in ("bars", "days"):
        assert paths[key].read_bytes()[:8] == PNG and paths[key].stat().st_size > 1000
    summary = pd.read_csv(paths["summary"])
    pd.testing.assert_frame_equal(summary, summarize(cases), check_dtype=False)
    md = paths["report"].read_text()
    assert md.startswith("# Smoke run\n")
    for needle in (
        "## Table 1",
        "## Per day",
        "](plots/bars.png)",
        "](plots/days.png)",
        "## Cold start",
        "Extra notes.",
    ):
        assert needle in md
    cold = md[md.index("## Cold start") :]
    assert "66.7% of case rows" in cold and "| id (baseline) | 0.5000 |" in cold
    no_flags = cases.drop(columns=["cold_start", "stand_in"])
    md = write_report(no_flags, tmp_path / "plain", "Plain")["report"].read_text()
    assert "## Cold start" not in md and "†" not in md


def test_duration_breakdown(cases: pd.DataFrame, tmp_path) -> None:
    """Items 10 (12 s), 11 (unknown) and 12 (45 s): one short case, one long, one left out, per run."""
    dur = cases["item_id"].map({10: 12.0, 11: float("nan"), 12: 45.0})
    md = write_report(cases.assign(duration_s=dur), tmp_path, "Durations")["report"].read_text()
    sec = md[md.index("## Clip duration") :]
    assert "10 case rows with a known duration, 5 without (left out)" in sec
    short, long = sec.split("### Clips 30 s or longer")
    assert "### Clips shorter than 30 s" in short and "33.3% of case rows" in short
    # Two-tower id ranks [1, 20, 5]: the short case (item 10) is a hit at 10, the long one (item 12) too.
    assert "| id (baseline) | 1.0000 |" in short and "| id (baseline) | 1.0000 |" in long
    # mllm-video ranks [2, 3, 40]: long case (rank 40) misses at 10 and at 30.
    assert "| mllm-video † | 0.0000" in long
    at_5 = duration_markdown(cases.assign(duration_s=dur), threshold_s=50.0)
    assert "### Clips 50 s or longer\n\nNo test case." in at_5
    with pytest.raises(ValueError, match="'duration_s': expected seconds"):
        duration_markdown(cases.assign(duration_s="long"))
    with pytest.raises(ValueError, match="threshold must be > 0"):
        duration_markdown(cases.assign(duration_s=dur), threshold_s=0)
    assert "## Clip duration" not in write_report(cases, tmp_path / "plain", "x")["report"].read_text()


def test_plots_standalone(cases: pd.DataFrame, tmp_path) -> None:
    assert plot_bars(cases, tmp_path / "a" / "bars.png", k=30).read_bytes()[:8] == PNG
    assert plot_days(cases, tmp_path / "days.png", k=30).read_bytes()[:8] == PNG


def test_imports_stay_light() -> None:
    """Reports, splits and tests import neither torch, scipy, matplotlib, ray nor train (lazy imports)."""
    code = (
        "import sys, evaluate, evaluate.splits, evaluate.significance, evaluate.report\n"
        "heavy = [m for m in ('torch', 'scipy', 'matplotlib', 'ray', 'train') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
