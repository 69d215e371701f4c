"""A ``make reproduce`` run's results.json: its checks (format, version, required keys) and an index of its
models and retrieval rows, with each measurement over seeds as a :class:`Stat` (mean, min, max, n)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

__all__ = ["FORMAT", "VERSION", "Stat", "Run", "check_results", "load_results", "level_name", "label", "stat_of"]

FORMAT = "matmamba-vision reproduction results"
VERSION = 1
_TOP = ("written", "commands", "plan", "machine", "params", "models", "retrieval", "stages")
_PLAN = ("model", "patches", "tokens", "levels", "widths", "seeds", "variants", "holdout", "test_split")

# ---------------------------------------------------------------------------------------------- the file


def check_results(results: Any) -> Dict[str, Any]:
    """``results`` itself when it is a results.json object of this format and version, else ValueError."""
    if not isinstance(results, dict):
        raise ValueError(f"results must be a JSON object, got {type(results).__name__}")
    if results.get("format") != FORMAT:
        raise ValueError(f"results format must be {FORMAT!r}, got {results.get('format')!r}")
    if results.get("version") != VERSION:
        raise ValueError(f"results version must be {VERSION}, got {results.get('version')!r}")
    missing = [k for k in _TOP if k not in results]
    if missing:
        raise ValueError(f"results lack {', '.join(missing)}")
    missing = [k for k in _PLAN if k not in results["plan"]]
    if missing:
        raise ValueError(f"results plan lacks {', '.join(missing)}")
    empty = [k for k in ("levels", "widths", "seeds") if not results["plan"][k]]
    if empty:
        raise ValueError(f"results plan {', '.join(empty)} must not be empty")
    return results


def load_results(path: Union[str, Path]) -> Dict[str, Any]:
    """Read and check a results.json (format and version); ValueError naming what is wrong."""
    try:
        results = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON: {e}") from None
    try:
        return check_results(results)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


# ---------------------------------------------------------------------------------------------- numbers


@dataclass(frozen=True)
class Stat:
    """One measurement over seeds."""

    values: Tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return math.fsum(self.values) / len(self.values)

    @property
    def lo(self) -> float:
        return min(self.values)

    @property
    def hi(self) -> float:
        return max(self.values)

    @property
    def spread(self) -> float:
        return self.hi - self.lo

    def __str__(self) -> str:
        if self.n == 1:
            return f"{self.mean:.2f} (1 seed)"
        return f"{self.mean:.2f} ({self.lo:.2f}-{self.hi:.2f}, {self.n} seeds)"


def stat_of(values: Sequence[float]) -> Optional[Stat]:
    """A :class:`Stat` of ``values``, or None when there are none."""
    return Stat(tuple(float(v) for v in values)) if values else None


def level_name(g: int, D: int) -> str:
    """D, D/2, D/4, ... (or g/D as a fraction of D when D is not a multiple of g)."""
    if g == D:
        return "D"
    return f"D/{D // g}" if D % g == 0 else f"{g / D:.2g}D"


def label(variant: str) -> str:
    """The plain nested model is ``nested``; a variant ``nested-{variant}`` (as the model names)."""
    return f"nested-{variant}" if variant else "nested"


class Run:
    """results.json indexed: models by kind, retrieval rows by what they compare."""

    def __init__(self, results: Dict[str, Any]):
        check_results(results)
        self.results = results
        plan = self.plan = results["plan"]
        self.levels = [int(g) for g in plan["levels"]]
        self.D = max(self.levels)
        self.trained = sorted(self.levels)
        self.widths = sorted(int(w) for w in plan["widths"])
        self.seeds = [int(s) for s in plan["seeds"]]
        self.variants = [str(v) for v in plan["variants"]]
        self.candidates = ["", *self.variants]
        self.params = {int(k): v for k, v in results["params"].items()}
        self.models: Dict[str, Dict] = {}
        for i, m in enumerate(results["models"]):
            if "name" not in m or "kind" not in m:
                raise ValueError(f"results models[{i}] lacks name or kind")
            self.models[m["name"]] = m
        # (kind, who, query_width) -> rows; kind: self (a nested model's queries vs its own full-width database),
        # cross (a baseline's queries vs the nested database), own (a baseline vs its own database), null
        self.ret: Dict[Tuple[str, str, int], List[Dict]] = {}
        for i, r in enumerate(results["retrieval"]):
            q, db = self.models.get(r.get("query_model")), self.models.get(r.get("db_model"))
            if q is None or db is None:
                raise ValueError(
                    f"results retrieval[{i}]: query_model {r.get('query_model')!r} or db_model "
                    f"{r.get('db_model')!r} is not in models"
                )
            key = self._ret_key(q, db, int(r["db_width"]))
            if key is not None:
                self.ret.setdefault((*key, int(r["query_width"])), []).append(r)
        for rows in self.ret.values():
            rows.sort(key=lambda r: int(r["seed"]))

    def _ret_key(self, q: Dict, db: Dict, db_width: int) -> Optional[Tuple[str, str]]:
        plain_db = db["kind"] == "nested" and not db.get("variant") and db_width == self.D
        if q["kind"] == "nested" and q["name"] == db["name"] and db_width == self.D:
            return "self", q.get("variant", "")
        if q["kind"] == "nested" and not q.get("variant") and plain_db:
            return "null", ""
        if q["kind"] == "baseline" and plain_db:
            return "cross", q["init"]
        if q["kind"] == "baseline" and q["name"] == db["name"]:
            return "own", q["init"]
        return None

    def nested(self, variant: str = "") -> List[Dict]:
        ms = [m for m in self.models.values() if m["kind"] == "nested" and m.get("variant", "") == variant]
        return sorted(ms, key=lambda m: int(m["seed"]))

    def baselines(self, init: str, g: int) -> List[Dict]:
        ms = [
            m
            for m in self.models.values()
            if m["kind"] == "baseline" and m.get("init") == init and int(m["width"]) == g
        ]
        return sorted(ms, key=lambda m: int(m["seed"]))

    def top1(self, models: Sequence[Dict], g: int, split: str = "test") -> Optional[Stat]:
        """Top-1 % at uniform width g over ``models`` (their seeds), from the test or ``minival`` split."""
        key = str(g)
        if split == "test":
            vals = [m["test"]["uniform"][key] for m in models if key in m.get("test", {}).get("uniform", {})]
        else:
            vals = [m[split][key] for m in models if key in m.get(split, {})]
        return stat_of(vals)

    def retrieval(self, kind: str, who: str, qw: int, metric: str = "top1") -> Optional[Stat]:
        return stat_of([r[metric] for r in self.ret.get((kind, who, qw), [])])

    def retrieval_by_seed(self, kind: str, who: str, qw: int) -> Dict[int, float]:
        return {int(r["seed"]): float(r["top1"]) for r in self.ret.get((kind, who, qw), [])}

    def has_null(self) -> bool:
        return any(k[0] == "null" for k in self.ret)

    def name(self, g: int) -> str:
        return f"{level_name(g, self.D)} (g={g})"

    def cost(self, g: int, key: str) -> Optional[float]:
        return self.params.get(g, {}).get(key)
