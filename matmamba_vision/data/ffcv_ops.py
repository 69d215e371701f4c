"""Our own ffcv ``Operation`` for the official RandAugment (PyPI's ffcv 1.0.2 has none): compiled with numba
in ffcv's pipeline, on the uint8 (H, W, 3) images after the decoder and flip, as the official run had it.
The kernels are those of :mod:`matmamba_vision.data.official_randaugment`."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Optional, Tuple

import numpy as np
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from ffcv.pipeline.operation import Operation
from ffcv.pipeline.state import State

from .official_randaugment import OP_NAMES, SIGNED, apply_op, op_magnitudes

__all__ = ["OfficialRandAugmentOp"]


class OfficialRandAugmentOp(Operation):
    """``num_ops`` ops per image at bin ``magnitude`` of 31, drawn with numba's ``np.random`` inside the
    compiled loop (op uniform over 15, then the sign); ``fixed`` corrects TranslateY and Equalize."""

    def __init__(self, num_ops: int = 2, magnitude: int = 9, fixed: bool = False):
        super().__init__()
        if num_ops < 1:
            raise ValueError(f"num_ops must be at least 1, got {num_ops}")
        self.num_ops, self.magnitude, self.fixed = num_ops, magnitude, bool(fixed)
        self.magnitudes = op_magnitudes(magnitude)

    def generate_code(self) -> Callable:
        my_range = Compiler.get_iterator()
        mags, signed, num_ops, n_ops = self.magnitudes, SIGNED, self.num_ops, len(OP_NAMES)
        # read from an array, not a frozen constant: a literal bool would compile apply_op a second time
        fixed_flag = np.array([self.fixed])
        apply = apply_op

        def randaugment(images, mem):
            dst, tmp = mem
            for i in my_range(images.shape[0]):
                src = images[i]
                for n in range(num_ops):
                    idx = np.random.randint(0, n_ops)
                    mag = mags[idx]
                    if np.random.random() < 0.5 and signed[idx]:
                        mag = -mag
                    out = dst[i] if (num_ops - n) % 2 == 1 else tmp[i]  # the last op writes dst
                    apply(src, out, idx, mag, fixed_flag[0])
                    src = out
            return dst

        randaugment.is_parallel = True
        return randaugment

    def declare_state_and_memory(self, previous_state: State) -> Tuple[State, Optional[AllocationQuery]]:
        if not previous_state.jit_mode or previous_state.dtype != np.uint8 or previous_state.shape[-1] != 3:
            raise ValueError(
                "OfficialRandAugmentOp goes after the image decoder (and flip), on uint8 RGB arrays; "
                f"got shape {previous_state.shape}, dtype {previous_state.dtype}"
            )
        query = AllocationQuery(previous_state.shape, np.dtype("uint8"))
        return replace(previous_state, jit_mode=True), (query, query)
