"""Many configurations per decoded batch: the same results as one pass per configuration; result files."""

import csv
import json

import pytest
import torch
from eval_synthetic import SyntheticLoader, tiny_model

from matmamba_vision.accuracy import AccuracyMeter
from matmamba_vision.evaluation import (
    evaluate_configs,
    official_sweep,
    parse_granularities,
    random_configs,
    validate_configs,
    validation_tables,
    write_validation_outputs,
)
from matmamba_vision.training.validation import validate


@pytest.fixture(scope="module")
def model():
    return tiny_model(depth=3)


def test_forward_many_bit_identical_and_restores_granularity(model):
    configs = official_sweep(model) + random_configs(model, 6, seed=1)
    x = torch.randn(5, 1, 28, 28)
    model.set_granularity(16)
    before = model.granularities
    for pre_logits in (False, True):
        outs = dict(model.forward_many(x, [c.dims for c in configs], pre_logits=pre_logits))
        assert sorted(outs) == list(range(len(configs)))
        for i, c in enumerate(configs):
            with torch.no_grad(), model.granularity(list(c.dims)):
                feats = model.forward_features(x)
                ref = model.forward_head(feats, pre_logits=pre_logits)
            assert torch.equal(outs[i], ref), c.name
    assert model.granularities == before
    model.set_granularity(None)
    # None means a block's full width, as resolve_granularity has it; invalid lists are ValueErrors
    full = [None] * len(model.layers)
    ((_, got),) = model.forward_many(x, [full])
    with torch.no_grad():
        assert torch.equal(got, model(x))
    with pytest.raises(ValueError, match="layer 0"):
        list(model.forward_many(x, [[7] * len(model.layers)]))


def test_batched_sweep_equals_one_pass_per_configuration(model):
    configs = parse_granularities(model, None) + official_sweep(model)
    loader = SyntheticLoader(40, n_classes=7, batch_size=12, noise=1.0)
    batched = evaluate_configs(model, loader, configs)
    assert loader.batches_served == 4  # the data was read once for all configurations
    for cfg, row in zip(configs, batched):
        single = evaluate_configs(model, loader, [cfg], share_prefix=False)[0]
        for key in ("top1", "top5", "loss", "samples"):
            assert row[key] == pytest.approx(single[key], abs=1e-9), (cfg.name, key)
    assert loader.batches_served == 4 + 4 * len(configs)
    # distinct submodels really do differ (the comparison above is not vacuous)
    assert len({round(r["loss"], 6) for r in batched}) > 1


def test_training_validation_is_the_same_loop(model):
    """train.py's per-epoch validation and validate.py's sweep give the same numbers per granularity, each
    equal to one plain forward per granularity, and training's validation keeps the model's mode."""
    configs = parse_granularities(model, None)
    loader = SyntheticLoader(40, n_classes=7, batch_size=12, noise=1.0)
    model.train()
    trained = validate(model, loader, [c.dims[0] for c in configs], torch.device("cpu"))
    assert model.training
    rows = evaluate_configs(model, loader, configs)
    for cfg, row in zip(configs, rows):
        meter = AccuracyMeter()
        with torch.no_grad(), model.granularity(cfg.dims[0]):
            for images, targets in loader:
                meter.update(model(images), targets)
        plain = meter.result()
        for key in ("top1", "top5", "loss"):
            assert trained[cfg.dims[0]][key] == row[key] == plain[key], (cfg.name, key)


def test_max_samples_and_empty_split(model):
    loader = SyntheticLoader(40, batch_size=16)
    rows = evaluate_configs(model, loader, parse_granularities(model, ["16"]), max_samples=20)
    assert rows[0]["samples"] == 20 and loader.batches_served == 2
    with pytest.raises(ValueError, match="empty"):
        evaluate_configs(model, SyntheticLoader(0), parse_granularities(model, None))
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluate_configs(model, loader, [])


def test_validation_rows_files_and_tables(model, tmp_path):
    configs = parse_granularities(model, None) + random_configs(model, 5, seed=0)
    rows = validate_configs(model, SyntheticLoader(24, n_classes=10, batch_size=8, noise=1.0), configs)
    full, half = rows[0], rows[1]
    assert full["params"] > half["params"] > half["params_non_embedding"]
    assert full["gflops"] > half["gflops"] > 0
    assert any(r["pareto_params"] for r in rows) and rows[-1]["kind"] in ("mixnmatch", "uniform")
    paths = write_validation_outputs(rows, tmp_path / "out", {"model": "tiny"})
    with open(paths["csv"]) as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) and table[0]["dims"] == "32 32 32"
    data = json.loads(paths["json"].read_text())
    for key in ("top1", "loss", "gflops"):  # full precision in both files: only the printed tables round
        assert [float(r[key]) for r in table] == [r[key] for r in data["rows"]] == [r[key] for r in rows], key
    assert data["model"] == "tiny" and data["rows"][3]["dims"] == list(configs[3].dims)
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = validation_tables(rows)
    assert "Per granularity" in text and "Pareto front" in text and "g=16" in text
