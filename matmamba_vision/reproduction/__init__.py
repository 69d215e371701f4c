"""``make reproduce``: the paper's vision claims (Fig. 3, Fig. 5, untrained widths) at small scale, resumable."""

from .pipeline import collect_results, reproduce
from .report import load_results, write_report
from .stages import VARIANTS, Plan, PlanMismatch, Runners, StageLog

__all__ = [
    "Plan",
    "PlanMismatch",
    "Runners",
    "StageLog",
    "VARIANTS",
    "collect_results",
    "load_results",
    "reproduce",
    "write_report",
]
