"""The experiment folder: args.yaml, log.txt, a timm-style summary.csv (one row per epoch, metrics per
granularity) and train_curves.png (train loss and val top-1 per granularity)."""
from __future__ import annotations

import csv
import io
import logging
import sys
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional

import yaml

from ..checkpoint import atomic_write

__all__ = ["experiment_dir", "setup_logging", "write_args", "Summary"]


def experiment_dir(output: str, experiment: str, model: str, resume_state: Optional[Path] = None) -> Path:
    """OUTPUT/EXPERIMENT (default name: time and model, as timm); a resumed run keeps its folder."""
    if resume_state is not None and not experiment:
        return resume_state.parent
    name = experiment or f"{datetime.now():%Y%m%d-%H%M%S}-{model}"
    return Path(output) / name


def setup_logging(log_file: Optional[Path], is_main: bool) -> logging.Logger:
    """The 'train' logger: INFO to stderr and ``log_file`` on rank 0, warnings only on other ranks."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_matmamba_train", False):
            root.removeHandler(h)
            h.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    handlers: List[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None and is_main:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    for h in handlers:
        h.setFormatter(fmt)
        h._matmamba_train = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(logging.INFO if is_main else logging.WARNING)
    return logging.getLogger("train")


def write_args(path: Path, args: Dict) -> None:
    text = yaml.safe_dump(args, sort_keys=False)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


class Summary:
    """Per-epoch rows, rewritten atomically to ``summary.csv`` and plotted to ``train_curves.png``."""

    def __init__(self, directory: Path, granularities: List[int], rows: Optional[List[Dict[str, float]]] = None):
        """``rows``: those of a resumed run (kept in its state file, so a kill between the checkpoint and
        the CSV write loses nothing)."""
        self.csv, self.png, self.granularities = directory / "summary.csv", directory / "train_curves.png", granularities
        self.rows: List[Dict[str, float]] = [dict(r) for r in rows or []]

    def add(self, row: Dict[str, float]) -> None:
        self.rows.append(row)
        self.write()

    def write(self) -> None:
        fields: List[str] = []
        for r in self.rows:
            fields += [k for k in r if k not in fields]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write(self.csv, lambda tmp: Path(tmp).write_text(buf.getvalue()))
        self.plot()

    def plot(self) -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        epochs = [int(r["epoch"]) + 1 for r in self.rows]
        fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
        for g in self.granularities:
            for ax, key in ((ax_loss, f"train_loss_g{g}"), (ax_acc, f"eval_top1_g{g}")):
                values = [float(r[key]) for r in self.rows if r.get(key) not in (None, "")]
                if len(values) == len(epochs):
                    ax.plot(epochs, values, marker="o", label=f"g={g}")
        ax_loss.set(xlabel="epoch", ylabel="train loss", title="train loss per granularity")
        ax_acc.set(xlabel="epoch", ylabel="val top-1 (%)", title="val top-1 per granularity")
        for ax in (ax_loss, ax_acc):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        atomic_write(self.png, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
        plt.close(fig)
