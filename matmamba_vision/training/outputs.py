"""The experiment folder: args.yaml (args.resumed-epochE.yaml for a resume), log.txt, a timm-style summary.csv
(one row per epoch, metrics per granularity) and train_curves.png (train loss and val top-1 per granularity)."""

from __future__ import annotations

import csv
import io
import logging
import logging.handlers
import sys
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import yaml

from ..weights import atomic_write

__all__ = ["experiment_dir", "setup_logging", "attach_log_file", "write_args", "Summary"]


def experiment_dir(output: str, experiment: str, model: str, resume_state: Optional[Path] = None) -> Path:
    """OUTPUT/EXPERIMENT (default name: time and model, as timm); a resumed run keeps its folder."""
    if resume_state is not None and not experiment:
        return resume_state.parent
    name = experiment or f"{datetime.now():%Y%m%d-%H%M%S}-{model}"
    return Path(output) / name


def setup_logging(is_main: bool) -> logging.Logger:
    """The 'train' logger: INFO to stderr on rank 0 (warnings only on other ranks). Rank 0's records are also
    kept for ``log.txt``, which :func:`attach_log_file` opens once the run folder exists; until then nothing is
    written to disk, so a run refused by a later check leaves no folder behind."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_matmamba_train", False):
            root.removeHandler(h)
            if isinstance(h, logging.handlers.MemoryHandler) and h.target is not None:
                h.target.close()
            h.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    handlers: List[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if is_main:  # capacity 1: once a target is set every record goes straight through; before, they wait
        handlers.append(logging.handlers.MemoryHandler(capacity=1, flushLevel=logging.DEBUG, target=None))
    for h in handlers:
        h.setFormatter(fmt)
        h._matmamba_train = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(logging.INFO if is_main else logging.WARNING)
    return logging.getLogger("train")


def attach_log_file(log_file: Path) -> None:
    """Start ``log_file`` (appending) with the records logged so far, and send later ones there too (rank 0:
    the handler :func:`setup_logging` made; a no-op on other ranks)."""
    for h in logging.getLogger().handlers:
        if getattr(h, "_matmamba_train", False) and isinstance(h, logging.handlers.MemoryHandler):
            target = logging.FileHandler(log_file)
            target.setFormatter(h.formatter)
            h.setTarget(target)
            h.flush()


def write_args(path: Path, args: Dict, header: Sequence[str] = ()) -> None:
    """``args`` as YAML (usable as ``-c``), after ``header`` lines written as comments."""
    text = "".join(f"# {line}\n" for line in header) + yaml.safe_dump(args, sort_keys=False)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


class Summary:
    """Per-epoch rows, rewritten atomically to ``summary.csv`` and plotted to ``train_curves.png``."""

    def __init__(self, directory: Path, granularities: List[int], rows: Optional[List[Dict[str, float]]] = None):
        """``rows``: those of a resumed run (kept in its state file, so a kill between the checkpoint and
        the CSV write loses nothing)."""
        self.csv, self.png, self.granularities = (
            directory / "summary.csv",
            directory / "train_curves.png",
            granularities,
        )
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

        epochs = [int(r["epoch"]) for r in self.rows]
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
