"""Configuration generation, Pareto fronts and classification metrics."""

import json

import pytest
import torch
from eval_synthetic import tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

from matmamba_vision.evaluation import (
    AccuracyMeter,
    dims_name,
    load_config_file,
    official_sweep,
    pareto_front,
    parse_granularities,
    parse_mixnmatch,
    random_configs,
    topk_correct,
)


@pytest.fixture(scope="module")
def model():
    return tiny_model(depth=4)


def test_official_sweep_structure(model):
    levels = model.matryoshka_levels
    assert levels == [32, 16, 8]
    configs = official_sweep(model)
    dims = [c.dims for c in configs]
    assert len(dims) == len(set(dims))
    expected = set()
    for i, g1 in enumerate(levels):
        for g2 in levels[i + 1 :]:
            for k in range(1, 5):
                expected.add(tuple([g1] * (4 - k) + [g2] * k))
    assert set(dims) == expected
    # uniform g2 (k = depth) appears once, flagged as a trained level
    assert [c.name for c in configs if c.trained] == ["g=16", "g=8"]
    assert dims_name((32, 32, 16, 8)) == "32x2+16x1+8x1"


def test_random_configs_seeded_distinct(model):
    a, b, c = random_configs(model, 20, seed=3), random_configs(model, 20, seed=3), random_configs(model, 20, seed=4)
    assert [x.dims for x in a] == [x.dims for x in b] and [x.dims for x in a] != [x.dims for x in c]
    assert len({x.dims for x in a}) == 20
    assert all(set(x.dims) <= {32, 16, 8} for x in a)
    assert len(random_configs(model, 500)) == 3**4  # no more than exist
    assert len(parse_mixnmatch(model, "random:5")) == 5
    with pytest.raises(ValueError, match="random:N"):
        parse_mixnmatch(model, "random:x")
    with pytest.raises(ValueError, match="--mixnmatch random:N needs N > 0"):
        parse_mixnmatch(model, "random:0")


def test_config_files(model, tmp_path):
    j = tmp_path / "c.json"
    j.write_text(json.dumps([[32, 16, 16, 8], {"name": "mine", "dims": [8, 8, 16, 32]}]))
    got = load_config_file(model, str(j))
    assert [c.dims for c in got] == [(32, 16, 16, 8), (8, 8, 16, 32)] and got[1].name == "mine"
    c = tmp_path / "c.csv"
    c.write_text("name,l0,l1,l2,l3\na,32,32,16,16\nb,16,16,16,16\n")
    got = load_config_file(model, str(c))
    assert [x.name for x in got] == ["a", "b"] and got[1].kind == "uniform" and got[1].trained
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([[32, 12, 16, 8]]))
    with pytest.raises(ValueError, match="entry 0"):
        load_config_file(model, str(bad))
    short = tmp_path / "short.csv"
    short.write_text("32,16\n")
    with pytest.raises(ValueError, match="one entry per block"):
        load_config_file(model, str(short))
    with pytest.raises(ValueError, match="official"):
        parse_mixnmatch(model, str(tmp_path / "missing.json"))


def test_granularity_the_model_cannot_take(model):
    assert [c.dims for c in parse_granularities(model, None)] == [(32,) * 4, (16,) * 4, (8,) * 4]
    for bad in (["12"], ["64"], ["0"], ["x"]):
        with pytest.raises(ValueError, match="--granularities"):
            parse_granularities(model, bad)
        with pytest.raises(ValueError, match="--db-granularities"):  # retrieval.py's flags are named as such
            parse_granularities(model, bad, flag="--db-granularities")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20)), min_size=1, max_size=25))
def test_pareto_front_matches_brute_force(points):
    costs, scores = [p[0] for p in points], [p[1] for p in points]
    front = pareto_front(costs, scores)
    dominated = {
        i
        for i in range(len(points))
        for j in range(len(points))
        if costs[j] <= costs[i] and scores[j] >= scores[i] and (costs[j], scores[j]) != (costs[i], scores[i])
    }
    first = {}
    for i, p in enumerate(points):
        first.setdefault(p, i)
    assert set(front) == {i for i in range(len(points)) if i not in dominated and first[points[i]] == i}
    assert [costs[i] for i in front] == sorted(costs[i] for i in front)


def test_topk_and_meter():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.05], [0.2, 0.3, 0.5]])
    targets = torch.tensor([1, 1, 0])
    assert topk_correct(logits, targets, (1, 2, 5)) == {1: 1, 2: 2, 5: 3}
    m = AccuracyMeter()
    m.update(logits, targets)
    r = m.result()
    assert r["top1"] == pytest.approx(100 / 3) and r["top5"] == 100.0
    assert r["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, targets)))
    with pytest.raises(ValueError, match="empty"):
        AccuracyMeter().result()
