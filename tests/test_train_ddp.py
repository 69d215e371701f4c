"""torchrun with 2 processes (gloo, CPU): identical replicas, and the loss of a single-process run on the
same global batch."""

import csv
import subprocess
import sys

import pytest
import torch
from train_utils import REPO, TINY_MODEL, free_port, make_image_folder, subprocess_env

from matmamba_vision.weights import load_weights

# deterministic inputs: full-image crop, no flip, no dropout, so both runs see exactly the same batches
FLAGS = [
    "-b",
    "8",
    "--epochs",
    "1",
    "--threads",
    "1",
    "-j",
    "0",
    "--no-progress",
    "--hflip",
    "0",
    "--scale",
    "1",
    "1",
    "--ratio",
    "1",
    "1",
    "--smoothing",
    "0",
    "--device",
    "cpu",
    "--warmup-epochs",
    "0",
]


@pytest.mark.parametrize("mode", ["sum", "cycle"])
def test_two_process_ddp_matches_single_process(tmp_path, mode):
    data = make_image_folder(tmp_path / "data", per_class=8)
    args = [*TINY_MODEL, *FLAGS, "--matryoshka-mode", mode, "--data-dir", str(data), "--output", str(tmp_path)]
    env = subprocess_env()
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            str(REPO / "train.py"),
            *args,
            "--experiment",
            "ddp",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ddp.returncode == 0, ddp.stderr[-4000:]
    assert "global batch 8 = 2 ranks" in ddp.stderr
    assert "replicas identical after training (2 ranks)" in ddp.stderr  # checked bit-exactly every epoch
    single = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args, "--experiment", "single"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr[-4000:]

    rows = {name: list(csv.DictReader(open(tmp_path / name / "summary.csv"))) for name in ("ddp", "single")}
    for key in rows["single"][0]:
        if key.startswith(("train_loss", "eval_loss", "eval_top")):
            assert float(rows["ddp"][0][key]) == pytest.approx(float(rows["single"][0][key]), rel=1e-4, abs=1e-5), key
    a = load_weights(tmp_path / "ddp" / "checkpoint-0.safetensors")
    b = load_weights(tmp_path / "single" / "checkpoint-0.safetensors")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-4, rtol=1e-4), k


def _experiment_dir_on_rank(rank: int, port: int, out: str, names: "torch.multiprocessing.Queue") -> None:
    import datetime as real_datetime

    import torch.distributed as dist

    import matmamba_vision.training.outputs as outputs
    from matmamba_vision.training.distributed import from_main

    class Clock(real_datetime.datetime):  # rank 1 reads the clock a second after rank 0
        @classmethod
        def now(cls, tz=None):
            return real_datetime.datetime(2026, 1, 1, 12, 0, rank)

    outputs.datetime = Clock
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        names.put((rank, str(from_main(outputs.experiment_dir(out, "", "m")))))
    finally:
        dist.destroy_process_group()


def test_ranks_share_rank_0s_default_experiment_folder(tmp_path):
    """The default folder name holds the time; a rank reading the clock a second later must still use rank 0's
    folder (it once made its own, empty one)."""
    ctx = torch.multiprocessing.get_context("spawn")
    names, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=_experiment_dir_on_rank, args=(r, port, str(tmp_path), names)) for r in (0, 1)]
    for p in procs:
        p.start()
    got = dict(names.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert got[0] == got[1] == str(tmp_path / "20260101-120000-m")
