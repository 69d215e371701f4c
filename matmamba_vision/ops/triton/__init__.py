"""The project's Triton kernels for the mixer (``ssd_backend="triton"``). Their plain-torch references are the
ops package's: :func:`..ssd_ref.ssd_scan_ref`, :func:`..causal_conv.causal_conv1d_ref`,
:func:`..gated_norm.gated_rms_norm_ref`.

Importing this package needs ``triton``; :func:`triton_available` tells whether it imports.
"""

from __future__ import annotations

import functools

__all__ = ["triton_available"]


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """Whether ``triton`` (shipped with torch's CUDA wheels) imports here."""
    try:
        import triton
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a broken install raising at import
        return False
    return True
