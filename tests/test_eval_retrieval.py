"""Retrieval end to end on data with known structure; the embedding cache (reuse, invalidation, interruption)."""

import json

import numpy as np
import pytest
import torch
from eval_synthetic import SyntheticLoader, tiny_model

from matmamba_vision.evaluation import (
    Baseline,
    EmbeddingCache,
    embed_splits,
    file_sha256,
    parse_granularities,
    retrieval_table,
    run_retrieval,
    state_dict_sha256,
    uniform_configs,
    write_retrieval_outputs,
)
from matmamba_vision.weights import save_weights

DB_ID = dict(dataset="synthetic", split="train", transform={"input_size": [1, 28, 28]})
Q_ID = dict(dataset="synthetic", split="val", transform={"input_size": [1, 28, 28]})


@pytest.fixture(scope="module")
def model():
    return tiny_model(depth=2)


def _identity(model, weights):
    return dict(model="tiny", model_args=model.model_args, weights=weights)


def test_retrieval_finds_the_known_classes(model, tmp_path):
    db, q = SyntheticLoader(64, n_classes=4, seed=1), SyntheticLoader(24, n_classes=4, seed=2)
    rows = run_retrieval(
        model,
        db,
        q,
        uniform_configs(model, [32]),
        parse_granularities(model, None),
        _identity(model, state_dict_sha256(model)),
        DB_ID,
        Q_ID,
        EmbeddingCache(tmp_path / "c"),
        backend="torch",
    )
    assert [(r["query_granularity"], r["db_granularity"]) for r in rows] == [(32, 32), (16, 32), (8, 32)]
    full = rows[0]
    # same-class images are near copies: the full model retrieves its own class
    assert full["top1"] == 100.0 and full["recall10"] == 100.0 and full["map10"] > 90.0
    assert full["queries"] == 24 and full["db_size"] == 64
    paths = write_retrieval_outputs(rows, tmp_path / "out", {"model": "tiny"})
    assert len(paths["csv"].read_text().strip().splitlines()) == 4
    assert json.loads(paths["json"].read_text())["rows"][1]["query_granularity"] == 16
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    assert "1-NN top-1" in retrieval_table(rows)


def test_matrix_and_baseline(model, tmp_path):
    db, q = SyntheticLoader(40, n_classes=4, seed=1), SyntheticLoader(12, n_classes=4, seed=2)
    other = tiny_model(seed=7, depth=2, mixer_dims=[16, 16])  # a separately trained, smaller model
    rows = run_retrieval(
        model,
        db,
        q,
        parse_granularities(model, ["32", "8"]),
        parse_granularities(model, ["32", "16"]),
        _identity(model, "w0"),
        DB_ID,
        Q_ID,
        EmbeddingCache(None),
        baselines=[Baseline("small", other, "b0")],
        backend="torch",
    )
    pairs = [(r["query_kind"], r["query_granularity"], r["db_granularity"]) for r in rows]
    assert pairs == [
        ("granularity", 32, 32),
        ("granularity", 16, 32),
        ("baseline", 16, 32),
        ("granularity", 32, 8),
        ("granularity", 16, 8),
        ("baseline", 16, 16),  # the baseline against its own database
    ]
    assert [r["db_model"] for r in rows] == ["nested"] * 5 + ["small"]
    own, nested = rows[-1], rows[2]
    assert own["db_size"] == nested["db_size"] == 40 and own["query_gflops"] == nested["query_gflops"]
    # the baseline meets the full-width database wherever it is listed
    rows = run_retrieval(
        model,
        db,
        q,
        parse_granularities(model, ["8", "32"]),
        parse_granularities(model, ["16"]),
        _identity(model, "w0"),
        DB_ID,
        Q_ID,
        EmbeddingCache(None),
        baselines=[Baseline("small", other, "b0")],
        backend="torch",
    )
    assert [(r["query_kind"], r["db_model"], r["db_granularity"]) for r in rows] == [
        ("granularity", "nested", 8),
        ("granularity", "nested", 32),
        ("baseline", "nested", 32),
        ("baseline", "small", 16),
    ]
    paths = write_retrieval_outputs(rows, tmp_path, {})
    assert paths["png"].stat().st_size > 0


