"""Run many submodels on one batch, sharing the blocks their per-layer lists have in common.

Blocks are causal in depth: block ``i``'s output depends only on the granularities of blocks ``0..i``. The
configurations are put in a prefix tree of per-layer granularities and walked depth first, so a prefix shared
by several configurations is computed once (the official sweep shares most of its blocks). Each
configuration's output is bit-identical to ``model(images)`` at that granularity: the same operations run
in the same order.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from ..models.matmamba_vision import MatMambaVision

__all__ = ["forward_many"]

_LEAF = "configs"


def _prefix_tree(dims_list: Sequence[Sequence[int]]) -> Dict:
    root: Dict = {}
    for idx, dims in enumerate(dims_list):
        node = root
        for g in dims:
            node = node.setdefault(int(g), {})
        node.setdefault(_LEAF, []).append(idx)
    return root


@torch.no_grad()
def forward_many(
    model: MatMambaVision,
    images: torch.Tensor,
    dims_list: Sequence[Sequence[int]],
    pre_logits: bool = False,
    share_prefix: bool = True,
) -> Iterator[Tuple[int, torch.Tensor]]:
    """Yield ``(index, output)`` for each per-layer list in ``dims_list`` (inference: no autograd graph): logits,
    or the pooled embedding with ``pre_logits=True``. Each list is checked by ``model.resolve_granularity``
    (ValueError if invalid; None = that block's full width).

    ``share_prefix=False`` runs one full forward per configuration (same outputs, more work).
    """
    depth = len(model.layers)
    for i, dims in enumerate(dims_list):
        if len(dims) != depth:
            raise ValueError(f"configuration {i} has {len(dims)} granularities, the model has {depth} blocks")
    dims_list = [[g or blk.mixer.max_granularity for g, blk in zip(model.resolve_granularity(list(dims)), model.layers)]
                 for dims in dims_list]
    head: Callable[[torch.Tensor], torch.Tensor] = lambda feats: model.forward_head(feats, pre_logits=pre_logits)
    previous = model.granularities
    try:
        if not share_prefix:
            for i, dims in enumerate(dims_list):
                model.set_granularity(list(dims))
                yield i, head(model.forward_features(images))
            return
        model._check_input(images)
        tokens = model._pos_embed(model.patch_embed(images))
        # Each entry: (subtree, block index, its input hidden/residual, granularity to run that block at).
        # A block runs only when its entry is popped, so at most one pending input per level stays alive.
        root = _prefix_tree(dims_list)
        stack: List[Tuple[Dict, int, torch.Tensor, Optional[torch.Tensor], int]] = [
            (child, 0, tokens, None, g) for g, child in reversed(list(root.items()))
        ]
        while stack:
            node, level, hidden, residual, g = stack.pop()
            blk = model.layers[level]
            blk.mixer.active_granularity = g  # checked by resolve_granularity above
            hidden, residual = blk(hidden, residual)
            for idx in node.get(_LEAF, []):
                yield idx, head(model.norm_f(hidden + residual))
            stack.extend(
                (child, level + 1, hidden, residual, cg) for cg, child in reversed(list(node.items())) if cg != _LEAF
            )
    finally:
        for blk, g in zip(model.layers, previous):
            blk.mixer.active_granularity = g
