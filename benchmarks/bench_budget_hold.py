"""Issue 29's hold rate: budgets spread over a validate.py --latency result, each exported and re-timed.

For N latency budgets evenly spaced from just above the fastest configuration's median (or p90) to the slowest
one's, ``export.py --from-results RESULTS --max-ms B --max-ms-statistic median|p90`` picks the most accurate
configuration within B, exports it to ONNX and re-times the file in ONNX Runtime (the sidecar's
``budget_check``, on the same statistic). Results timed in another runtime are refused: no exported file runs in
it. Reports per budget the choice, its top-1, the re-timed figure, whether it met B, and the best uniform-width
configuration within B (from the same results); then, per statistic, how many budgets held and how many choices
were at least as accurate as that uniform width.

    python benchmarks/bench_budget_hold.py --results RUN/validate.json [--budgets 10] [--statistics median p90]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from matmamba_vision.selection import LATENCY_STATISTICS  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", required=True, help="validate.py --latency's validate.json")
    ap.add_argument("--budgets", type=int, default=10)
    ap.add_argument(
        "--statistics",
        nargs="+",
        default=sorted(LATENCY_STATISTICS),
        choices=sorted(LATENCY_STATISTICS),
        help="the latency the budgets bound (export.py --max-ms-statistic), each over its own spread of budgets",
    )
    ap.add_argument("--out", default="", help="folder for the exported files (default: a temporary one)")
    args = ap.parse_args()
    results = json.loads(Path(args.results).read_text())
    rows = [r for r in results["rows"] if r.get("latency_ms") is not None]
    if not rows:
        raise SystemExit(f"--results {args.results}: no latency_ms column (run validate.py with --latency)")
    runtime = (results.get("latency") or {}).get("runtime")
    if runtime != "onnxruntime":
        raise SystemExit(
            f"--results {args.results}: timed in {runtime}; the exported file must run in the runtime the results "
            "were timed in, and only ONNX Runtime results have one (an ExportedProgram runs its graph op by op, "
            "not as the eager model): use validate.py --latency-runtime onnxruntime"
        )
    uniform = [r for r in rows if len(set(r["dims"])) == 1]
    out = Path(args.out or tempfile.mkdtemp(prefix="budget-hold-"))
    out.mkdir(parents=True, exist_ok=True)
    for stat in args.statistics:
        col, key = LATENCY_STATISTICS[stat]
        ms = [r[col] for r in rows]
        held = at_least_uniform = 0
        budgets = np.linspace(min(ms) * 1.02, max(ms), args.budgets)
        for i, budget in enumerate(budgets):
            path = out / f"budget{i}-{stat}.onnx"
            cmd = [sys.executable, str(ROOT / "export.py"), "--from-results", args.results, "--format", "onnx"]
            cmd += ["--max-ms", f"{budget:.6g}", "--max-ms-statistic", stat, "--output", str(path), "--force"]
            subprocess.run(cmd, check=True, capture_output=True, text=True)
            side = json.loads(Path(f"{path}.json").read_text())
            chosen, check = side["selection"], side["budget_check"]
            best_uniform = max((r["top1"] for r in uniform if r[col] <= budget), default=None)
            held += bool(check["meets_budget"])
            at_least_uniform += best_uniform is None or chosen["measured"]["top1"] >= best_uniform
            print(
                f"{stat} budget {budget:.4g} ms: {chosen['name']} top-1 {chosen['measured']['top1']:.2f}, re-timed "
                f"{stat} {check[key]:.4g} ms ({'met' if check['meets_budget'] else 'MISSED'}); best uniform within "
                f"it: {'none' if best_uniform is None else f'{best_uniform:.2f}'}",
                flush=True,
            )
        print(
            f"{stat}: held {held} of {len(budgets)}; at least as accurate as the best uniform width: "
            f"{at_least_uniform} (ONNX Runtime, the exported file re-timed)",
            flush=True,
        )


if __name__ == "__main__":
    main()
