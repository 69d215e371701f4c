"""Evaluate many submodel configurations in one data pass: each batch is decoded once, every submodel runs on it."""
from __future__ import annotations

import contextlib
import time
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import torch
from tqdm.auto import tqdm

from ..elastic import count_flops, count_params
from ..models.matmamba_vision import MatMambaVision
from .accuracy import AccuracyMeter
from .configs import SubmodelConfig

__all__ = ["evaluate_configs", "config_costs", "autocast_context", "iterate_batches"]


def autocast_context(device: torch.device, amp_dtype: Optional[torch.dtype]):
    """``torch.autocast`` for ``amp_dtype`` on ``device``'s type, or a no-op when ``amp_dtype`` is None."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=amp_dtype)


def iterate_batches(
    loader: Iterable, max_samples: Optional[int] = None, desc: str = "eval", log_freq: int = 0
) -> Iterable[Tuple[torch.Tensor, torch.Tensor]]:
    """Batches of ``loader`` with a progress bar, cut to ``max_samples`` images in all (None = every one)."""
    if max_samples is not None and max_samples <= 0:
        raise ValueError(f"max_samples must be a positive number of images, got {max_samples}")
    total = getattr(loader, "num_samples", None)
    if total is not None and max_samples is not None:
        total = min(total, max_samples)
    seen = 0
    bar = tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, mininterval=1.0)
    for step, (images, targets) in enumerate(loader):
        if max_samples is not None:
            images, targets = images[:max_samples - seen], targets[:max_samples - seen]
        seen += targets.shape[0]
        bar.update(targets.shape[0])
        if log_freq and step % log_freq == 0:
            bar.set_postfix(batches=step + 1)
        yield images, targets
        if max_samples is not None and seen >= max_samples:
            break  # stop before decoding another batch
    bar.close()


@torch.no_grad()
def evaluate_configs(
    model: MatMambaVision,
    loader: Iterable,
    configs: Sequence[SubmodelConfig],
    device: str = "cpu",
    amp_dtype: Optional[torch.dtype] = None,
    max_samples: Optional[int] = None,
    share_prefix: bool = True,
    log_freq: int = 0,
    desc: str = "eval",
) -> List[dict]:
    """Top-1, top-5 and loss of every configuration over ``loader`` (an iterable of (images, targets)).

    Returns one dict per configuration, in order: name, kind, trained, dims, top1, top5, loss, samples.
    Raises ValueError when no configuration is given or the loader yields no image.
    """
    if not configs:
        raise ValueError("configs: nothing to evaluate (give at least one granularity or mix'n'match list)")
    device = torch.device(device)
    model.eval().to(device)
    meters = [AccuracyMeter() for _ in configs]
    dims_list = [c.dims for c in configs]
    start = time.perf_counter()
    for images, targets in iterate_batches(loader, max_samples, desc, log_freq):
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with autocast_context(device, amp_dtype):
            for idx, logits in model.forward_many(images, dims_list, share_prefix=share_prefix):
                meters[idx].update(logits, targets)
    seconds = time.perf_counter() - start
    if meters[0].count == 0:
        raise ValueError("the evaluation split is empty: the loader yielded no images")
    rows = []
    for cfg, meter in zip(configs, meters):
        rows.append(dict(name=cfg.name, kind=cfg.kind, trained=cfg.trained, dims=list(cfg.dims), **meter.result()))
    for r in rows:
        r["eval_seconds"] = seconds
    return rows


def config_costs(model: MatMambaVision, config: SubmodelConfig, img_size: Optional[Union[int, Tuple[int, int]]] = None) -> dict:
    """Parameters (total, non-embedding) and GFLOPs of one image's forward for ``config``."""
    dims = list(config.dims)
    return dict(
        params=count_params(model, dims),
        params_non_embedding=count_params(model, dims, exclude_embedding=True),
        gflops=count_flops(model, dims, img_size=img_size) / 1e9,
    )
