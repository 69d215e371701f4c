"""Classification evaluation of many submodels: accuracy, cost, Pareto membership, files and tables."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from tqdm.auto import tqdm

from ..models.matmamba_vision import MatMambaVision
from .configs import SubmodelConfig
from .pareto import pareto_front
from .plots import plot_tradeoff
from .report import format_table, write_csv, write_json
from .sweep import config_costs, evaluate_configs

__all__ = ["validate_configs", "write_validation_outputs", "validation_tables", "CSV_COLUMNS"]

CSV_COLUMNS = ("name", "kind", "trained", "dims", "params", "params_non_embedding", "gflops", "top1", "top5",
               "loss", "samples", "pareto_params", "pareto_gflops")


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
    rows = evaluate_configs(model, loader, configs, device=device, amp_dtype=amp_dtype, max_samples=max_samples,
                            share_prefix=share_prefix, log_freq=log_freq, desc="validate")
    for cfg, row in zip(tqdm(configs, desc="params/FLOPs", unit="cfg", disable=len(configs) < 8), rows):
        row.update(config_costs(model, cfg, img_size))
    for key in ("params", "gflops"):
        front = set(pareto_front([r["params_non_embedding" if key == "params" else key] for r in rows],
                                 [r["top1"] for r in rows]))
        for i, r in enumerate(rows):
            r[f"pareto_{key}"] = i in front
    return rows


def write_validation_outputs(rows: Sequence[Dict[str, Any]], out_dir: os.PathLike, meta: Dict[str, Any],
                             stem: str = "validate", title: str = "") -> Dict[str, Path]:
    """``<stem>.csv``, ``<stem>.json`` (meta + rows) and ``<stem>.png`` in ``out_dir``."""
    out_dir = Path(out_dir)
    paths = {
        "csv": write_csv(rows, out_dir / f"{stem}.csv", CSV_COLUMNS),
        "json": write_json(dict(meta, rows=list(rows)), out_dir / f"{stem}.json"),
        "png": plot_tradeoff(rows, out_dir / f"{stem}.png", title=title),
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
        parts.append(f"Mix'n'match Pareto front (top-1 vs non-embedding params), {len(front)} of {len(rows)} "
                     "configurations:" + gap
                     + format_table(front, cols, ["configuration"] + heads[1:], fmt, markdown))
    return "\n\n".join(parts)
