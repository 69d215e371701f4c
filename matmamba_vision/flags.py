"""Command-line value checks shared by train.py, validate.py and retrieval.py.

Each flag's value is checked once, by its argparse ``type=`` (a :class:`FlagType`), at parse time; a ``-c``
config file's values pass through the same functions. ``--model-kwargs`` takes timm's ``KEY=VALUE ...`` or
one YAML mapping (``'{depth: 2}'``, as recorded runs' ``args.yaml`` hold it).
"""

from __future__ import annotations

import argparse
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import yaml
from timm.utils import ParseKwargs

__all__ = [
    "FlagType",
    "positive_int",
    "nonneg_int",
    "seed_int",
    "positive_float",
    "nonneg_float",
    "prob",
    "drop_prob",
    "positive_fraction",
    "not_nan_float",
    "optimizer_name",
    "compile_backend",
    "ModelKwargs",
    "parse_model_kwargs",
    "parse_flags",
    "flag_name",
]


class FlagType:
    """An argparse ``type=``: ``base(text)``, refused unless ``ok(value)``.

    The refusal reads ``must be {valid}, got {value}`` (``valid`` may be a function, for lists known only at
    run time); :func:`parse_flags` prefixes the flag's name. ``base`` is the plain type (``int``, ``float``,
    ``str``) a config file's value must have.
    """

    def __init__(self, name: str, base: type, ok: Callable[[Any], bool], valid: Union[str, Callable[[], str]]):
        self.__name__ = name
        self.base, self.ok, self._valid = base, ok, valid

    @property
    def valid(self) -> str:
        return self._valid() if callable(self._valid) else self._valid

    def __call__(self, text: Any):
        try:
            value = self.base(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be {self.valid}, got {text!r}") from None
        if not self.ok(value):
            raise argparse.ArgumentTypeError(f"must be {self.valid}, got {value!r}")
        return value

    def __repr__(self) -> str:
        return self.__name__


positive_int = FlagType("positive_int", int, lambda v: v >= 1, "at least 1")
nonneg_int = FlagType("nonneg_int", int, lambda v: v >= 0, "0 or more")
# numpy seeds take [0, 2**32); per-rank and per-epoch offsets are added to it
seed_int = FlagType("seed_int", int, lambda v: 0 <= v < 2**31, "in [0, 2**31)")
positive_float = FlagType("positive_float", float, lambda v: math.isfinite(v) and v > 0, "positive and finite")
nonneg_float = FlagType("nonneg_float", float, lambda v: math.isfinite(v) and v >= 0, "0 or more")
prob = FlagType("prob", float, lambda v: 0 <= v <= 1, "in [0, 1]")
drop_prob = FlagType("drop_prob", float, lambda v: 0 <= v < 1, "in [0, 1)")
positive_fraction = FlagType("positive_fraction", float, lambda v: 0 < v <= 1, "in (0, 1]")
not_nan_float = FlagType("not_nan_float", float, lambda v: not math.isnan(v), "a number")


def _timm_optimizer(name: str) -> bool:
    from timm.optim import list_optimizers

    return name.lower().split("_")[-1] in list_optimizers()  # timm's names, e.g. lookahead_adamw


def _compile_backends() -> List[str]:
    import torch._dynamo

    return torch._dynamo.list_backends()


optimizer_name = FlagType(
    "optimizer_name",
    str,
    _timm_optimizer,
    "one of timm's optimizers (timm.optim.list_optimizers(), e.g. adamw, sgd, lamb)",
)
compile_backend = FlagType(
    "compile_backend", str, lambda v: v in _compile_backends(), lambda: f"one of {_compile_backends()}"
)


def parse_model_kwargs(values: Union[None, str, Sequence[str], Dict[str, Any]]) -> Dict[str, Any]:
    """``--model-kwargs`` as a dict: timm's ``KEY=VALUE`` strings (values read by ``ast.literal_eval``, else kept
    as text), one YAML mapping string, or a mapping (a config file's). ValueError naming the flag otherwise."""
    if values is None:
        return {}
    if isinstance(values, dict):
        kwargs = dict(values)
    else:
        values = [values] if isinstance(values, str) else [str(v) for v in values]
        values = [v for v in values if v.strip()]
        if len(values) == 1 and ("=" not in values[0] or values[0].lstrip().startswith("{")):
            try:
                kwargs = yaml.safe_load(values[0])
            except yaml.YAMLError as e:
                raise ValueError(
                    f"--model-kwargs is not valid YAML ({str(e).splitlines()[0]}): {values[0]!r}"
                ) from None
            if not isinstance(kwargs, dict):
                raise ValueError(f"--model-kwargs must be KEY=VALUE ... or a YAML mapping, got {values[0]!r}")
        else:
            bad = [v for v in values if "=" not in v]
            if bad:
                raise ValueError(f"--model-kwargs: {bad} are not KEY=VALUE")
            namespace = argparse.Namespace()
            ParseKwargs(option_strings=[], dest="kwargs")(None, namespace, values)
            kwargs = namespace.kwargs
    bad = [k for k in kwargs if not (isinstance(k, str) and k.isidentifier())]
    if bad:  # e.g. '{depth:2}', which YAML reads as the key 'depth:2' (timm would drop its None silently)
        raise ValueError(
            f"--model-kwargs: {bad} are not argument names; write KEY=VALUE (depth=2) or a YAML "
            f"mapping with a space after each colon ('{{depth: 2}}')"
        )
    return kwargs


class ModelKwargs(ParseKwargs):
    """timm's ``--model-kwargs KEY=VALUE ...`` action, also taking one YAML mapping (see :func:`parse_model_kwargs`)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, parse_model_kwargs(values))


def flag_name(action: argparse.Action) -> str:
    """The flag's long name (``--validation-batch-size`` for ``-vb/--validation-batch-size``)."""
    return max(action.option_strings, key=len) if action.option_strings else action.dest


def parse_flags(parser: argparse.ArgumentParser, argv: Optional[List[str]] = None) -> argparse.Namespace:
    """``parser.parse_args(argv)``, a value refused by a :class:`FlagType` raised as one line,
    ``ValueError('--flag must be ..., got ...')`` (as the scripts report every other bad value); any other
    command-line error stays argparse's usage message and exit."""
    parser.exit_on_error = False
    try:
        return parser.parse_args(argv)
    except argparse.ArgumentError as e:
        action = next((a for a in parser._actions if "/".join(a.option_strings) == e.argument_name), None)
        if action is not None and isinstance(action.type, FlagType) and not e.message.startswith("invalid choice"):
            raise ValueError(f"{flag_name(action)} {e.message}") from None
        parser.error(str(e))
