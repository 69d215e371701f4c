"""Official MatMamba-Vision checkpoints -> this package's nested-prefix layout."""

from __future__ import annotations

import re
from typing import Dict

import torch

__all__ = ["convert_official_state_dict", "is_official_layout", "unwrap_state_dict"]

_IN_PROJ = re.compile(r"^(layers\.\d+\.mixer\.)in_proj\.weight$")


def unwrap_state_dict(checkpoint: Dict) -> Dict[str, torch.Tensor]:
    """The state dict inside a checkpoint (``state_dict``/``model``/``state_dict_ema`` wrappers, DDP prefix)."""
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in checkpoint.items()}


def is_official_layout(state_dict: Dict[str, torch.Tensor]) -> bool:
    """True when the mixers are stored as in the official code (one ``in_proj``, ``conv1d`` channels [x, B, C])."""
    return any(_IN_PROJ.match(k) for k in state_dict)


def convert_official_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Map an official checkpoint's state dict onto :class:`MatMambaVision`'s parameter layout.

    The official ``in_proj.weight`` rows ``[z, x, B, C, dt]`` become ``xbc_proj.weight`` (``[B, C, x]``) and
    ``zdt_proj.weight`` (per head: its ``z`` rows, then its ``dt`` row); ``conv1d`` (channels ``[x, B, C]``,
    shape (c, 1, k)) becomes ``conv`` (channels ``[B, C, x]``, shape (c, k)). Everything else is unchanged.
    Sizes are read off the tensors, so any width, d_state, headdim or ngroups converts.
    """
    state_dict = unwrap_state_dict(state_dict)
    if not is_official_layout(state_dict):
        return dict(state_dict)
    out = {k: v for k, v in state_dict.items() if ".mixer.in_proj." not in k and ".mixer.conv1d." not in k}
    for key, w in state_dict.items():
        m = _IN_PROJ.match(key)
        if not m:
            continue
        prefix = m.group(1)
        d_inner = state_dict[prefix + "norm.weight"].numel()
        nheads = state_dict[prefix + "A_log"].numel()
        headdim = d_inner // nheads
        conv_w = state_dict[prefix + "conv1d.weight"]
        conv_b = state_dict[prefix + "conv1d.bias"]
        n_bc = conv_w.shape[0] - d_inner
        if w.shape[0] != 2 * d_inner + n_bc + nheads:
            raise ValueError(
                f"{key}: {w.shape[0]} rows, expected 2*d_inner + 2*ngroups*d_state + nheads = "
                f"{2 * d_inner + n_bc + nheads} for d_inner={d_inner}, nheads={nheads}"
            )
        z, x, bc, dt = torch.split(w, [d_inner, d_inner, n_bc, nheads], dim=0)
        out[prefix + "xbc_proj.weight"] = torch.cat([bc, x], dim=0)
        zdt = torch.cat([z.reshape(nheads, headdim, -1), dt.reshape(nheads, 1, -1)], dim=1)
        out[prefix + "zdt_proj.weight"] = zdt.reshape(nheads * (headdim + 1), -1)
        conv_w = conv_w.reshape(conv_w.shape[0], -1)
        out[prefix + "conv.weight"] = torch.cat([conv_w[d_inner:], conv_w[:d_inner]], dim=0)
        out[prefix + "conv.bias"] = torch.cat([conv_b[d_inner:], conv_b[:d_inner]], dim=0)
    return out
