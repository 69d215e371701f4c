"""Where the project's Triton kernels may run, and how they are launched.

On CUDA tensors a kernel is compiled and launched on the tensors' device. On CPU tensors it runs only under
Triton's interpreter (``TRITON_INTERPRET=1`` set before ``triton`` is imported), which is how the test suite
checks the kernels on a machine without a GPU.
"""

from __future__ import annotations

import os
from contextlib import nullcontext

import torch

__all__ = ["interpreter_active", "check_device", "launch", "next_pow2"]


def interpreter_active() -> bool:
    """Whether Triton's interpreter runs kernels (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_device(name: str, *tensors: torch.Tensor) -> None:
    """Raise ValueError unless all ``tensors`` are on one CUDA device, or on the CPU under the interpreter."""
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"{name}: all inputs must be on one device, got {sorted(map(str, devices))}")
    device = devices.pop()
    if device.type == "cuda" or (device.type == "cpu" and interpreter_active()):
        return
    raise ValueError(
        f"{name}: Triton kernels need CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), got tensors on {device}"
    )


def launch(kernel, grid, *args, **kwargs) -> None:
    """Launch ``kernel`` over ``grid``; on CUDA inside the first tensor argument's device (no torch.cuda call
    for CPU tensors, which the interpreter runs)."""
    device = next(a.device for a in args if isinstance(a, torch.Tensor))
    with torch.cuda.device(device) if device.type == "cuda" else nullcontext():
        kernel[grid](*args, **kwargs)


def next_pow2(n: int, floor: int = 16) -> int:
    """The smallest power of two >= ``n`` and >= ``floor`` (tl.dot needs tile sides of at least 16)."""
    p = floor
    while p < n:
        p *= 2
    return p
