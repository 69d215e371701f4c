"""Layers of MatMamba-Vision: the nested Mamba2 mixer and its gated RMSNorm."""
from .gated_norm import GatedRMSNorm, gated_rms_norm
from .mixer import MatMamba2Mixer, causal_depthwise_conv1d

__all__ = ["GatedRMSNorm", "gated_rms_norm", "MatMamba2Mixer", "causal_depthwise_conv1d"]
