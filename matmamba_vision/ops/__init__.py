"""Kernels, one plain-torch reference per op (``*_ref``: every route of the op, the Triton kernels' too, is
tested against it), and the choice of which runs (:mod:`.dispatch`, entry point :func:`ssd_scan`).

- :mod:`.ssd_ref`: the SSD recurrence (float64 oracle) and its exact chunked form (``ssd_scan_ref``, with
  ``D``, chunk length and initial/final states);
- :mod:`.ssd_fast`: the factorised SSD for CPUs; :mod:`.ssd_mamba_ssm`: mamba_ssm's Triton SSD (optional);
- :mod:`.causal_conv`: the causal depthwise conv (+ SiLU): reference, own backward, oneDNN fusion;
- :mod:`.gated_norm`: the gated RMSNorm, and fused with the output projection;
- :mod:`.triton`: the project's Triton kernels for the whole mixer (``ssd_backend='triton'``);
- :mod:`.dispatch`: the backends (``'torch'``, ``'reference'``, ``'triton'``, ``'mamba_ssm'``) and each call's route.
"""

from .causal_conv import causal_conv1d_ref, causal_depthwise_conv1d
from .dispatch import BACKENDS, SSD_BACKENDS, Backend, check_ssd_backend, select_ssd_backend, ssd_scan
from .gated_norm import gated_rms_norm_linear, gated_rms_norm_ref, rms_norm_linear
from .ssd_fast import choose_chunk_len
from .ssd_mamba_ssm import mamba_ssm_available
from .ssd_ref import ssd_recurrence_ref, ssd_scan_ref

__all__ = [
    "BACKENDS",
    "SSD_BACKENDS",
    "Backend",
    "check_ssd_backend",
    "select_ssd_backend",
    "ssd_scan",
    "ssd_scan_ref",
    "ssd_recurrence_ref",
    "choose_chunk_len",
    "mamba_ssm_available",
    "causal_conv1d_ref",
    "causal_depthwise_conv1d",
    "gated_rms_norm_ref",
    "gated_rms_norm_linear",
    "rms_norm_linear",
]
