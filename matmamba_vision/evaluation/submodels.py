"""Granularity configurations to evaluate: trained levels, mix'n'match sweeps, random and file-given lists.

A configuration is a :class:`SubmodelConfig`: a name and one granularity per block (the model's resolved
form, so ``None`` never appears: full width is written as the block's width).
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

from ..flags import parse_granularity_list
from ..models.matmamba_vision import MatMambaVision

__all__ = [
    "SubmodelConfig",
    "dims_name",
    "uniform_configs",
    "official_sweep",
    "random_configs",
    "load_config_file",
    "parse_granularities",
    "parse_mixnmatch",
    "dedupe_configs",
]


@dataclass(frozen=True)
class SubmodelConfig:
    """One submodel: ``dims`` holds one granularity per block; ``kind`` is 'uniform' or 'mixnmatch'."""

    name: str
    dims: Tuple[int, ...]
    kind: str = "mixnmatch"
    trained: bool = False
    extra: dict = field(default_factory=dict, compare=False, hash=False)


def dims_name(dims: Sequence[int]) -> str:
    """Run-length name of a per-layer list: ``[64, 64, 32]`` -> ``'64x2+32x1'``; uniform -> ``'g=64'``."""
    runs: List[Tuple[int, int]] = []
    for g in dims:
        if runs and runs[-1][0] == g:
            runs[-1] = (g, runs[-1][1] + 1)
        else:
            runs.append((g, 1))
    if len(runs) == 1:
        return f"g={runs[0][0]}"
    return "+".join(f"{g}x{n}" for g, n in runs)


def _full_dims(model: MatMambaVision, granularity) -> Tuple[int, ...]:
    """Resolved per-block dims with ``None`` replaced by each block's width (ValueError if invalid)."""
    dims = model.resolve_granularity(granularity)
    return tuple(int(g) if g is not None else int(blk.mixer.max_granularity) for g, blk in zip(dims, model.layers))


def _config(
    model: MatMambaVision, dims, kind: str = "mixnmatch", levels: Optional[Sequence[int]] = None
) -> SubmodelConfig:
    full = _full_dims(model, list(dims) if not isinstance(dims, int) else dims)
    levels = set(levels or model.matryoshka_levels)
    uniform = len(set(full)) == 1
    return SubmodelConfig(
        name=dims_name(full),
        dims=full,
        kind="uniform" if uniform else kind,
        trained=uniform and full[0] in levels,
    )


def uniform_configs(
    model: MatMambaVision,
    granularities: Iterable[int],
    levels: Optional[Sequence[int]] = None,
    flag: str = "--granularities",
) -> List[SubmodelConfig]:
    """One configuration per granularity (every block at ``g``); ValueError names ``flag`` and a granularity the
    model cannot take.

    ``levels`` are the trained granularities (default ``model.matryoshka_levels``); they are flagged ``trained``.
    """
    out = []
    for g in granularities:
        try:
            out.append(_config(model, int(g), "uniform", levels))
        except ValueError as e:
            raise ValueError(f"{flag}: the model cannot run at {g}: {e}") from None
    return out


def official_sweep(model: MatMambaVision, levels: Optional[Sequence[int]] = None) -> List[SubmodelConfig]:
    """The official mix'n'match sweep (MatMamba paper / reference code): for each pair g1 > g2 of trained levels,
    the last k blocks at g2 and the rest at g1, for k = 1..depth (k = depth is the uniform g2 model). Duplicates
    are dropped, order kept."""
    levels = sorted(set(levels or model.matryoshka_levels), reverse=True)
    depth = len(model.layers)
    configs = []
    for i, g1 in enumerate(levels):
        for g2 in levels[i + 1 :]:
            for k in range(1, depth + 1):
                configs.append(_config(model, [g1] * (depth - k) + [g2] * k, levels=levels))
    return dedupe_configs(configs)


def random_configs(
    model: MatMambaVision, n: int, seed: int = 0, levels: Optional[Sequence[int]] = None
) -> List[SubmodelConfig]:
    """``n`` distinct per-layer lists drawn uniformly over the trained levels (seeded, reproducible).

    Fewer are returned only when fewer than ``n`` distinct lists exist.
    """
    if n <= 0:
        raise ValueError(f"--mixnmatch random:N needs N > 0, got {n}")
    levels = sorted(set(levels or model.matryoshka_levels), reverse=True)
    depth = len(model.layers)
    possible = len(levels) ** depth
    rng = random.Random(seed)
    seen, configs = set(), []
    while len(configs) < min(n, possible):
        dims = tuple(rng.choice(levels) for _ in range(depth))
        if dims not in seen:
            seen.add(dims)
            configs.append(_config(model, list(dims), levels=levels))
    return configs