def test_cache_reused_and_invalidated_by_a_changed_checkpoint(model, tmp_path):
    cache = EmbeddingCache(tmp_path / "cache")
    ckpt = tmp_path / "model.safetensors"
    save_weights(model.state_dict(), ckpt)
    ident = dict(_identity(model, file_sha256(ckpt)), **DB_ID)
    gs = [c.dims for c in parse_granularities(model, None)]
    loader = SyntheticLoader(20, batch_size=8)
    first = embed_splits(model, loader, gs, ident, cache)
    assert loader.batches_served == 3 and not any(s.from_cache for s in first)
    norms = np.linalg.norm(first[0].embeddings, axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    second = embed_splits(model, loader, gs, ident, cache)
    assert loader.batches_served == 3, "a second run must not read the data again"
    assert all(s.from_cache for s in second) and isinstance(second[0].embeddings, np.memmap)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(np.asarray(a.embeddings), np.asarray(b.embeddings))
        np.testing.assert_array_equal(a.labels, b.labels)
    # one new granularity: only it is computed
    more = embed_splits(model, loader, gs[:1] + [[16, 8]], ident, cache)
    assert more[0].from_cache and not more[1].from_cache and loader.batches_served == 6
    # a changed checkpoint (other weights, same path) gets a new key: nothing is reused
    changed = tiny_model(seed=5, depth=2)
    save_weights(changed.state_dict(), ckpt)
    ident2 = dict(_identity(changed, file_sha256(ckpt)), **DB_ID)
    third = embed_splits(changed, loader, gs, ident2, cache)
    assert not any(s.from_cache for s in third) and loader.batches_served == 9
    assert not np.allclose(np.asarray(third[0].embeddings), np.asarray(first[0].embeddings))
    # other split or transform: other keys too
    assert not embed_splits(model, loader, gs[:1], dict(ident, split="val"), cache)[0].from_cache
    # other precision: a bfloat16 pass is not served for a float32 one, nor the reverse
    (bf16,) = embed_splits(model, loader, gs[:1], ident, cache, amp_dtype=torch.bfloat16)
    assert not bf16.from_cache and embed_splits(model, loader, gs[:1], ident, cache)[0].from_cache
    assert embed_splits(model, loader, gs[:1], ident, cache, amp_dtype=torch.bfloat16)[0].from_cache


class _Boom(SyntheticLoader):
    def __iter__(self):
        for i, batch in enumerate(super().__iter__()):
            if i == 2:
                raise KeyboardInterrupt
            yield batch


def test_interrupted_pass_is_never_read_as_complete(model, tmp_path):
    cache = EmbeddingCache(tmp_path / "cache")
    ident = dict(_identity(model, "w"), **DB_ID)
    with pytest.raises(KeyboardInterrupt):
        embed_splits(model, _Boom(40, batch_size=8), [[32, 32]], ident, cache)
    assert not list((tmp_path / "cache").rglob("meta.json")), "no entry may look complete"
    assert not list((tmp_path / "cache").rglob("*.f32")), "the temporary files are removed"
    # a directory left by a killed process (no meta.json) is not used either
    entry = cache.entry_dir(
        dict(ident, granularity=[32, 32], name="[32, 32]", max_samples=None, precision="float32", device_type="cpu")
    )
    entry.mkdir(parents=True)
    (entry / "embeddings.f32").write_bytes(b"\0" * 64)
    loader = SyntheticLoader(40, batch_size=8)
    (s,) = embed_splits(model, loader, [[32, 32]], ident, cache)
    assert not s.from_cache and loader.batches_served == 5


def test_bad_splits(model, tmp_path):
    cfgs = uniform_configs(model, [32])
    ident = _identity(model, "w")
    db = SyntheticLoader(16, n_classes=4)
    q = SyntheticLoader(8, n_classes=4, classes=["class0", "class1", "class2", "shoe"])
    with pytest.raises(ValueError, match=r"class lists differ.*only in train: \['class3'\].*only in val: \['shoe'\]"):
        run_retrieval(model, db, q, cfgs, cfgs, ident, DB_ID, Q_ID, EmbeddingCache(None), backend="torch")
    with pytest.raises(ValueError, match=r"query split \(val\) is empty"):
        run_retrieval(
            model,
            db,
            SyntheticLoader(0, n_classes=4),
            cfgs,
            cfgs,
            ident,
            DB_ID,
            Q_ID,
            EmbeddingCache(None),
            backend="torch",
        )
    with pytest.raises(ValueError, match="need at least 10"):
        run_retrieval(
            model,
            SyntheticLoader(6, n_classes=4),
            q.__class__(4, n_classes=4),
            cfgs,
            cfgs,
            ident,
            DB_ID,
            Q_ID,
            EmbeddingCache(None),
            backend="torch",
        )
    with pytest.raises(ValueError, match="cannot run at 12"):
        parse_granularities(model, ["12"])
    assert torch.is_tensor(db.images)
