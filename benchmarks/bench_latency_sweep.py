"""Issue 29: how long timing the whole official mix'n'match sweep takes, and how latency ranks against GFLOPs.

Times every configuration of ``official_sweep`` (plus the uniform widths) with the code ``validate.py --latency``
runs (:func:`~matmamba_vision.evaluation.latency.measure_latency`, no cache), on random weights: no dataset is
needed, and latency does not depend on the weights. Prints the wall time of the whole timing (the goal: at most
5 minutes for the 35M model at 224 px, batch 1, eager, on the 2-core CPU), the Spearman rank correlation of
median latency with GFLOPs, and how many configurations some configuration with more GFLOPs beats on time.
Writes ``sweep.json`` and ``sweep.png`` (median ms against GFLOPs) to ``--out``.

    python benchmarks/bench_latency_sweep.py [--model matmamba_vision_35m_patch16_224] [--batch 1]
        [--runtime eager] [--every 1] [--live-mb 10240] [--out benchmarks/results/latency_sweep]

``--every N`` times every N-th configuration of the sweep (the uniform widths always): an ONNX Runtime run exports
each configuration first, about 25 s apiece for the 35M model on the 2-core CPU.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import timm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import arg_parser, header, setup  # noqa: E402

import matmamba_vision  # noqa: F401,E402  (registers the models)
from matmamba_vision.elastic import count_flops, count_params  # noqa: E402
from matmamba_vision.evaluation.latency import measure_latency  # noqa: E402
from matmamba_vision.evaluation.submodels import dedupe_configs, official_sweep, uniform_configs  # noqa: E402


def spearman(a: list, b: list) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def slower_than_a_bigger_one(rows: list) -> int:
    """How many rows some row with more GFLOPs beats on median ms."""
    return sum(any(o["gflops"] > r["gflops"] and o["median_ms"] < r["median_ms"] for o in rows) for r in rows)


def worst_inversion(rows: list) -> dict | None:
    """The pair where a row is slowest relative to one with more GFLOPs: ``ratio`` of their median ms, and the two
    names (``slower``, ``faster``); None when latency never inverts GFLOPs."""
    pairs = [
        dict(ratio=r["median_ms"] / o["median_ms"], slower=r["name"], faster=o["name"])
        for r in rows
        for o in rows
        if o["gflops"] > r["gflops"] and o["median_ms"] < r["median_ms"]
    ]
    return max(pairs, key=lambda p: p["ratio"], default=None)


def main() -> None:
    ap = arg_parser(__doc__, rounds=10, batch=1)
    ap.add_argument("--model", default="matmamba_vision_35m_patch16_224")
    ap.add_argument("--runtime", default="eager", choices=["eager", "compile", "onnxruntime"])
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--every", type=int, default=1, help="time every N-th sweep configuration (uniform widths always)")
    ap.add_argument("--live-mb", type=float, default=10240, help="as validate.py --latency-live-mb")
    ap.add_argument("--out", default="benchmarks/results/latency_sweep")
    args = ap.parse_args()
    if args.every < 1:
        ap.error(f"--every must be >= 1, got {args.every}")
    setup(args.threads)
    header(f"official sweep timing, {args.model}, {args.runtime}, batch {args.batch}")
    model = timm.create_model(args.model).eval()
    configs = dedupe_configs([*uniform_configs(model, model.matryoshka_levels), *official_sweep(model)[:: args.every]])
    t0 = time.perf_counter()
    _, timings = measure_latency(
        model,
        configs,
        runtime=args.runtime,
        batch=args.batch,
        threads=args.threads,
        repeats=args.rounds,
        warmup=args.warmup,
        live_bytes=int(args.live_mb * 2**20),
    )
    wall = time.perf_counter() - t0
    rows = []
    for c in configs:
        dims = tuple(int(g) for g in c.dims)
        rows.append(
            dict(
                name=c.name,
                dims=list(dims),
                params=count_params(model, list(dims)),
                gflops=count_flops(model, list(dims)) / 1e9,
                **{k: timings[dims][k] for k in ("median_ms", "p90_ms", "memory_mb")},
            )
        )
    ms, gf = [r["median_ms"] for r in rows], [r["gflops"] for r in rows]
    beaten, worst = slower_than_a_bigger_one(rows), worst_inversion(rows)
    rho = spearman(ms, gf)
    print(f"timed {len(rows)} configurations ({args.rounds} rounds each) in {wall:.1f} s (goal: <= 300 s)")
    print(
        f"Spearman(median ms, GFLOPs) = {rho:.3f}; {beaten} of {len(rows)} are slower than a configuration "
        "with more GFLOPs"
        + (f"; the worst, {worst['slower']}, takes {worst['ratio']:.2f}x the ms of {worst['faster']}" if worst else "")
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = dict(
        model=args.model,
        runtime=args.runtime,
        batch=args.batch,
        threads=args.threads,
        rounds=args.rounds,
        every=args.every,
        wall_s=wall,
        spearman_ms_gflops=rho,
        slower_than_a_bigger_one=beaten,
        worst_inversion=worst,
        rows=rows,
    )
    (out / "sweep.json").write_text(json.dumps(summary, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    uni = [r for r in rows if len(set(r["dims"])) == 1]
    ax.scatter(gf, ms, s=12, label="mix'n'match")
    ax.scatter([r["gflops"] for r in uni], [r["median_ms"] for r in uni], c="k", marker="s", label="uniform width")
    ax.set_xlabel("GFLOPs (torch flop counter)")
    ax.set_ylabel(f"median ms ({args.runtime}, batch {args.batch})")
    ax.set_title(f"{args.model}: Spearman {rho:.2f}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "sweep.png", dpi=120)
    print(f"wrote {out / 'sweep.json'} and {out / 'sweep.png'}")


if __name__ == "__main__":
    main()
