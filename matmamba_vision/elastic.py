"""Elastic inference: standalone submodels, and parameter and FLOP counts at any granularity."""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch.utils.flop_counter import FlopCounterMode

from .layers import use_backend
from .models.matmamba_vision import Granularity, MatMambaVision

__all__ = ["extract_submodel", "count_params", "count_flops", "EMBEDDING_PREFIXES"]

EMBEDDING_PREFIXES = ("patch_embed.", "pos_embed", "cls_token")


def _active_state_dict(model: MatMambaVision, granularity: Granularity) -> dict:
    """The model's weights active at ``granularity``, as views, keyed as a submodel's state dict."""
    dims = model.resolve_granularity(granularity)
    state = {k: v for k, v in model.state_dict().items() if ".mixer." not in k}
    for i, (blk, g) in enumerate(zip(model.layers, dims)):
        for name, t in blk.mixer.sliced_parameters(g).items():
            state[f"layers.{i}.mixer.{name}"] = t.detach()
    return state


def extract_submodel(model: MatMambaVision, granularity: Granularity) -> MatMambaVision:
    """A standalone model holding only the weights active at ``granularity`` (int or per-layer list).

    Its outputs equal the nested model's at that granularity; it is itself elastic (smaller granularities
    remain nested inside it), and its ``model_args`` (``mixer_dims`` per block) rebuild it.
    """
    dims = model.resolve_granularity(granularity)
    args = dict(model.model_args)
    args["mixer_dims"] = [g or blk.mixer.max_granularity for g, blk in zip(dims, model.layers)]
    p = next(model.parameters())
    sub = MatMambaVision(**args, device=p.device, dtype=p.dtype)
    if isinstance(model.norm_f, torch.nn.Identity):  # pruned by prune_intermediate_layers(prune_norm=True)
        sub.norm_f = torch.nn.Identity()
    sub.load_state_dict({k: v.clone() for k, v in _active_state_dict(model, dims).items()})
    sub.pretrained_cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    sub._traits = dict(getattr(model, "_traits", {}))
    sub.set_grad_checkpointing(model.grad_checkpointing)
    sub.train(model.training)
    return sub


def count_params(model: MatMambaVision, granularity: Granularity = None, exclude_embedding: bool = False) -> int:
    """Parameters active at ``granularity``; ``exclude_embedding`` drops patch/position embeddings and [CLS]."""
    state = _active_state_dict(model, granularity)
    names = {n for n, _ in model.named_parameters()} | {k for k in state if ".mixer." in k}
    return sum(
        t.numel()
        for k, t in state.items()
        if k in names and not (exclude_embedding and k.startswith(EMBEDDING_PREFIXES))
    )


@torch.no_grad()
def count_flops(
    model: MatMambaVision, granularity: Granularity = None, img_size: Optional[Union[int, Tuple[int, int]]] = None
) -> int:
    """FLOPs (2 per multiply-add) of one image's forward at ``granularity``, by torch's flop counter.

    Counts matrix products and convolutions (the patch embedding, projections, the depthwise conv, the SSD's
    products in its exact chunked form, head); elementwise work is not counted. The forward runs the
    ``'reference'`` backend (:func:`~matmamba_vision.layers.use_backend`), so the figure depends on the
    configuration and the input size only (the fast paths' work varies with the data, and oneDNN's fused conv
    is invisible to the counter). ``img_size`` (int or (H, W)) defaults to the model's; other sizes need
    ``dynamic_img_size=True``.
    """
    size = img_size or model.patch_embed.img_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    p = next(model.parameters())
    x = torch.zeros(1, model.in_chans, *size, device=p.device, dtype=p.dtype)
    was_training = model.training
    model.eval()
    try:
        with model.granularity(granularity), use_backend(model, "reference"):
            with FlopCounterMode(display=False) as counter:
                model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
