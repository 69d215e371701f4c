"""What identifies a split's data: a fingerprint of its files, the identity an embedding cache keys on, and a
check that two splits share one class list."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

from .ffcv_pipeline import beton_path, ffcv_meta_path
from .fmnist import fmnist_root
from .folder import split_dir
from .holdout import HOLDOUT_SPLITS
from .loader import resolve_dataset, train_holdout_record

__all__ = ["split_fingerprint", "data_identity", "check_same_classes"]


def split_fingerprint(dataset: str, data_dir: Optional[str], split: str) -> str:
    """SHA-256 over the split's files (relative path, size, modification time): changes when images are added,
    removed, renamed or rewritten. One ``stat`` per file (ImageNet's 1.28M: seconds, against hours of embedding)."""
    kind = resolve_dataset(dataset, data_dir)
    if kind == "fmnist":
        root = Path(fmnist_root(data_dir))
        files = [p for p in root.iterdir() if p.is_file()]
    elif kind == "ffcv":
        root = Path(data_dir)
        files = [p for p in (beton_path(root, split), ffcv_meta_path(beton_path(root, split))) if p.is_file()]
    else:
        root = split_dir(data_dir, split) or Path(data_dir) / split
        files = [Path(d) / f for d, _, names in os.walk(root) for f in names]
    digest = hashlib.sha256()
    for p in sorted(files):
        st = p.stat()
        digest.update(f"{p.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def data_identity(dataset: str, data_dir: Optional[str], split: str, data_config: Dict[str, Any]) -> Dict[str, Any]:
    """What identifies a split's images and transform (part of an embedding cache key): the dataset, the folder,
    the split's name, a fingerprint of its files (an entry is not served after the images changed), the
    transform, and for minitrain/minival the held-out split's seed, size and index SHA-256."""
    data_dir = os.path.abspath(data_dir) if data_dir else None
    identity = dict(
        dataset=dataset or ("folder" if data_dir else "fmnist"),
        data_dir=data_dir,
        split=split,
        files=split_fingerprint(dataset, data_dir, split),
        transform={k: list(v) if isinstance(v, tuple) else v for k, v in sorted(data_config.items())},
    )
    if split in HOLDOUT_SPLITS:
        record = train_holdout_record(dataset, data_dir)
        identity["holdout"] = {k: record[k] for k in ("seed", "size", "of", "sha256")}
    return identity


def check_same_classes(
    db_classes: Optional[List], query_classes: Optional[List], db_split: str = "database", query_split: str = "query"
) -> None:
    """ValueError when the database and query splits disagree on the class list (names the differences)."""
    if db_classes is None or query_classes is None:
        return
    db_classes, query_classes = list(db_classes), list(query_classes)
    if db_classes == query_classes:
        return
    only_db = [c for c in db_classes if c not in set(query_classes)]
    only_q = [c for c in query_classes if c not in set(db_classes)]
    detail = []
    if only_db:
        detail.append(f"only in {db_split}: {only_db[:8]}{' ...' if len(only_db) > 8 else ''}")
    if only_q:
        detail.append(f"only in {query_split}: {only_q[:8]}{' ...' if len(only_q) > 8 else ''}")
    if not detail:
        detail.append("same classes in a different order, so label ids would not match")
    raise ValueError(
        f"class lists differ between the {db_split} split ({len(db_classes)} classes) and the "
        f"{query_split} split ({len(query_classes)} classes): " + "; ".join(detail)
    )
