"""Result files and console tables: CSV and JSON rows (written atomically), fixed-width text tables."""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from ..checkpoint import atomic_write

__all__ = ["write_csv", "write_json", "format_table"]


def _cell(v: Any) -> Any:
    """Lists space-separated; numbers as they are (full precision: only the printed tables round)."""
    if isinstance(v, (list, tuple)):
        return " ".join(str(x) for x in v)
    return v


def write_csv(rows: Sequence[Dict[str, Any]], path: os.PathLike, columns: Optional[Sequence[str]] = None) -> Path:
    """One row per dict; lists (per-layer dims) become space-separated; columns default to the union of keys."""
    if columns is None:
        columns = []
        for r in rows:
            columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _cell(r.get(k, "")) for k in columns})
    text = buf.getvalue()
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json(obj: Any, path: os.PathLike) -> Path:
    """Pretty JSON, written atomically."""
    text = json.dumps(obj, indent=2, default=str) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_results_file(path: os.PathLike, rows: Sequence[Dict[str, Any]], meta: Dict[str, Any],
                       columns: Sequence[str]) -> Path:
    """timm's ``--results-file``: JSON (``meta`` plus ``rows``) when the name ends in ``.json``, else CSV."""
    if str(path).lower().endswith(".json"):
        return write_json(dict(meta, rows=list(rows)), path)
    return write_csv(rows, path, columns)


def format_table(rows: Sequence[Dict[str, Any]], columns: Sequence[str], headers: Optional[Sequence[str]] = None,
                 floatfmt: Optional[Dict[str, str]] = None, markdown: bool = False) -> str:
    """A fixed-width (or Markdown) table of ``columns``; ``floatfmt`` maps a column to a format spec."""
    headers = list(headers or columns)
    floatfmt = floatfmt or {}

    def fmt(col: str, v: Any) -> str:
        if isinstance(v, bool):
            return "yes" if v else ""
        if isinstance(v, float):
            return format(v, floatfmt.get(col, ".2f"))
        if isinstance(v, int):
            return format(v, floatfmt.get(col, ",d"))
        if isinstance(v, (list, tuple)):
            return " ".join(str(x) for x in v)
        return "" if v is None else str(v)

    cells = [[fmt(c, r.get(c)) for c in columns] for r in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    if markdown:
        lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |",
                 "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        lines += ["| " + " | ".join(c.rjust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    else:
        lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths)), "  ".join("-" * w for w in widths)]
        lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
