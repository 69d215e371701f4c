"""Classification of many submodels in one data pass (each batch decoded once, every submodel run on it):
top-1, top-5 and loss, parameters and GFLOPs, Pareto membership, and the result files and tables."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from tqdm.auto import tqdm

from ..accuracy import accuracy_pass
from ..elastic import count_flops, count_params
from ..models.matmamba_vision import MatMambaVision
from .report import format_table, pareto_front, plot_tradeoff, write_csv, write_json
from .submodels import SubmodelConfig

__all__ = [
    "evaluate_configs",
    "config_costs",
    "iterate_batches",
    "validate_configs",
    "write_validation_outputs",
    "validation_tables",
    "CSV_COLUMNS",
]


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
            images, targets = images[: max_samples - seen], targets[: max_samples - seen]
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
    start = time.perf_counter()
    batches = iterate_batches(loader, max_samples, desc, log_freq)
    meters = accuracy_pass(model, batches, [c.dims for c in configs], device, amp_dtype, share_prefix)
    seconds = time.perf_counter() - start
    if meters[0].count == 0:
        raise ValueError("the evaluation split is empty: the loader yielded no images")
    rows = []
    for cfg, meter in zip(configs, meters):
        rows.append(dict(name=cfg.name, kind=cfg.kind, trained=cfg.trained, dims=list(cfg.dims), **meter.result()))
    for r in rows:
        r["eval_seconds"] = seconds
    return rows


def config_costs(
    model: MatMambaVision, config: SubmodelConfig, img_size: Optional[Union[int, Tuple[int, int]]] = None
) -> dict:
    """Parameters (total, non-embedding) and GFLOPs of one image's forward for ``config``."""
    dims = list(config.dims)
    return dict(
        params=count_params(model, dims),
        params_non_embedding=count_params(model, dims, exclude_embedding=True),
        gflops=count_flops(model, dims, img_size=img_size) / 1e9,
    )


CSV_COLUMNS = (
    "name",
    "kind",
    "trained",
    "dims",
    "params",
    "params_non_embedding",
    "gflops",
    "top1",
    "top5",
    "loss",
    "samples",
    "pareto_params",
    "pareto_gflops",
)


def validate_configs(
    model: MatMambaVision,
    loader: Iterable,
    configs: Sequence[SubmodelConfig],
    img_size: Optional[Union[int, Tuple[int, int]]] = None,
    device: str = "cpu",
    amp_dtype: Optional[torch.dtype] = None,
    max_samples: Optional[int] = None,
    share_prefix: bool = True,
    log_freq: int = 0,
) -> List[Dict[str, Any]]:
    """One row per configuration: accuracy (one data pass for all), parameters, GFLOPs, Pareto flags."""
    rows = evaluate_configs(
        model,
        loader,
        configs,
        device=device,
        amp_dtype=amp_dtype,
        max_samples=max_samples,
        share_prefix=share_prefix,
        log_freq=log_freq,
        desc="validate",
    )
    for cfg, row in zip(tqdm(configs, desc="params/FLOPs", unit="cfg", disable=len(configs) < 8), rows):
        row.update(config_costs(model, cfg, img_size))
    for key in ("params", "gflops"):
        front = set(
            pareto_front(
                [r["params_non_embedding" if key == "params" else key] for r in rows], [r["top1"] for r in rows]
            )
        )
        for i, r in enumerate(rows):
            r[f"pareto_{key}"] = i in front
    return rows


def write_validation_outputs(
    rows: Sequence[Dict[str, Any]],
    out_dir: os.PathLike,
    meta: Dict[str, Any],
    stem: str = "validate",
    title: str = "",
    extra_columns: Sequence[str] = (),
    latency: Optional[Dict[str, Any]] = None,
) -> Dict[str, Path]:
    """``<stem>.csv`` (``CSV_COLUMNS`` + ``extra_columns``), ``<stem>.json`` (meta + rows) and ``<stem>.png`` in
    ``out_dir``; with ``latency`` (its key: runtime, batch, machine) the plot adds accuracy against measured ms."""
    out_dir = Path(out_dir)
    label = ""
    if latency:
        label = f"measured ms per batch of {latency['batch']} ({latency['runtime']}, {latency['machine']})"
    paths = {
        "csv": write_csv(rows, out_dir / f"{stem}.csv", tuple(CSV_COLUMNS) + tuple(extra_columns)),
        "json": write_json(dict(meta, rows=list(rows)), out_dir / f"{stem}.json"),
        "png": plot_tradeoff(rows, out_dir / f"{stem}.png", title=title, latency_label=label),
    }
    return paths


def validation_tables(rows: Sequence[Dict[str, Any]], markdown: bool = False) -> str:
    """The per-granularity table (uniform configurations) and, with mix'n'match rows, the Pareto front."""
    cols = ["name", "top1", "top5", "loss", "params", "params_non_embedding", "gflops"]
    heads = ["granularity", "top-1 %", "top-5 %", "loss", "params", "params (non-emb.)", "GFLOPs"]
    fmt = {"loss": ".4f", "gflops": ".4f"}
    uniform = [r for r in rows if r["kind"] == "uniform"]
    parts, gap = [], "\n\n" if markdown else "\n"
    if uniform:
        parts.append("Per granularity:" + gap + format_table(uniform, cols, heads, fmt, markdown))
    if len(uniform) < len(rows):
        front = [r for r in sorted(rows, key=lambda r: r["params_non_embedding"]) if r["pareto_params"]]
        parts.append(
            f"Mix'n'match Pareto front (top-1 vs non-embedding params), {len(front)} of {len(rows)} "
            "configurations:" + gap + format_table(front, cols, ["configuration"] + heads[1:], fmt, markdown)
        )
    return "\n\n".join(parts)
