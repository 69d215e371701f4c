"""Which kernel runs: the backends, and the one place where each call's route is chosen.

A backend is a set of kernels (:class:`Backend`); a mixer's ``ssd_backend`` names one, and
:func:`select_ssd_backend` turns that name into the backend that runs on the given tensors (``'auto'``: the
first of ``AUTO_ORDER`` that runs on them). Registered:

- ``'torch'``: in eager on the CPU, the fast CPU routes: the factorised SSD (:mod:`.ssd_fast`), the conv with
  its own backward, and oneDNN's conv with SiLU fused for CPU float32 inference. Under ``torch.compile``, and
  on CUDA tensors, the reference SSD and the unfused conv (no data-dependent branches: the model compiles to
  one graph, and no call waits on the GPU; the fast path's safety checks read device values on the host).
- ``'reference'``: routes whose work depends on the shapes only: the exact chunked SSD
  (:func:`.ssd_ref.ssd_scan_ref`) and the unfused conv then SiLU. :func:`matmamba_vision.count_flops` runs
  the model on it (:func:`matmamba_vision.layers.use_backend`), so a configuration has one FLOP figure.
- ``'triton'``: the project's Triton kernels (:mod:`.triton`: conv with SiLU, SSD, gated norm; CUDA tensors,
  or CPU tensors under ``TRITON_INTERPRET=1``; imported on first use). ``'auto'`` picks it on CUDA.
- ``'mamba_ssm'``: mamba_ssm's Triton SSD kernel (CUDA tensors; imported on first use), only when named; the
  conv as torch's.

Adding a backend is one entry in ``BACKENDS`` (the kernels it leaves out are the torch backend's), plus its
name in ``AUTO_ORDER`` where ``'auto'`` should pick it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F

from .causal_conv import causal_conv1d_silu_onednn, causal_depthwise_conv1d, onednn_conv_silu_available
from .ssd_fast import choose_chunk_len, ssd_scan_fast
from .ssd_mamba_ssm import MAMBA_SSM_NEEDS, mamba_ssm_runs_on, ssd_scan_mamba_ssm
from .ssd_ref import ssd_scan_ref

__all__ = [
    "Backend",
    "BACKENDS",
    "AUTO_ORDER",
    "SSD_BACKENDS",
    "check_ssd_backend",
    "select_ssd_backend",
    "ssd_scan",
]


def _reference_ssd(x, dt, A, B, C, chunk_size=256, initial_state=None, return_final_state=False):
    """:func:`.ssd_ref.ssd_scan_ref` with the chunk length the fast path would consider."""
    q = choose_chunk_len(x.shape[1], B.shape[-1], chunk_size)
    return ssd_scan_ref(x, dt, A, B, C, q, initial_state, return_final_state)


def _torch_ssd(x, dt, A, B, C, chunk_size=256, initial_state=None, return_final_state=False):
    """The fast path in eager on the CPU; compiled, the reference (the compiler fuses its per-head decay work);
    on CUDA the reference too (the fast path's data-dependent checks would synchronise with the GPU), and on the
    meta device (shapes only: those checks need values)."""
    if torch.compiler.is_compiling() or x.is_cuda or x.is_meta:
        return _reference_ssd(x, dt, A, B, C, chunk_size, initial_state, return_final_state)
    return ssd_scan_fast(x, dt, A, B, C, chunk_size, initial_state, return_final_state)


def _unfused_conv1d_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The conv (its own backward under CPU autograd), then SiLU: the counter sees the conv, and counts no
    dense backward for it."""
    return F.silu(causal_depthwise_conv1d(x, weight, bias))


def _torch_conv1d_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """CPU float32 inference: oneDNN's conv with SiLU fused where the build has it, else SiLU in place.
    Otherwise (autograd, compiled, other dtypes or devices) the unfused conv."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling() or x.dtype != torch.float32 or x.device.type != "cpu":
        return _unfused_conv1d_silu(x, weight, bias)
    if onednn_conv_silu_available():
        return causal_conv1d_silu_onednn(x, weight, bias)
    return F.silu(causal_depthwise_conv1d(x, weight, bias), inplace=True)


def _anywhere(x: torch.Tensor) -> bool:
    """Runs on any tensor."""
    return True


def _triton_runs_on(x: torch.Tensor) -> bool:
    from .triton import triton_available
    from .triton._launch import interpreter_active

    return (x.is_cuda or interpreter_active()) and triton_available()


def _triton_ssd(x, dt, A, B, C, chunk_size=256, initial_state=None, return_final_state=False):
    """:func:`.triton.ssd.ssd` with chunks of a power of two from 16 up to ``chunk_size`` (at most the kernels'
    default)."""
    from .triton.ssd import DEFAULT_CHUNK, ssd

    chunk = 16
    while chunk < min(chunk_size, DEFAULT_CHUNK):
        chunk *= 2
    return ssd(x, dt, A, B, C, initial_state=initial_state, return_final_state=return_final_state, chunk_size=chunk)


def _triton_conv1d_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    from .triton.causal_conv import causal_conv1d

    return causal_conv1d(x, weight, bias, silu=True)


def _triton_gated_rms_norm(y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    from .triton.gated_norm import gated_rms_norm

    return gated_rms_norm(y, z, weight, eps)


@dataclass(frozen=True)
class Backend:
    """The kernels of one backend.

    ``ssd(x, dt, A, B, C, chunk_size, initial_state, return_final_state)``: the SSD scan, arguments and
    result as :func:`.ssd_ref.ssd_scan_ref`'s. ``conv1d_silu(x, weight, bias)``: ``silu`` of the causal
    depthwise conv, as :func:`.causal_conv.causal_conv1d_ref`. ``gated_rms_norm(y, z, weight, eps)``:
    as :func:`.gated_norm.gated_rms_norm_ref`, followed by the output projection; None: the torch tail (the
    gate's SiLU over the whole projection buffer and the norm folded into the output projection,
    :func:`.gated_norm.rms_norm_linear`). ``runs_on(x)``: whether it runs on tensors like ``x``; ``needs``:
    what it needs where it does not (the error's text).
    """

    ssd: Callable = _torch_ssd
    conv1d_silu: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = _torch_conv1d_silu
    gated_rms_norm: Optional[Callable[..., torch.Tensor]] = None
    runs_on: Callable[[torch.Tensor], bool] = _anywhere
    needs: str = ""


BACKENDS: Dict[str, Backend] = {
    "torch": Backend(),
    "mamba_ssm": Backend(ssd=ssd_scan_mamba_ssm, runs_on=mamba_ssm_runs_on, needs=MAMBA_SSM_NEEDS),
    "reference": Backend(ssd=_reference_ssd, conv1d_silu=_unfused_conv1d_silu),
    "triton": Backend(
        ssd=_triton_ssd,
        conv1d_silu=_triton_conv1d_silu,
        gated_rms_norm=_triton_gated_rms_norm,
        runs_on=_triton_runs_on,
        needs="CUDA tensors (or TRITON_INTERPRET=1) and the triton package",
    ),
}
AUTO_ORDER = ("triton", "torch")  # 'auto' on CUDA takes the first that runs there; mamba_ssm only by name
SSD_BACKENDS = ("auto", *BACKENDS)  # the names registered at import


def check_ssd_backend(name: str) -> str:
    """Validate a backend name (``'auto'`` or a key of ``BACKENDS``); return it."""
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"ssd_backend must be one of {('auto', *BACKENDS)}, got {name!r}")
    return name


def select_ssd_backend(name: str, x: torch.Tensor) -> Backend:
    """The backend that runs for ``ssd_backend=name`` on tensors like ``x``; RuntimeError where the named
    backend cannot run on them."""
    if name == "auto":  # on CUDA the first of AUTO_ORDER that runs; elsewhere the torch backend
        for candidate in AUTO_ORDER if x.is_cuda else ():
            if BACKENDS[candidate].runs_on(x):
                return BACKENDS[candidate]
        return BACKENDS["torch"]
    backend = BACKENDS[check_ssd_backend(name)]
    if not backend.runs_on(x):
        raise RuntimeError(f"ssd_backend={name!r} needs {backend.needs}; use ssd_backend='torch' or 'auto'")
    return backend


def ssd_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int = 256,
    backend: str = "auto",
    initial_state: Optional[torch.Tensor] = None,
    return_final_state: bool = False,
):
    """The SSD scan on the chosen backend (arguments and result as in :func:`.ssd_ref.ssd_scan_ref`): the one
    public entry point.

    ``chunk_size`` is the most tokens per chunk (the torch backend's fast path picks its own length below it,
    :func:`.ssd_fast.choose_chunk_len`; the Triton kernels a power of two). ``auto`` takes the project's Triton
    kernels for CUDA tensors when triton imports, else the torch path. The reference itself, with chunks of
    exactly ``chunk_size`` tokens, is :func:`.ssd_ref.ssd_scan_ref`.
    """
    kernel = select_ssd_backend(check_ssd_backend(backend), x).ssd
    return kernel(x, dt, A, B, C, chunk_size, initial_state, return_final_state)
