"""benchmarks/bench_latency_sweep.py (issue 29): the whole official sweep timed by validate.py's latency code, its
wall time and how latency ranks against GFLOPs, on the 4-token model (one round)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import timm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_latency_sweep as bls  # noqa: E402

from matmamba_vision.evaluation.submodels import official_sweep  # noqa: E402


def test_spearman_is_rank_correlation():
    assert bls.spearman([1, 2, 3, 4], [10, 20, 30, 1000]) == pytest.approx(1.0)
    assert bls.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


def test_slower_than_a_bigger_one_counts_rank_inversions():
    rows = [dict(gflops=1.0, median_ms=3.0), dict(gflops=2.0, median_ms=2.0), dict(gflops=3.0, median_ms=4.0)]
    assert bls.slower_than_a_bigger_one(rows) == 1  # only the 1-GFLOP row: the 2-GFLOP one is faster
    assert bls.slower_than_a_bigger_one(rows[1:]) == 0


def test_worst_inversion_names_the_pair():
    rows = [
        dict(name="a", gflops=1.0, median_ms=3.0),
        dict(name="b", gflops=2.0, median_ms=2.0),
        dict(name="c", gflops=3.0, median_ms=2.5),
    ]
    assert bls.worst_inversion(rows) == dict(ratio=1.5, slower="a", faster="b")
    assert bls.worst_inversion(rows[1:]) is None


def test_sweep_times_every_configuration(tmp_path, monkeypatch):
    model = "matmamba_vision_tiny_patch14_28"
    argv = ["bench_latency_sweep.py", "--model", model, "--rounds", "1", "--warmup", "0", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    bls.main()
    out = json.loads((tmp_path / "sweep.json").read_text())
    m = timm.create_model(model)
    sweep = {tuple(c.dims) for c in official_sweep(m)}
    top = (tuple([max(m.matryoshka_levels)] * len(m.layers)),)
    assert {tuple(r["dims"]) for r in out["rows"]} == sweep | set(top)
    assert out["wall_s"] > 0 and out["rounds"] == 1
    rows = out["rows"]
    assert all(r["median_ms"] > 0 and r["gflops"] > 0 and r["params"] > 0 for r in rows)
    beaten = sum(any(o["gflops"] > r["gflops"] and o["median_ms"] < r["median_ms"] for o in rows) for r in rows)
    assert out["slower_than_a_bigger_one"] == beaten
    assert (tmp_path / "sweep.png").stat().st_size > 0


def test_every_nth_keeps_the_uniform_widths(tmp_path, monkeypatch):
    model = "matmamba_vision_tiny_patch14_28"
    argv = ["bench_latency_sweep.py", "--model", model, "--rounds", "1", "--warmup", "0", "--every", "4"]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(tmp_path)])
    bls.main()
    out = json.loads((tmp_path / "sweep.json").read_text())
    m = timm.create_model(model)
    uniform = {tuple([g] * len(m.layers)) for g in m.matryoshka_levels}
    assert {tuple(r["dims"]) for r in out["rows"]} == uniform | {tuple(c.dims) for c in official_sweep(m)[::4]}
    assert out["every"] == 4
    monkeypatch.setattr(sys, "argv", [*argv[:-1], "0"])
    with pytest.raises(SystemExit):
        bls.main()
