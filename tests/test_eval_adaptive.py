"""Adaptive retrieval: per-query cascade, shortlist and rerank, the persistent index (tiny model, fake data)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from eval_synthetic import SyntheticLoader, tiny_model
from PIL import Image
from train_utils import load_script

from matmamba_vision.evaluation import EmbeddingCache, embed_splits, faiss_available, knn_search, parse_granularities
from matmamba_vision.evaluation.cascade import (
    PrefixEncoder,
    cascade_costs,
    cascade_table,
    class_margin,
    run_cascade,
    write_cascade_outputs,
)
from matmamba_vision.evaluation.knn_index import ExactDatabase, index_key, open_index
from matmamba_vision.evaluation.rerank import rerank, rerank_table, run_rerank, write_rerank_outputs
from matmamba_vision.weights import save_weights

ROOT = Path(__file__).resolve().parents[1]
needs_faiss = pytest.mark.skipif(not faiss_available(), reason="faiss is not installed")
IDENT = dict(model="tiny", weights="w0", dataset="synthetic", split="train", transform={"input_size": [1, 28, 28]})


@pytest.fixture(scope="module")
def model():
    return tiny_model(depth=2)


def _db(model, n=48, dims=(32, 32), seed=1, noise=0.6):
    (s,) = embed_splits(model, SyntheticLoader(n, seed=seed, noise=noise), [list(dims)], IDENT, EmbeddingCache(None))
    return s


def test_class_margin_by_hand():
    labels = np.array([0, 0, 1, 2])
    s = np.array([[0.9, 0.8, 0.5], [0.9, 0.7, 0.6], [0.9, 0.85, 0.2]])
    nn = np.array([[0, 1, 2], [0, 2, 3], [0, 1, 1]])  # other class at rank 3, at rank 2, never (lower bound)
    np.testing.assert_allclose(class_margin(s, nn, labels), [0.4, 0.2, 0.7])
    with pytest.raises(ValueError, match="k >= 2"):
        class_margin(s[:, :1], nn[:, :1], labels)


def test_prefix_encoder_equals_full_forwards_and_reuses_shared_blocks(model):
    x = SyntheticLoader(6).images
    chain = [[16, 8], [16, 32], [32, 32]]  # the second resumes after block 0 of the first; the third from tokens
    enc = PrefixEncoder(model, x, chain)
    assert enc.resume == [0, 1, 0] and enc.keep[0] == {1}
    rows = np.arange(6)
    for j, dims in enumerate(chain):
        rows = rows[j:]  # a shrinking subset, as escalation leaves it
        with model.granularity(dims):
            want = torch.nn.functional.normalize(model.forward_head(model.forward_features(x[rows]), pre_logits=True))
        torch.testing.assert_close(enc.encode(j, rows), want, rtol=1e-5, atol=1e-5)
    full = cascade_costs(model, chain)
    from matmamba_vision import count_flops

    assert full[0] == count_flops(model, chain[0]) / 1e9
    assert full[1] < count_flops(model, chain[1]) / 1e9  # block 0 and the patch embedding are not paid twice
    assert full[2] < count_flops(model, chain[2]) / 1e9  # the patch embedding is not


def test_cascade_thresholds_monotone_in_cost(model, tmp_path):
    db = ExactDatabase(_db(model), backend="torch")
    cfgs = parse_granularities(model, ["8", "16", "32"])
    q = SyntheticLoader(16, seed=2, noise=0.6, batch_size=8)
    rows = run_cascade(model, q, cfgs, db, thresholds=[-1.0, 0.01, 0.05, 0.2, math.inf])
    fixed = {r["configs"]: r for r in rows if r["kind"] == "fixed"}
    casc = [r for r in rows if r["kind"] == "cascade"]
    assert list(fixed) == ["8", "16", "32"] and len(casc) == 5
    costs = [r["query_gflops"] for r in casc]
    assert costs == sorted(costs) and costs[0] < costs[-1]
    # nobody escalates below every margin: exactly the cheapest configuration alone
    assert casc[0]["share_8"] == 1.0 and casc[0]["top1"] == fixed["8"]["top1"]
    assert casc[0]["query_gflops"] == pytest.approx(fixed["8"]["query_gflops"])
    # everyone escalates at infinity: the full-width answers, paid for every stage less the reused embedding
    assert casc[-1]["share_32"] == 1.0 and casc[-1]["top1"] == fixed["32"]["top1"]
    assert casc[-1]["map10"] == pytest.approx(fixed["32"]["map10"])
    assert fixed["32"]["query_gflops"] < casc[-1]["query_gflops"] < sum(r["query_gflops"] for r in fixed.values())
    for r in casc:
        assert sum(r[f"share_{g}"] for g in fixed) == pytest.approx(1.0) and r["ms_per_query"] > 0
    paths = write_cascade_outputs(rows, tmp_path, {"model": "tiny"})
    assert json.loads(paths["json"].read_text())["rows"][-1]["threshold"] == "inf"
    assert paths["png"].read_bytes()[:4] == b"\x89PNG" and "GFLOPs/query" in cascade_table(rows)
    auto = run_cascade(
        model, SyntheticLoader(6, seed=2), cfgs[1:], db
    )  # default thresholds: the first batch's margin deciles, then infinity
    assert [r["threshold"] for r in auto if r["kind"] == "cascade"][-1] == math.inf
    with pytest.raises(ValueError, match="at least two"):
        run_cascade(model, q, cfgs[:1], db)


def test_rerank_equals_exhaustive_search_at_the_database_size(model, tmp_path):
    full, short = _db(model), _db(model, dims=(8, 8))
    n = full.embeddings.shape[0]
    q = SyntheticLoader(12, seed=2, noise=0.6, batch_size=5)
    (qf,) = embed_splits(model, q, [[32, 32]], dict(IDENT, split="val"), EmbeddingCache(None))
    s, i = knn_search(qf.embeddings, full.embeddings, k=10, backend="torch")
    rs, ri = rerank(qf.embeddings, np.tile(np.arange(n)[::-1], (12, 1)), full.embeddings)
    np.testing.assert_array_equal(ri, i)
    np.testing.assert_allclose(rs, s, atol=1e-6)
    cfgs = parse_granularities(model, ["8", "32"])
    rows = run_rerank(model, q, cfgs[0], cfgs[1], short, full, ks=(10, n), backend="torch")
    ex, r10, rall = rows
    assert ex["kind"] == "exhaustive" and (r10["K"], rall["K"]) == (10, n)
    for key in ("top1", "map10", "recall1", "recall5", "recall10"):
        assert rall[key] == ex[key]
    assert rall["search_gflops"] > ex["search_gflops"] and r10["query_gflops"] > ex["query_gflops"]
    cut = run_rerank(model, q, cfgs[0], cfgs[1], short, full, ks=(n,), shortlist_dim=4, backend="torch")
    assert cut[1]["top1"] == ex["top1"] and cut[1]["search_gflops"] < ex["search_gflops"] + 2 * n * 32 / 1e9
    paths = write_rerank_outputs(rows, tmp_path, {})
    assert len(paths["csv"].read_text().splitlines()) == 4 and "search GFLOPs" in rerank_table(rows)
    with pytest.raises(ValueError, match="every K"):
        run_rerank(model, q, cfgs[0], cfgs[1], short, full, ks=(n + 1,), backend="torch")
    with pytest.raises(ValueError, match="is the full one"):
        run_rerank(model, q, cfgs[1], cfgs[1], short, full, ks=(10,), backend="torch")


@needs_faiss
def test_index_built_reused_and_refused(model, tmp_path):
    data = dict(IDENT, files="f0")
    key = index_key("sha-a", 32, data, "Flat")
    built = []

    def database():
        built.append(1)
        return _db(model)

    d = tmp_path / "idx"
    first = open_index(d, key, database, progress=lambda s: None)
    assert built == [1] and not first.from_cache and first.ntotal == 48
    again = open_index(d, key, database, progress=lambda s: None)
    assert built == [1] and again.from_cache, "a reused index reads no database image"
    q = _db(model, n=8, seed=3).embeddings
    np.testing.assert_array_equal(again.search(q, 5)[1], first.search(q, 5)[1])
    np.testing.assert_array_equal(again.labels, first.labels)
    changes = dict(
        weights=index_key("sha-b", 32, data, "Flat"),
        granularity=index_key("sha-a", 16, data, "Flat"),
        split_fingerprint=index_key("sha-a", 32, dict(data, files="f1"), "Flat"),
        index=index_key("sha-a", 32, data, "HNSW32"),
        faiss_version=dict(key, faiss_version="0.0.0"),
    )
    for name, other in changes.items():
        with pytest.raises(ValueError, match=rf"was built with {name} = .*, this run has") as e:
            open_index(d, other, database, progress=lambda s: None)
        assert "\n" not in str(e.value)
    assert built == [1]
    hnsw = open_index(tmp_path / "hnsw", changes["index"], database, progress=lambda s: None)
    assert (hnsw.search(q, 1)[1][:, 0] == first.search(q, 1)[1][:, 0]).mean() > 0.7


@needs_faiss
def test_bad_or_partial_index_files(model, tmp_path):
    key = index_key("sha-a", 32, dict(IDENT, files="f0"), "Flat")
    d = tmp_path / "idx"
    open_index(d, key, lambda: _db(model), progress=lambda s: None)
    blob = (d / "index.faiss").read_bytes()
    (d / "index.faiss").write_bytes(blob[: len(blob) // 2])  # truncated
    with pytest.raises(ValueError, match="index.faiss differs .* damaged or partial"):
        open_index(d, key, lambda: _db(model), progress=lambda s: None)
    (d / "index.faiss").unlink()
    with pytest.raises(ValueError, match="index.faiss is missing"):
        open_index(d, key, lambda: _db(model), progress=lambda s: None)
    (d / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match="meta.json is unreadable"):
        open_index(d, key, lambda: _db(model), progress=lambda s: None)
    (d / "meta.json").unlink()  # labels.i64 left: a folder that is not an index
    with pytest.raises(ValueError, match="not empty but has no meta.json"):
        open_index(d, key, lambda: _db(model), progress=lambda s: None)

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        open_index(tmp_path / "new", key, interrupted, progress=lambda s: None)
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".tmp-*"))


def _folder(root, n_train=24, n_val=12, n_classes=4):
    """ROOT/{train,val}/CLASS/*.png from the synthetic templates (grey 28x28)."""
    for split, n in (("train", n_train), ("val", n_val)):
        data = SyntheticLoader(n, n_classes=n_classes, seed=len(split), noise=0.3)
        for i, (img, t) in enumerate(zip(data.images, data.targets)):
            d = root / split / f"c{int(t)}"
            d.mkdir(parents=True, exist_ok=True)
            px = np.clip(img[0].numpy() * 60 + 128, 0, 255).astype(np.uint8)
            Image.fromarray(px, mode="L").save(d / f"{i}.png")
    return root


@needs_faiss
def test_retrieval_script_cascade_rerank_index_and_own_baseline_database(model, tmp_path, monkeypatch, capsys):
    retrieval = load_script("retrieval")
    data = _folder(tmp_path / "data")
    ckpt, other = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_weights(model.state_dict(), ckpt)
    save_weights(tiny_model(seed=3, depth=2).state_dict(), other)
    tiny = ["--model", "matmamba_vision_tiny_patch4_28", "--model-kwargs", "embed_dim=32", "depth=2", "d_state=16"]
    common = [*tiny, "-j", "0", "-b", "8", "--data-dir", str(data), "--num-classes", "10", "--knn-backend", "faiss"]
    common += ["--cache-dir", str(tmp_path / "cache"), "--index-dir", str(tmp_path / "index")]
    splits = []
    real = retrieval.loader_from_args
    monkeypatch.setattr(
        retrieval, "loader_from_args", lambda a, split, cfg: splits.append(split) or real(a, split, cfg)
    )
    out = tmp_path / "out"
    rows = retrieval.main(
        [*common, "--checkpoint", str(ckpt), "--output", str(out), "--cascade", "8,16,32"]
        + ["--cascade-thresholds", "0.01", "inf", "--rerank", "10", "24", "--baseline-checkpoints", f"b={other}"]
    )
    assert (tmp_path / "index" / "meta.json").is_file() and "train" in splits
    assert [(r["query_kind"], r["db_model"]) for r in rows][-2:] == [("baseline", "nested"), ("baseline", "b")]
    casc = json.loads((out / "cascade.json").read_text())["rows"]
    assert [r["kind"] for r in casc] == ["fixed"] * 3 + ["cascade"] * 2 and casc[-1]["share_32"] == 1.0
    rer = json.loads((out / "rerank.json").read_text())["rows"]
    assert [r["K"] for r in rer] == [24, 10, 24] and rer[2]["top1"] == rer[0]["top1"]
    assert (out / "cascade.png").read_bytes()[:4] == b"\x89PNG"
    # a query-only run against the saved index: the database split is never opened
    splits.clear()
    again = retrieval.main([*common, "--checkpoint", str(ckpt), "--output", str(out), "--cascade", "8,32"])
    assert splits == ["val"] and [r["top1"] for r in again] == [r["top1"] for r in rows[:3]]
    assert "index: reused" in capsys.readouterr().out
    with pytest.raises(ValueError, match="was built with weights = "):  # another model's weights
        retrieval.main([*common, "--checkpoint", str(other), "--output", str(out)])
    with pytest.raises(ValueError, match="was built with index = "):
        retrieval.main([*common, "--checkpoint", str(ckpt), "--output", str(out), "--knn-index", "HNSW32"])
