"""``make reproduce``: the paper's vision claims (Fig. 3, Fig. 5, untrained widths) at small scale, resumable."""

from .pipeline import VARIANTS, reproduce
from .report import write_report
from .stages import Plan, Runners, StageLog

__all__ = ["Plan", "Runners", "StageLog", "VARIANTS", "reproduce", "write_report"]
