"""Query time of saved database indexes (``retrieval.py --index-dir``), one against another, on real queries.

Each ``--index`` folder holds the ``index.faiss`` that retrieval.py saved; ``--queries`` is a float32 embedding
file of the query split from retrieval.py's ``--cache-dir`` (``.../val/g=128-*/embeddings.f32``). The indexes are
searched in turn (k 10), each round all queries at once; reported: ms per query (min / median over the rounds),
the speed of each index against the first, and how often its top-1 is the first index's top-1.

    python benchmarks/bench_saved_index.py --index output/idx_flat output/idx_hnsw \
        --queries output/r26/cache/MODEL/val/g=128-*/embeddings.f32 [--rounds 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from _common import cpu_name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", nargs="+", required=True, help="folders written by retrieval.py --index-dir")
    ap.add_argument("--queries", required=True, help="float32 query embeddings (embeddings.f32 of the cache)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args()
    import faiss

    faiss.omp_set_num_threads(args.threads)
    indexes = {Path(d).name: faiss.read_index(str(Path(d) / "index.faiss")) for d in args.index}
    dim = next(iter(indexes.values())).d
    queries = np.fromfile(args.queries, dtype=np.float32)
    if queries.size % dim:
        raise ValueError(f"--queries: {queries.size} floats is not a whole number of {dim}-wide embeddings")
    queries = queries.reshape(-1, dim)
    print(f"# faiss {faiss.__version__}, {args.threads} threads, CPU {cpu_name()}; {len(queries)} queries, k {args.k}")
    times = {name: [] for name in indexes}
    top1 = {}
    for _ in range(args.rounds):
        for name, idx in indexes.items():  # in turn, so drift hits every index alike
            t0 = time.perf_counter()
            _, ids = idx.search(queries, args.k)
            times[name].append((time.perf_counter() - t0) / len(queries) * 1e3)
            top1[name] = ids[:, 0]
    first = next(iter(indexes))
    for name, t in times.items():
        print(
            f"{name:>16}  ntotal {indexes[name].ntotal:>9,}  "
            f"ms/query min {min(t):.4f} median {statistics.median(t):.4f}"
            f"  speed vs {first}: {min(times[first]) / min(t):.2f}x (min) / "
            f"{statistics.median(times[first]) / statistics.median(t):.2f}x (median)"
            f"  top-1 as {first}'s: {(top1[name] == top1[first]).mean():.4f}"
        )


if __name__ == "__main__":
    main()
