"""Layers of MatMamba-Vision: the nested Mamba2 mixer and its gated RMSNorm (their kernels are in ``ops``)."""

from .gated_norm import GatedRMSNorm
from .mixer import MatMamba2Mixer, use_backend

__all__ = ["GatedRMSNorm", "MatMamba2Mixer", "use_backend"]