def load_config_file(model: MatMambaVision, path: str, levels: Optional[Sequence[int]] = None) -> List[SubmodelConfig]:
    """Per-layer lists from a JSON file (a list of lists, or of ``{"name": ..., "dims": [...]}``) or a CSV
    file (one list per row; a header row and a leading name column are allowed)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--mixnmatch: no such file {path!r} (valid: 'official', 'random:N', or a JSON/CSV file)")
    entries: List[Tuple[Optional[str], List]] = []
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"--mixnmatch: {path} is not valid JSON ({e})") from None
        if not isinstance(data, list):
            raise ValueError(f"--mixnmatch: {path} must hold a JSON list of per-layer lists")
        for item in data:
            if isinstance(item, dict):
                entries.append((item.get("name"), item.get("dims")))
            else:
                entries.append((None, item))
    elif p.suffix.lower() == ".csv":
        with open(p, newline="") as f:
            for row in csv.reader(f):
                cells = [c.strip() for c in row if c.strip()]
                if not cells:
                    continue
                name = None
                if not cells[0].lstrip("-").isdigit():
                    name, cells = cells[0], cells[1:]
                if not cells or not all(c.lstrip("-").isdigit() for c in cells):
                    if name is not None and not entries:
                        continue  # header row
                    raise ValueError(f"--mixnmatch: {path}: row {row!r} is not a list of integers")
                entries.append((name, [int(c) for c in cells]))
    else:
        raise ValueError(f"--mixnmatch: {path} must end in .json or .csv")
    if not entries:
        raise ValueError(f"--mixnmatch: {path} holds no configurations")
    configs = []
    for i, (name, dims) in enumerate(entries):
        if not isinstance(dims, list):
            raise ValueError(f"--mixnmatch: {path}: entry {i} is not a list of per-layer granularities")
        try:
            cfg = _config(model, [int(g) for g in dims], levels=levels)
        except (ValueError, TypeError) as e:
            raise ValueError(f"--mixnmatch: {path}: entry {i} ({dims}) is not valid for this model: {e}") from None
        configs.append(SubmodelConfig(name or cfg.name, cfg.dims, cfg.kind, cfg.trained))
    return dedupe_configs(configs)


def parse_granularities(
    model: MatMambaVision,
    spec: Optional[Sequence],
    levels: Optional[Sequence[int]] = None,
    flag: str = "--granularities",
) -> List[SubmodelConfig]:
    """A granularities flag (``flag``, named in errors): None/empty = the trained ``levels`` (default
    ``model.matryoshka_levels``); otherwise ints (strings accepted: ``'128 64'``, ``'128,64'``)."""
    levels = list(levels or model.matryoshka_levels)
    if not spec:
        return uniform_configs(model, levels, levels, flag)
    try:
        values = parse_granularity_list(list(spec), flag)
    except ValueError as e:
        raise ValueError(f"{e}; trained levels: {levels}") from None
    return uniform_configs(model, values, levels, flag)


def parse_mixnmatch(
    model: MatMambaVision, spec: Optional[str], seed: int = 0, levels: Optional[Sequence[int]] = None
) -> List[SubmodelConfig]:
    """``--mixnmatch``: 'official', 'random:N' (seeded), or a JSON/CSV file of per-layer lists; the sweeps
    draw from the trained ``levels`` (default ``model.matryoshka_levels``)."""
    if not spec:
        return []
    if spec == "official":
        return official_sweep(model, levels)
    if spec.startswith("random:"):
        try:
            n = int(spec.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"--mixnmatch: {spec!r}: N in random:N must be an integer") from None
        return random_configs(model, n, seed, levels)
    return load_config_file(model, spec, levels)


def dedupe_configs(configs: Iterable[SubmodelConfig]) -> List[SubmodelConfig]:
    """Drop configurations whose per-layer dims repeat an earlier one (the first one's name is kept)."""
    seen, out = set(), []
    for c in configs:
        if c.dims not in seen:
            seen.add(c.dims)
            out.append(c)
    return out
