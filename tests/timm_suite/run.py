#!/usr/bin/env python3
"""timm's own model tests over every registered ``matmamba*`` model: ``make test`` runs this after the suite.

The tests are ``tests/test_models.py`` of the installed timm version's source distribution, run as published
(unpatched). The first run fetches it with pip (PyPI only) and unpacks it once into ``CACHE/<version>/``.
pytest loads ``matmamba_vision`` as a plugin (``-p``), so the models are registered when the file builds its
lists, and ``-k`` picks our models, as timm's CI picks its own by marker and name.

    python tests/timm_suite/run.py --cache .venv/timm-tests [PYTEST ARGS ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import timm

HERE = Path(__file__).resolve().parent

# Tests left out for our models, each with its reason (as timm's own EXCLUDE_*_FILTERS lists carry theirs).
EXCLUDED = {
    # timm runs its token-sequence models (vit_*, deit*, eva_* ...: NON_STD_FILTERS) through the non-standard
    # checks instead: this one wants NCHW feature maps. Ours return (batch, tokens, dim) as ViT does;
    # nonstd.py runs test_model_default_cfgs_non_std, as published, over every matmamba* model.
    "test_model_default_cfgs[": "a token-sequence model: the non-standard checks (nonstd.py) apply",
    # TorchScript compiles no lambda, try block or closure; the mixer's granularity slicing and backend choice
    # (torch, Triton, mamba_ssm) use them. torch 2.14 deprecates torch.jit.script; export.py's ONNX and
    # torch.export paths are the supported ones.
    "test_model_forward_torchscript": "not scriptable (TorchScript)",
    "test_model_forward_fx_torchscript": "not scriptable (TorchScript, after the fx trace)",
    # Both download the published weights; the suite runs without network (timm's CI skips them as well).
    "test_model_load_pretrained": "needs the network",
    "test_model_features_pretrained": "needs the network",
}


def timm_tests(cache: Path, version: str) -> Path:
    """``CACHE/<version>/tests/test_models.py``, fetched (``pip download`` of timm's sdist) and unpacked once."""
    root = cache / version
    test_file = root / "tests" / "test_models.py"
    if test_file.is_file():
        return test_file
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*pip, f"timm=={version}", "-d", tmp], check=True)
        (sdist,) = Path(tmp).glob("timm-*.tar.gz")
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        (unpacked,) = (p for p in Path(tmp).iterdir() if p.is_dir())
        shutil.rmtree(root, ignore_errors=True)
        unpacked.rename(root)  # whole or not at all: a failed fetch leaves no half-unpacked version behind
    return test_file


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--cache", default=".venv/timm-tests", help="where the sdists' tests are kept (default: %(default)s)"
    )
    args, pytest_args = p.parse_known_args(argv)
    test_file = timm_tests(Path(args.cache), timm.__version__)
    select = "matmamba and not (" + " or ".join(EXCLUDED) + ")"
    env = dict(os.environ, TIMM_TEST_MODELS=str(test_file.resolve()))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "matmamba_vision", "-k", select]
    cmd += ["-W", "ignore::pytest.PytestUnknownMarkWarning"]  # timm's timeout marks need pytest-timeout
    cmd += [str(test_file), str(HERE / "nonstd.py"), *pytest_args]
    print(f"timm {timm.__version__}: {test_file} + {HERE / 'nonstd.py'}, excluded: {list(EXCLUDED)}", flush=True)
    return subprocess.run(cmd, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
