"""One ``--help`` format for train.py, validate.py and retrieval.py: every flag shows its default."""

from __future__ import annotations

import argparse
import copy

__all__ = ["DefaultsHelpFormatter"]


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written, and ``(default: X)`` after every option's help, also an option given no help
    (argparse's ArgumentDefaultsHelpFormatter shows none there). Help that already names its default
    (``default: the model's``) is left as it is."""

    def _format_action(self, action: argparse.Action) -> str:
        if action.option_strings and action.default is not argparse.SUPPRESS and action.help is not argparse.SUPPRESS:
            text = action.help or ""
            if "default" not in text.lower():
                shown = "''" if action.default == "" else "%(default)s"  # an empty string shown as such
                action = copy.copy(action)
                action.help = f"{text} (default: {shown})" if text else f"default: {shown}"
        return super()._format_action(action)
