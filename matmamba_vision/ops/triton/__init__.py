"""The project's Triton kernels for the mixer (``ssd_backend="triton"``). Their plain-torch references are the
ops package's: :func:`..ssd_ref.ssd_scan_ref`, :func:`..causal_conv.causal_conv1d_ref`,
:func:`..gated_norm.gated_rms_norm_ref`.

Importing this package needs ``triton``; :func:`triton_available` tells whether it imports.
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["triton_available"]

_AVAILABLE: Optional[bool] = None  # triton_available's answer, once asked


@torch.compiler.assume_constant_result  # compiled code takes the answer as a constant, traces no import
def triton_available() -> bool:
    """Whether ``triton`` (shipped with torch's CUDA wheels) imports here (tried once)."""
    global _AVAILABLE
    if _AVAILABLE is None:
        try:
            import triton
            import triton.language  # noqa: F401

            _AVAILABLE = True
        except Exception:  # ImportError, or a broken install raising at import
            _AVAILABLE = False
    return _AVAILABLE
