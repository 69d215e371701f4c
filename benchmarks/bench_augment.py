"""Augmentation throughput on one core: the official RandAugment as our ffcv Operation (compiled, on uint8
arrays), the same on the folder path (PIL transform), and timm's rand-m9-n2 (PIL), on 224 x 224 RGB images.

    python benchmarks/bench_augment.py [--rounds 5] [--batch 64]

Images per second per core, median (and best) of ``--rounds`` interleaved rounds of one batch each, after a
warm-up call (numba's compilation is not timed). The images are smooth random colour fields (the ops' cost does
not depend on the content). numba and torch run one thread.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

from benchmarks._common import arg_parser, cpu_name, setup  # noqa: E402


def images(n: int, size: int = 224) -> np.ndarray:
    rng = np.random.default_rng(0)
    low = rng.integers(0, 256, (n, 8, 8, 3)).astype(np.float32)
    up = np.repeat(np.repeat(low, size // 8, 1), size // 8, 2)  # blocky fields, then a little noise
    return np.clip(up + rng.normal(0, 12, up.shape), 0, 255).astype(np.uint8)


def main() -> None:
    args = arg_parser(__doc__, rounds=5, batch=64).parse_args()
    setup(1)
    from PIL import Image
    from timm.data.auto_augment import rand_augment_transform

    from matmamba_vision.data.official_randaugment import OfficialRandAugment

    batch = images(args.batch)
    pils = [Image.fromarray(a) for a in batch]
    ours_pil = OfficialRandAugment()
    timm_ra = rand_augment_transform("rand-m9-n2", {"translate_const": 100, "img_mean": (124, 116, 104)})
    cases = {
        "official RA, PIL (folder path)": lambda: [ours_pil(im) for im in pils],
        "timm rand-m9-n2, PIL (folder path)": lambda: [timm_ra(im) for im in pils],
    }
    try:
        from ffcv.pipeline.compiler import Compiler

        from matmamba_vision.data.ffcv_ops import OfficialRandAugmentOp

        code = Compiler.compile(OfficialRandAugmentOp().generate_code())
        mem = (np.empty_like(batch), np.empty_like(batch))
        cases["official RA, ffcv Operation (compiled)"] = lambda: code(batch, mem)
    except ImportError as e:
        print(f"ffcv not installed ({e}): the ffcv case is left out")
    random.seed(0)
    for fn in cases.values():  # compile / warm up
        fn()
    times = {k: [] for k in cases}
    for _ in range(args.rounds):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    print(f"CPU: {cpu_name()}; 1 thread; {args.batch} images of 224 x 224 per round, {args.rounds} rounds")
    base = statistics.median(times["timm rand-m9-n2, PIL (folder path)"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:42s} {args.batch / med:8.1f} img/s (best {args.batch / min(ts):8.1f}), {base / med:5.2f}x timm's")


if __name__ == "__main__":
    main()
