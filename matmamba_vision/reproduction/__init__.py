"""``make reproduce``: the paper's vision claims (Fig. 3, Fig. 5, untrained widths) at small scale, resumable.

The names are imported on first use, so ``python -m matmamba_vision.reproduction.report`` runs the module once.
"""

from importlib import import_module
from typing import Any

__all__ = ["Plan", "Runners", "StageLog", "VARIANTS", "load_results", "reproduce", "write_report"]

_HOME = {
    "Plan": "stages",
    "Runners": "stages",
    "StageLog": "stages",
    "VARIANTS": "pipeline",
    "reproduce": "pipeline",
    "load_results": "report",
    "write_report": "report",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_HOME[name]}", __name__), name)


def __dir__():
    return sorted([*globals(), *__all__])
