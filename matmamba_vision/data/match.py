"""Does the data fit the model's input config? One-line warnings when the images' channels differ from the
model's ``in_chans``, or when the normalisation statistics are the model's pretrained ones stretched to another
channel count (e.g. Fashion-MNIST's grey mean repeated over an RGB folder's three channels)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from PIL import Image

__all__ = ["data_channels", "data_mismatch_warnings"]


def _folder_image_channels(root: Path) -> Optional[int]:
    """1 (grey) or 3 (colour) for the first image found under ``root``'s class folders; None if none opens."""
    for cls in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
        for path in sorted(p for p in cls.iterdir() if p.is_file()):
            try:
                with Image.open(path) as im:  # the header only
                    return 1 if Image.getmodebase(im.mode) == "L" else 3
            except Exception:  # noqa: BLE001 - not an image: try the next file (unreadable images are reported
                continue  # by the loader, with --skip-corrupt's choice)
    return None


def data_channels(dataset: str, data_dir: Optional[str], split: str) -> Optional[int]:
    """The channels of a split's images as stored: Fashion-MNIST 1, FFCV files 3 (written as RGB), a folder
    its first image's (1 for grey modes, 3 for colour or palette); None when it cannot be told."""
    from .folder import split_dir
    from .loader import resolve_dataset

    kind = resolve_dataset(dataset, data_dir)
    if kind == "fmnist":
        return 1
    if kind == "ffcv":
        return 3
    root = split_dir(data_dir, split) if data_dir and Path(data_dir).is_dir() else None
    return _folder_image_channels(root) if root is not None else None


def _stretched(stats: List[float], in_chans: int) -> List[float]:
    """``stats`` fitted to ``in_chans`` as :func:`~matmamba_vision.data.transforms.model_data_config` does."""
    if len(stats) == 1:
        return stats * in_chans
    return [sum(stats) / len(stats)] if in_chans == 1 else stats


def data_mismatch_warnings(
    model: Any, data_config: Dict[str, Any], channels: Optional[int], split: str = "train"
) -> List[str]:
    """One line per mismatch between the data and ``model``'s config (empty when they fit): the images'
    ``channels`` (None: unknown) against ``data_config``'s input channels, and mean/std that are the model's
    pretrained statistics for another channel count (not given for this data)."""
    in_chans = int(data_config["input_size"][0])
    name = (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__
    lines = []
    if channels is not None and channels != in_chans:
        lines.append(
            f"the {split} images have {channels} channel{'s' * (channels > 1)} but {name} takes {in_chans} "
            f"(in_chans): they are converted to {'grey' if in_chans == 1 else 'RGB'}; set --in-chans "
            f"{channels} to use them as they are"
        )
    cfg = getattr(model, "pretrained_cfg", None) or {}
    own = {k: [float(v) for v in cfg[k]] for k in ("mean", "std") if cfg.get(k) is not None}
    used = {k: [float(v) for v in data_config[k]] for k in ("mean", "std")}
    if (
        len(own) == 2
        and len(own["mean"]) != in_chans
        and all(used[k] == _stretched(own[k], in_chans) for k in ("mean", "std"))
    ):
        how = "repeated" if len(own["mean"]) == 1 else "averaged"
        lines.append(
            f"the {split} images are normalised with {name}'s {len(own['mean'])}-channel statistics "
            f"{how} over {in_chans} (mean {used['mean']}, std {used['std']}), not this data's; give "
            f"statistics of this data (--mean/--std, or --model-kwargs "
            f'"{{pretrained_cfg_overlay: {{mean: [...], std: [...]}}}}")'
        )
    return lines
