"""Kernels: the SSD scan and its backends."""
from .ssd import SSD_BACKENDS, check_ssd_backend, mamba_ssm_available, ssd_scan, ssd_scan_torch

__all__ = ["SSD_BACKENDS", "check_ssd_backend", "mamba_ssm_available", "ssd_scan", "ssd_scan_torch"]
