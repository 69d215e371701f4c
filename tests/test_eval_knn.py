"""Exact kNN search (faiss and torch backends, chunked) against brute force, and retrieval metrics."""

import numpy as np
import pytest

from matmamba_vision.evaluation import faiss_available, knn_search, retrieval_metrics

needs_faiss = pytest.mark.skipif(not faiss_available(), reason="faiss is not installed")


def _data(nq=137, nd=1009, dim=24, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((nq, dim)).astype(np.float32)
    d = rng.standard_normal((nd, dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return q, d


def _brute(q, d, k):
    s = q.astype(np.float64) @ d.astype(np.float64).T
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, idx, 1), idx


@pytest.mark.parametrize("backend", ["torch", pytest.param("faiss", marks=needs_faiss)])
@pytest.mark.parametrize("chunks", [(8192, 65536), (31, 100), (1, 7)])
def test_exact_search_equals_brute_force(backend, chunks, tmp_path):
    q, d = _data()
    mm = np.lib.format.open_memmap(tmp_path / "db.npy", mode="w+", dtype=np.float32, shape=d.shape)
    mm[:] = d
    mm.flush()
    db = np.load(tmp_path / "db.npy", mmap_mode="r")  # a read-only memory-mapped database, as from the cache
    s, i = knn_search(q, db, k=10, backend=backend, query_chunk=chunks[0], db_chunk=chunks[1], progress=False)
    bs, bi = _brute(q, d, 10)
    assert i.dtype == np.int64 and i.shape == (137, 10)
    np.testing.assert_array_equal(i, bi)
    np.testing.assert_allclose(s, bs, atol=1e-5)


@needs_faiss
def test_faiss_and_torch_agree_on_ties_and_order():
    q, d = _data(nq=50, nd=300, dim=8, seed=1)
    d = np.concatenate([d, d[:40]])  # exact duplicates: equal scores, the lower index must come first
    st, it = knn_search(q, d, k=12, backend="torch", db_chunk=64, progress=False)
    sf, i_f = knn_search(q, d, k=12, backend="faiss", db_chunk=64, progress=False)
    np.testing.assert_allclose(st, sf, atol=1e-5)
    np.testing.assert_array_equal(it, i_f)
    dup = np.isin(it, np.arange(40)) | (it >= 300)
    for row in range(len(q)):
        for a in it[row][dup[row]]:
            if a >= 300:  # a duplicate ranked: its original (lower index) is ranked just before it
                pos = list(it[row]).index(a)
                assert it[row][pos - 1] == a - 300


@needs_faiss
def test_approximate_index_is_an_option():
    q, d = _data(nq=40, nd=500, dim=16, seed=2)
    _, exact = knn_search(q, d, k=5, backend="faiss", progress=False)
    _, approx = knn_search(q, d, k=5, backend="faiss", index="HNSW32", progress=False)
    assert approx.shape == exact.shape and (approx[:, 0] == exact[:, 0]).mean() > 0.8
    with pytest.raises(ValueError, match="faiss backend"):
        knn_search(q, d, k=5, backend="torch", index="HNSW32")
    with pytest.raises(ValueError, match="index_factory"):
        knn_search(q, d, k=5, backend="faiss", index="NoSuchIndex")
    with pytest.raises(ValueError, match=r"'IVF1024,Flat' cannot be built over 500 database rows"):
        knn_search(q, d, k=5, backend="faiss", index="IVF1024,Flat")  # more clusters than rows: faiss refuses


def test_bad_search_input():
    q, d = _data(nq=4, nd=6)
    with pytest.raises(ValueError, match="k must be"):
        knn_search(q, d, k=7, backend="torch")
    with pytest.raises(ValueError, match="same width"):
        knn_search(q[:, :5], d, k=2, backend="torch")
    with pytest.raises(ValueError, match="at least one query"):
        knn_search(q[:0], d, k=2, backend="torch")
    with pytest.raises(ValueError, match="backend"):
        knn_search(q, d, k=2, backend="annoy")


def test_retrieval_metrics_by_hand():
    db_labels = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 0, 1])
    # query 0 (class 0; 3 in the database): relevant at ranks 2 and 3 -> AP = (1/2 + 2/3) / 3
    # query 1 (class 2; 5 in the database): relevant at rank 1 -> AP = 1 / 5
    nn = np.array([[2, 0, 1, 3, 4, 5, 6, 7, 8, 9], [5, 0, 1, 2, 3, 4, 10, 11, 0, 1]])
    m = retrieval_metrics(nn, np.array([0, 2]), db_labels)
    assert m["top1"] == 50.0 and m["recall1"] == 50.0 and m["recall5"] == 100.0 and m["recall10"] == 100.0
    assert m["map10"] == pytest.approx(100 * ((1 / 2 + 2 / 3) / 3 + 1 / 5) / 2)
    with pytest.raises(ValueError, match="columns"):
        retrieval_metrics(nn[:, :5], np.array([0, 2]), db_labels)
    # -1 (an approximate index found fewer than k) is a miss, not the last database row (class 1)
    short = np.array([[2, 3, 4, 11] + [-1] * 6])
    m = retrieval_metrics(short, np.array([1]), db_labels)
    assert m["recall10"] == 100.0 and m["map10"] == pytest.approx(100 * 4 / 4)
    m = retrieval_metrics(np.array([[0, 1, 10] + [-1] * 7]), np.array([1]), db_labels)
    assert m["top1"] == 0.0 and m["recall10"] == 0.0 and m["map10"] == 0.0
