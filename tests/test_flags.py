"""The scripts' one flag surface: the model flags, granularity lists, the model kwargs and the exit codes."""

import argparse
import subprocess
import sys

import pytest
from train_utils import REPO, subprocess_env

from matmamba_vision.flags import (
    EXIT_FAILURE,
    EXIT_USAGE,
    add_model_args,
    model_kwargs_from_args,
    parse_flags,
    parse_granularity_list,
    run_script,
)


@pytest.mark.parametrize(
    "values, want",
    [(None, []), ("128 64", [128, 64]), (["128,64", "32"], [128, 64, 32]), ([128, 64], [128, 64]), (16, [16])],
)
def test_granularity_list_forms(values, want):
    assert parse_granularity_list(values, "--granularities") == want


@pytest.mark.parametrize("values", ["64 x", ["64", "1.5"], [True], [64.0]])
def test_granularity_list_refuses_what_is_not_integers(values):
    with pytest.raises(ValueError, match="--granularities: .* is not a list of integers"):
        parse_granularity_list(values, "--granularities")


def _model_args(argv, **kwargs):
    parser = argparse.ArgumentParser()
    add_model_args(parser, **kwargs)
    return parse_flags(parser, argv)


def test_model_kwargs_merge_the_model_flags():
    args = _model_args(["--img-size", "56", "--model-kwargs", "depth=2", "num_classes=3"], dropout=True)
    assert model_kwargs_from_args(args) == dict(
        drop_rate=0.0, proj_drop_rate=0.0, drop_path_rate=0.0, img_size=56, depth=2, num_classes=3
    )
    assert model_kwargs_from_args(_model_args([])) == {}  # no dropout flags, nothing given
    same = _model_args(["--num-classes", "3", "--model-kwargs", "num_classes=3"])
    assert model_kwargs_from_args(same) == {"num_classes": 3}


def test_a_size_flag_and_model_kwargs_that_disagree_are_refused():
    args = _model_args(["--img-size", "56", "--model-kwargs", "img_size=28"])
    with pytest.raises(ValueError, match=r"--img-size 56 and --model-kwargs img_size=28 disagree"):
        model_kwargs_from_args(args)


@pytest.mark.parametrize(
    "error, code", [(ValueError("bad --flag"), EXIT_USAGE), (RuntimeError("failed"), EXIT_FAILURE)]
)
def test_run_script_exit_codes(error, code, capsys):
    def main():
        raise error

    with pytest.raises(SystemExit) as caught:
        run_script(main, failures=(RuntimeError,))
    assert caught.value.code == code
    assert capsys.readouterr().err.strip().endswith(f"error: {error}")


@pytest.mark.parametrize("script", ["train.py", "validate.py", "retrieval.py", "export.py"])
def test_every_script_checks_the_model_flags_alike_and_exits_2(script, tmp_path):
    """export.py declared the model flags again with plain int (--num-classes 0 went on to build a model), and
    train.py exited 1 on a usage error where the others exit 2."""
    extra = ["--output", str(tmp_path / "m.onnx"), "--pretrained"] if script == "export.py" else []
    done = subprocess.run(
        [sys.executable, str(REPO / script), "--num-classes", "0", *extra],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == EXIT_USAGE, done.stderr[-2000:]
    assert done.stderr.strip() == f"{script}: error: --num-classes must be at least 1, got 0"
