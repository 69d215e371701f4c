"""A run killed with SIGKILL after epoch 1 and resumed ends bit-identical to an uninterrupted run."""

import csv
import os
import signal
import subprocess
import time

import pytest
import torch
from train_utils import TINY_MODEL, make_image_folder, subprocess_env, train_cmd

from matmamba_vision.weights import load_torch, load_weights

FLAGS = [
    "-b",
    "8",
    "--epochs",
    "4",
    "--deterministic",
    "--threads",
    "1",
    "-j",
    "0",
    "--no-progress",
    "--drop-path",
    "0.1",
    "--proj-drop",
    "0.1",
    "--reprob",
    "0.25",
    "--mixup",
    "0.2",
    "--model-ema",
    "--model-ema-decay",
    "0.9",
    "--warmup-epochs",
    "1",
    "--checkpoint-hist",
    "4",
]


@pytest.mark.parametrize("sched", [[], ["--no-sched-on-updates"]], ids=["per-update", "per-epoch"])
def test_sigkill_then_resume_is_bit_identical(tmp_path, sched):
    """Both scheduler steppings: the per-epoch one resumes through its own branch (scheduler.step(epoch))."""
    data = make_image_folder(tmp_path / "data", per_class=16)
    base = [*TINY_MODEL, *FLAGS, *sched, "--data-dir", str(data), "--output", str(tmp_path)]
    env = subprocess_env()
    whole = subprocess.run(
        train_cmd([*base, "--experiment", "whole"]), env=env, capture_output=True, text=True, timeout=600
    )
    assert whole.returncode == 0, whole.stderr[-3000:]

    killed = subprocess.Popen(
        train_cmd([*base, "--experiment", "killed"]), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    first = tmp_path / "killed" / "checkpoint-0.state.pt"
    deadline = time.time() + 300
    while not first.exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert first.exists() and killed.poll() is None, "the run should be mid-training after epoch 1"
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "checkpoint-3.state.pt").exists()

    resumed = subprocess.run(
        train_cmd([*base, "--resume", str(tmp_path / "killed")]), env=env, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr

    a = load_weights(tmp_path / "whole" / "checkpoint-3.safetensors")
    b = load_weights(tmp_path / "killed" / "checkpoint-3.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = (load_torch(tmp_path / name / "checkpoint-3.state.pt") for name in ("whole", "killed"))
    assert sa["step"] == sb["step"] == 4 * 6
    assert all(torch.equal(sa["ema"][k], sb["ema"][k]) for k in sa["ema"])
    rows = [list(csv.DictReader(open(tmp_path / name / "summary.csv"))) for name in ("whole", "killed")]
    assert [r["epoch"] for r in rows[1]] == ["0", "1", "2", "3"]
    strip = [[{k: v for k, v in r.items() if k != "epoch_time"} for r in rs] for rs in rows]
    assert strip[0] == strip[1]
