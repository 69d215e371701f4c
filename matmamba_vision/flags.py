"""The scripts' command-line surface: flag value checks, the model flags, granularity lists and exit codes.

Each flag's value is checked once, by its argparse ``type=`` (a :class:`FlagType`) or action, at parse time; a
``-c`` config file's values pass through the same functions. ``--model-kwargs`` takes timm's ``KEY=VALUE ...``
or one YAML mapping (``'{depth: 2}'``, as recorded runs' ``args.yaml`` hold it). Every script exits
:data:`EXIT_USAGE` (2) on a usage error (a bad flag, value or input) and :data:`EXIT_FAILURE` (1) when a run
that started fails (:func:`run_script`).
"""

from __future__ import annotations

import argparse
import math
import operator
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type, Union

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
    "GranularityList",
    "parse_granularity_list",
    "add_model_args",
    "model_kwargs_from_args",
    "parse_flags",
    "flag_name",
    "EXIT_USAGE",
    "EXIT_FAILURE",
    "error_line",
    "run_script",
]

EXIT_USAGE = 2  # a bad flag, value or input: argparse's own exit code for a usage error
EXIT_FAILURE = 1  # a run that started and failed (a non-finite loss, an export that does not verify)


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


def parse_granularity_list(values: Union[None, int, str, Sequence[Union[int, str]]], flag: str) -> List[int]:
    """One list of granularities from ``'128 64'``, ``'128,64'``, an integer, or a sequence of those (a config
    file's list): ``[128, 64]``; ValueError naming ``flag`` otherwise."""
    if values is None:
        return []
    out = []
    for item in values if isinstance(values, (list, tuple)) else [values]:
        try:
            if isinstance(item, str):
                out += [int(v) for v in item.replace(",", " ").split()]
            elif isinstance(item, bool):
                raise TypeError
            else:
                out.append(operator.index(item))  # int, numpy integers
        except (TypeError, ValueError):
            raise ValueError(f"{flag}: {item!r} is not a list of integers") from None
    return out


class GranularityList(argparse.Action):
    """A granularity-list flag (``nargs``): ``128 64`` or ``128,64`` stored as ``[128, 64]``."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, parse_granularity_list(values, flag_name(self)))


def add_model_args(
    parser: argparse.ArgumentParser,
    model_default: Optional[str] = None,
    model_help: str = "timm model name",
    num_classes_default: str = "the model's",
    dropout: bool = False,
):
    """The model flags every script takes, timm's names: ``--model/-m``, ``--pretrained``, ``--num-classes``,
    ``--img-size``, ``--in-chans``, ``--model-kwargs``; with ``dropout`` (training) ``--drop``, ``--proj-drop``,
    ``--drop-path``. Returns the ``model`` argument group, for a script's own weights flags.
    :func:`model_kwargs_from_args` turns them into ``create_model`` kwargs."""
    g = parser.add_argument_group("model")
    g.add_argument("--model", "-m", default=model_default, help=model_help)
    g.add_argument("--pretrained", action="store_true", help="the model's published weights (the hub or its cache)")
    g.add_argument(
        "--num-classes", type=positive_int, default=None, help=f"classifier classes (default: {num_classes_default})"
    )
    g.add_argument("--img-size", type=positive_int, default=None, help="input image size (default: the model's)")
    g.add_argument("--in-chans", type=positive_int, default=None, help="input channels (default: the model's)")
    if dropout:
        g.add_argument("--drop", type=drop_prob, default=0.0, help="dropout before the head")
        g.add_argument("--proj-drop", type=drop_prob, default=0.0, help="dropout on the mixers' in/out projections")
        g.add_argument("--drop-path", type=drop_prob, default=0.0, help="stochastic depth (linear over depth)")
    g.add_argument(
        "--model-kwargs",
        nargs="*",
        default=None,
        action=ModelKwargs,
        metavar="KEY=VALUE",
        help="extra timm.create_model kwargs: embed_dim=64 depth=4, or a YAML mapping '{embed_dim: 64, depth: 4}'",
    )
    return g


# flag (its dest) -> create_model kwarg
_DROPOUT_FLAGS = (("drop", "drop_rate"), ("proj_drop", "proj_drop_rate"), ("drop_path", "drop_path_rate"))
_SIZE_FLAGS = ("num_classes", "img_size", "in_chans")


def model_kwargs_from_args(args: argparse.Namespace) -> Dict[str, Any]:
    """``create_model`` kwargs from :func:`add_model_args`' flags: the dropout rates (where the script has them),
    the size flags given, and ``--model-kwargs`` (a dict since parsing). ValueError when a size flag and
    ``--model-kwargs`` give one kwarg two values."""
    kwargs: Dict[str, Any] = {key: getattr(args, dest) for dest, key in _DROPOUT_FLAGS if hasattr(args, dest)}
    extra = args.model_kwargs or {}
    for key in _SIZE_FLAGS:
        value = getattr(args, key, None)
        if value is None:
            continue
        if key in extra and extra[key] != value:
            flag = "--" + key.replace("_", "-")
            raise ValueError(f"{flag} {value} and --model-kwargs {key}={extra[key]!r} disagree; give one of them")
        kwargs[key] = value
    kwargs.update(extra)
    return kwargs


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


def error_line(error: BaseException) -> str:
    """An error's message on one line, for the scripts: a DataLoader worker's error is re-raised with the
    worker's whole traceback in its message, cut here to the original error's own message."""
    text = str(error)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


def run_script(main: Callable[[], Any], failures: Tuple[Type[BaseException], ...] = ()) -> None:
    """A script's ``main()``: a ValueError (bad flags or input) is one line on stderr and exit
    :data:`EXIT_USAGE`, an error in ``failures`` one line and exit :data:`EXIT_FAILURE`; any other error keeps
    its traceback."""
    prog = Path(sys.argv[0]).name
    try:
        main()
    except ValueError as e:
        print(f"{prog}: error: {error_line(e)}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except failures as e:
        print(f"{prog}: error: {error_line(e)}", file=sys.stderr)
        sys.exit(EXIT_FAILURE)
