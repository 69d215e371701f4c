"""Choosing the submodel to deploy under a budget, from a validate.py result file, and checking the choice.

:func:`select_submodel` reads validate.py's rows (accuracy, parameters and, with ``--latency``, measured
milliseconds and memory on the machine named in the file) and returns the most accurate configuration within
``max_ms``, ``max_memory_mb`` and ``max_params``. :func:`budget_check` compares a re-timing of the exported
file with the same budget.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from .flags import positive_float, positive_int

__all__ = [
    "SubmodelChoice",
    "NoSubmodelFitsError",
    "load_results",
    "select_submodel",
    "budget_check",
    "add_budget_args",
    "choice_from_args",
    "selection_metadata",
    "check_exported_choice",
]

Results = Union[str, os.PathLike, Dict[str, Any], Sequence[Dict[str, Any]]]
_BUDGETS = (("max_ms", "latency_ms", "ms"), ("max_memory_mb", "memory_mb", "MB"), ("max_params", "params", "params"))
# which measured latency ``max_ms`` bounds: (validate.py's column, the re-timing's key)
LATENCY_STATISTICS = {"median": ("latency_ms", "median_ms"), "p90": ("latency_p90_ms", "p90_ms")}


def _latency_keys(latency: str) -> Tuple[str, str]:
    """(validate.py's column, the re-timing's key) of ``latency``; ValueError naming the valid ones."""
    if latency not in LATENCY_STATISTICS:
        raise ValueError(f"latency must be one of {sorted(LATENCY_STATISTICS)}, got {latency!r}")
    return LATENCY_STATISTICS[latency]


def _columns(latency: str) -> Tuple[Tuple[str, str, str], ...]:
    """_BUDGETS with max_ms on the column of ``latency`` (a key of :data:`LATENCY_STATISTICS`)."""
    column = _latency_keys(latency)[0]
    return tuple((n, column if n == "max_ms" else c, u) for n, c, u in _BUDGETS)


class NoSubmodelFitsError(ValueError):
    """No configuration of the results meets the budget (the message names the fastest one)."""


@dataclass(frozen=True)
class SubmodelChoice:
    """The chosen configuration: ``dims`` (one granularity per block, what ``export_model``'s ``granularity``
    takes), its result ``row``, the result file's ``meta`` (model, checkpoint, the latency key naming machine and
    runtime) and the ``budget`` it was chosen for."""

    name: str
    dims: List[int]
    row: Dict[str, Any] = field(repr=False)
    meta: Dict[str, Any] = field(repr=False)
    budget: Dict[str, Any]

    @property
    def latency_ms(self) -> Optional[float]:
        return self.row.get("latency_ms")

    @property
    def memory_mb(self) -> Optional[float]:
        return self.row.get("memory_mb")


def _number(v: Any) -> Any:
    if not isinstance(v, str):
        return v
    if v in ("", "None"):
        return None
    if v in ("True", "False"):
        return v == "True"
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return v


def load_results(results: Results) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """(rows, meta) from validate.py's JSON (``validate.json`` or ``--results-file x.json``), its CSV (rows only)
    or what they hold already loaded: a dict with ``rows``, or a list of rows."""
    source = "results"
    if isinstance(results, (str, os.PathLike)):
        path, source = Path(results), str(results)
        if not path.is_file():
            raise ValueError(f"results: no such file {source!r} (validate.py's .json or .csv)")
        if path.suffix.lower() == ".csv":
            with open(path, newline="") as f:
                rows = [{k: _number(v) for k, v in r.items()} for r in csv.DictReader(f)]
            for r in rows:
                if isinstance(r.get("dims"), (str, int)):
                    r["dims"] = [int(g) for g in str(r["dims"]).split()]
            results = {"rows": rows}
        else:
            try:
                results = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"results: {source} is not valid JSON ({e})") from None
    if isinstance(results, dict):
        meta = {k: v for k, v in results.items() if k != "rows"}
        rows = results.get("rows")
    else:
        meta, rows = {}, results
    if not isinstance(rows, (list, tuple)) or not rows or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"results: {source} holds no result rows (validate.py writes them under 'rows')")
    for i, r in enumerate(rows):
        if not isinstance(r.get("dims"), list) or not r.get("name"):
            raise ValueError(f"results: {source}: row {i} has no name and per-block 'dims'")
    return [dict(r) for r in rows], meta


def _check_budget(name: str, value: Optional[float]) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def _describe(r: Dict[str, Any], metric: str) -> str:
    parts = [r["name"]]
    if r.get("latency_ms") is not None:
        p90 = f" (p90 {r['latency_p90_ms']:.3g} ms)" if r.get("latency_p90_ms") is not None else ""
        parts[0] += f" at {r['latency_ms']:.3g} ms{p90}"
    if r.get("memory_mb") is not None:
        parts.append(f"{r['memory_mb']:.1f} MB")
    if r.get("params") is not None:
        parts.append(f"{r['params']:,} params")
    if r.get(metric) is not None:
        parts.append(f"{metric} {r[metric]:.2f} %")
    return ", ".join(parts)


def select_submodel(
    results: Results,
    max_ms: Optional[float] = None,
    max_memory_mb: Optional[float] = None,
    max_params: Optional[int] = None,
    metric: str = "top1",
    latency: str = "median",
) -> SubmodelChoice:
    """The most accurate configuration (by ``metric``) whose measured latency, memory and total parameters are
    within the given budgets (None: no limit); ties go to the faster, then the smaller one.

    ``latency``: which measured latency ``max_ms`` bounds, ``'median'`` or ``'p90'`` (9 calls in 10 within the
    budget: a margin for the noise of a re-timing); the export's re-timing check uses the same one.

    ``results``: validate.py's result file (path to its .json or .csv) or its loaded content. Latency and
    memory budgets need a file written with ``validate.py --latency``; they hold on the machine, runtime,
    threads and batch its ``latency`` entry names. Raises :class:`NoSubmodelFitsError` (a ValueError) naming the
    fastest configuration when none fits.
    """
    budget = dict(max_ms=max_ms, max_memory_mb=max_memory_mb, max_params=max_params)
    for name, value in budget.items():
        _check_budget(name, value)
    columns = _columns(latency)
    rows, meta = load_results(results)
    if any(r.get(metric) is None for r in rows):
        raise ValueError(f"metric {metric!r} is not in every result row (e.g. top1, top5)")
    for name, col, _ in columns:
        if budget[name] is not None and any(r.get(col) is None for r in rows):
            why = "run validate.py --latency" if col != "params" else "validate.py writes it"
            raise ValueError(f"{name}: the results hold no measured {col} for every configuration ({why})")
    fits = [r for r in rows if all(budget[n] is None or r[c] <= budget[n] for n, c, _ in columns)]
    if not fits:
        limits = ", ".join(f"{n}={budget[n]:g}" for n, _, _ in _BUDGETS if budget[n] is not None)
        limits += f" ({latency} latency)" if max_ms is not None else ""
        if all(r.get("latency_ms") is not None for r in rows):
            fastest, what = min(rows, key=lambda r: (r["latency_ms"], r["params"])), "fastest"
        else:
            fastest, what = min(rows, key=lambda r: r.get("params") or 0), "smallest"
        where = ""
        if meta.get("latency"):
            lat = meta["latency"]
            where = f" (measured on {lat.get('machine')}, {lat.get('runtime')}, batch {lat.get('batch')})"
        raise NoSubmodelFitsError(
            f"no configuration of {len(rows)} fits the budget {limits}{where}; "
            f"the {what} is {_describe(fastest, metric)}"
        )
    best = max(fits, key=lambda r: (r[metric], -(r.get("latency_ms") or 0.0), -(r.get("params") or 0)))
    budget_record: Dict[str, Any] = dict(budget, latency=latency)
    return SubmodelChoice(
        name=best["name"], dims=[int(g) for g in best["dims"]], row=best, meta=meta, budget=budget_record
    )


def budget_check(measured: Dict[str, Any], budget: Dict[str, Any], params: Optional[int] = None) -> Dict[str, Any]:
    """Whether a re-timing (``median_ms`` or ``p90_ms``, as ``budget['latency']`` says; ``memory_mb``) and ``params``
    meet ``budget`` (:class:`SubmodelChoice`'s): the measured figures, the budget, ``meets_budget`` and the list of
    ``misses`` (one line each)."""
    latency = budget.get("latency", "median")
    ms = measured.get(_latency_keys(latency)[1])
    got = dict(max_ms=ms, max_memory_mb=measured.get("memory_mb"), max_params=params)
    misses = []
    for name, _, unit in _BUDGETS:
        limit = budget.get(name)
        if limit is None:
            continue
        if got[name] is None:
            misses.append(f"{name}={limit:g}: not measurable here")
        elif got[name] > limit:
            what = f" ({latency})" if name == "max_ms" else ""
            misses.append(f"{name}={limit:g}{what}: measured {got[name]:.4g} {unit}")
    return dict(measured, budget=dict(budget), meets_budget=not misses, misses=misses)


def add_budget_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """export.py's ``--from-results`` and budget flags."""
    g = parser.add_argument_group("choose the submodel from validate.py's results (instead of --granularity)")
    g.add_argument(
        "--from-results",
        default="",
        metavar="FILE",
        help="validate.py's .json (or .csv): export its most accurate configuration within the budget; model, "
        "weights and model args default to the ones it records",
    )
    g.add_argument("--max-ms", type=positive_float, default=None, help="latency budget (ms per batch)")
    g.add_argument(
        "--max-ms-statistic",
        choices=sorted(LATENCY_STATISTICS),
        default="median",
        help="the measured latency --max-ms bounds, in the choice and in the re-timing check; p90 leaves a margin "
        "for timing noise (default: median)",
    )
    g.add_argument("--max-memory-mb", type=positive_float, default=None, help="memory budget (MB)")
    g.add_argument("--max-params", type=positive_int, default=None, help="parameter budget (total)")
    g.add_argument(
        "--retime-repeats", type=positive_int, default=10, help="timed calls of the exported file (default: 10)"
    )
    return parser


def choice_from_args(args: argparse.Namespace) -> Optional[SubmodelChoice]:
    """export.py: the configuration ``--from-results`` and the budget flags select (None without
    ``--from-results``); the model name, weights and model args it records fill the flags left unset."""
    if not args.from_results:
        if any(v is not None for v in (args.max_ms, args.max_memory_mb, args.max_params)):
            raise ValueError("--max-ms, --max-memory-mb and --max-params need --from-results")
        return None
    if args.granularity:
        raise ValueError("--granularity and --from-results exclude each other (the results choose the granularity)")
    try:
        choice = select_submodel(
            args.from_results, args.max_ms, args.max_memory_mb, args.max_params, latency=args.max_ms_statistic
        )
    except NoSubmodelFitsError as e:
        raise NoSubmodelFitsError(f"--from-results: {e}") from None
    except ValueError as e:
        raise ValueError(f"--from-results: {e}") from None
    meta = choice.meta
    if meta.get("model"):
        if args.model and args.model != meta["model"]:
            raise ValueError(f"--model {args.model} differs from {meta['model']}, the model in {args.from_results}")
        args.model = meta["model"]
    if not args.checkpoint and not args.pretrained:
        args.checkpoint, args.pretrained = meta.get("checkpoint") or "", bool(meta.get("pretrained"))
    if not args.model_kwargs and isinstance(meta.get("model_args"), dict):
        args.model_kwargs = {k: v for k, v in meta["model_args"].items() if k != "mixer_dims"}
    return choice


def selection_metadata(choice: SubmodelChoice, source: str) -> Dict[str, Any]:
    """The sidecar's ``selection``: the results file, the budget, the chosen configuration and what the results
    measured for it (accuracy, latency, memory, and the machine and runtime the latency was taken on)."""
    keep = ("top1", "top5", "loss", "params", "gflops", "latency_ms", "latency_p90_ms", "memory_mb", "samples")
    latency = choice.meta.get("latency") or {}
    return dict(
        selection=dict(
            results=source,
            budget=choice.budget,
            name=choice.name,
            dims=choice.dims,
            measured={k: choice.row.get(k) for k in keep if k in choice.row},
            latency_measured_with={k: latency.get(k) for k in ("machine", "runtime", "threads", "batch", "device")}
            if latency
            else None,
            split=choice.meta.get("split"),
            dataset=choice.meta.get("dataset"),
        )
    )


def check_exported_choice(
    path: os.PathLike, format: str, choice: SubmodelChoice, repeats: int = 10, warn: bool = True
) -> Dict[str, Any]:
    """Re-time the exported file in its runtime on this machine (the batch and threads the results were timed
    with), add ``budget_check`` (:func:`budget_check`) to its sidecar, and warn (stderr) on a miss, naming the
    measured time. Returns the check."""
    from .evaluation.latency import machine_name, time_exported
    from .export import sidecar_path
    from .weights import atomic_write

    latency = choice.meta.get("latency") or {}
    measured = time_exported(
        path, format, batch=int(latency.get("batch") or 1), threads=latency.get("threads"), repeats=repeats
    )
    check = budget_check(measured, choice.budget, choice.row.get("params"))
    side = sidecar_path(path)
    info = json.loads(side.read_text())
    info["budget_check"] = check
    atomic_write(side, lambda tmp: Path(tmp).write_text(json.dumps(info, indent=1) + "\n"))
    if warn:
        if (
            latency.get("machine")
            and latency["machine"] != machine_name("cpu")
            and latency.get("device", "cpu") == "cpu"
        ):
            print(
                f"warning: the results were timed on {latency['machine']}, this is {machine_name('cpu')}: "
                "the re-timing here is what holds",
                file=sys.stderr,
            )
        timed_in = latency.get("runtime")
        if timed_in and (timed_in == "onnxruntime") != (format == "onnx"):
            print(
                f"warning: the results were timed in {timed_in}, {Path(path).name} runs in "
                f"{measured['runtime']}: the re-timing here is what holds (for a budget that must hold, time the "
                "results in the runtime you ship: validate.py --latency-runtime onnxruntime with an ONNX export)",
                file=sys.stderr,
            )
        if not check["meets_budget"]:
            print(
                f"warning: {Path(path).name} misses its budget in {measured['runtime']} here: "
                f"{'; '.join(check['misses'])} (median {measured['median_ms']:.4g} ms, "
                f"p90 {measured['p90_ms']:.4g} ms at batch {measured['batch']}, {measured['threads']} threads)",
                file=sys.stderr,
            )
    return check
