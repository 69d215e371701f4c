"""A database index at ImageNet scale on synthetic vectors: faiss Flat (exact) vs HNSW32, inner product.

N database vectors of width D (default 1.28M x 512, the 35M model's D), clustered like class embeddings
(C centres of norm ~1 plus Gaussian noise of norm ``--noise``, L2-normalised; synthetic, not a model's
embeddings), and Q queries drawn the same way. Reports each index's build time and memory (resident-set
growth), query time, and HNSW32's recall@1 against exact search (the same top-1 vector) and its 1-NN class
accuracy (top-1 drawn around the query's centre) beside exact search's, with its query-speed ratio, per
``efSearch``.

    python benchmarks/bench_knn_index.py [--n 1280000] [--dim 512] [--queries 10000] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from _common import cpu_name, header


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def vectors(n: int, centres: np.ndarray, noise: float, rng: np.random.Generator, chunk: int = 65536):
    """(vectors, the centre each was drawn around)."""
    out = np.empty((n, centres.shape[1]), np.float32)
    labels = rng.integers(0, len(centres), n)
    for a in range(0, n, chunk):
        m = min(chunk, n - a)
        v = centres[labels[a : a + m]] + noise * rng.standard_normal((m, centres.shape[1]), np.float32)
        out[a : a + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out, labels


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_280_000, help="database vectors")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--classes", type=int, default=1000, help="cluster centres")
    ap.add_argument(
        "--noise", type=float, default=0.5, help="norm of the Gaussian noise around a centre, relative to the centre's"
    )
    ap.add_argument("--ef-search", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import faiss

    faiss.omp_set_num_threads(args.threads)
    header(f"faiss Flat vs HNSW32, {args.n} x {args.dim} synthetic vectors (inner product)")
    print(f"# faiss {faiss.__version__}, {args.threads} threads, CPU {cpu_name()}")
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((args.classes, args.dim)).astype(np.float32) / np.sqrt(args.dim)
    sigma = args.noise / np.sqrt(args.dim)  # centres have norm ~1; the noise has norm ~noise at any width
    db, db_labels = vectors(args.n, centres, sigma, rng)
    q, q_labels = vectors(args.queries, centres, sigma, rng)
    results = {}
    for name in ("Flat", "HNSW32"):
        before = rss_bytes()
        idx = faiss.index_factory(args.dim, name, faiss.METRIC_INNER_PRODUCT)
        _, build_s = timed(lambda: idx.add(db))
        mem = rss_bytes() - before
        results[name] = idx
        print(f"{name:7s} build {build_s:8.1f} s   memory {mem / 2**20:9.1f} MiB (resident growth)")
    (_, exact), flat_s = timed(lambda: results["Flat"].search(q, 1))
    exact_hit = float((db_labels[exact[:, 0]] == q_labels).mean())
    print(
        f"Flat    query {1e3 * flat_s / args.queries:8.3f} ms/query ({args.queries} queries, k=1), "
        f"1-NN class accuracy {exact_hit:.4f}"
    )
    hnsw = results["HNSW32"]
    for ef in args.ef_search:
        hnsw.hnsw.efSearch = ef
        (_, approx), s = timed(lambda: hnsw.search(q, 1))
        recall = float((approx[:, 0] == exact[:, 0]).mean())
        hit = float((db_labels[np.maximum(approx[:, 0], 0)] == q_labels).mean())
        print(
            f"HNSW32  efSearch {ef:4d}: {1e3 * s / args.queries:8.3f} ms/query, recall@1 vs exact {recall:.4f}, "
            f"1-NN class accuracy {hit:.4f} ({hit / exact_hit:.4f} of exact), speed {flat_s / s:6.1f}x Flat"
        )


if __name__ == "__main__":
    main()
