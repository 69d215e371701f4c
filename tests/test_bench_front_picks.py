"""benchmarks/bench_front_picks.py (issue 29): the latency front's pick against the GFLOPs front's for the same
budget, over a made-up validate.py --latency result (nothing is timed)."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_front_picks as bfp  # noqa: E402


def _row(name, dims, gflops, ms, top1):
    return dict(name=name, dims=dims, gflops=gflops, latency_ms=ms, latency_p90_ms=ms, top1=top1, params=1000)


# uniform widths on ms = 1 + 1 * GFLOPs exactly; "32x1+8x1" is slow for its GFLOPs, "16x1+32x1" fast for them
ROWS = [
    _row("g=8", [8, 8], 1.0, 2.0, 80.0),
    _row("g=16", [16, 16], 2.0, 3.0, 85.0),
    _row("g=32", [32, 32], 4.0, 5.0, 90.0),
    _row("32x1+8x1", [32, 8], 2.5, 6.0, 88.0),
    _row("16x1+32x1", [16, 32], 3.0, 3.2, 87.0),
]
RESULTS = dict(model="tiny", latency=dict(machine="CPU X", runtime="eager", batch=1, threads=2), rows=ROWS)


def test_budgets_are_log_spaced_from_the_fastest_to_the_slowest():
    budgets = bfp.log_budgets(ROWS, 5)
    assert budgets[0] == 2.0 and budgets[-1] == 6.0 and len(budgets) == 5
    steps = [b / a for a, b in zip(budgets, budgets[1:])]
    assert all(math.isclose(s, 3**0.25) for s in steps)
    assert bfp.log_budgets(ROWS, 1) == [6.0]
    with pytest.raises(ValueError, match="budgets must be an integer >= 1"):
        bfp.log_budgets(ROWS, 0)


def test_the_budget_becomes_gflops_through_the_uniform_widths():
    a, b = bfp.fit_ms_per_gflops(ROWS, "linear")
    assert math.isclose(a, 1.0, abs_tol=1e-9) and math.isclose(b, 1.0)
    assert bfp.fit_ms_per_gflops(ROWS, "ratio") == (0.0, 1.25)  # g=32's 5 ms / 4 GFLOPs is the lowest
    with pytest.raises(ValueError, match="gflops_model must be one of"):
        bfp.fit_ms_per_gflops(ROWS, "quadratic")
    flat = [dict(r, latency_ms=10.0 - r["gflops"]) for r in ROWS]
    with pytest.raises(ValueError, match="does not grow with GFLOPs"):
        bfp.fit_ms_per_gflops(flat, "linear")


def test_gflops_pick_is_the_most_accurate_within_the_gflops_or_the_cheapest():
    assert bfp.pick_by_gflops(ROWS, 2.6)["name"] == "32x1+8x1"
    assert bfp.pick_by_gflops(ROWS, 2.0)["name"] == "g=16"
    assert bfp.pick_by_gflops(ROWS, 0.5)["name"] == "g=8"  # nothing within: the fewest GFLOPs


def test_picks_differ_where_gflops_mispredict_time():
    report = bfp.compare_picks(RESULTS, budgets=5)
    picks = {round(p["budget_ms"], 3): p for p in report["picks"]}
    assert [(p["latency_pick"], p["gflops_pick"]) for p in report["picks"]] == [
        ("g=8", "g=8"),
        ("g=8", "g=8"),
        ("16x1+32x1", "g=16"),  # the fast mix fits; the GFLOPs budget 2.46 excludes it
        ("16x1+32x1", "32x1+8x1"),  # the GFLOPs budget 3.56 lets in the slow mix, which misses 4.56 ms
        ("g=32", "g=32"),
    ]
    met, missed = picks[3.464], picks[4.559]
    assert met["differs"] and met["gflops_pick_meets_budget"] and met["top1_diff"] == -2.0
    assert missed["differs"] and not missed["gflops_pick_meets_budget"] and missed["top1_diff"] == 1.0
    assert math.isclose(met["gflops_budget"], met["budget_ms"] - 1.0)
    assert not any(p["gflops_pick_fallback"] for p in report["picks"])
    s = report["summary"]
    assert (s["budgets"], s["differ"], s["gflops_pick_misses_budget"], s["differ_and_meets"]) == (5, 2, 1, 1)
    assert s["top1_lost_mean"] == 2.0 and s["top1_lost_max"] == 2.0
    assert math.isclose(s["worst_miss_ratio"], 6.0 / missed["budget_ms"])
    # the latency pick always fits its budget on the stored timings
    assert all(p["latency_pick_ms"] <= p["budget_ms"] for p in report["picks"])


def test_results_without_timings_are_refused():
    rows = [dict(r) for r in ROWS]
    del rows[2]["latency_ms"]
    with pytest.raises(ValueError, match="row 2 .* has no latency_ms .*--latency"):
        bfp.compare_picks(rows)


def test_main_writes_json_csv_and_png(tmp_path, capsys):
    src = tmp_path / "validate.json"
    src.write_text(json.dumps(RESULTS))
    bfp.main(["--results", str(src), "--budgets", "5", "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert "GFLOPs pick differs at 2 of 5 budgets: misses the budget at 1" in out
    saved = json.loads((tmp_path / "out" / "front_picks.json").read_text())
    assert saved["summary"]["differ"] == 2 and saved["fit"]["model"] == "linear" and saved["results"] == str(src)
    with open(tmp_path / "out" / "front_picks.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 and rows[2]["gflops_pick"] == "g=16" and rows[3]["gflops_pick_meets_budget"] == "False"
    assert (tmp_path / "out" / "front_picks.png").stat().st_size > 0
