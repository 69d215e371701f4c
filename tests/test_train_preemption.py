"""Issue 18: training that survives preemption and lost ranks. SIGTERM mid-epoch (one process, two ranks),
SIGKILL of a rank under torchrun restarts with --resume auto, SIGTERM inside a checkpoint write, SIGTERM twice,
and the run folder's lock. Every resumed run must end bit-identical to an uninterrupted one (CPU,
--deterministic, -j 0).

The runs are paused at chosen optimiser steps by a wrapper around train.py (marker files, see _PAUSED), so every
signal lands at a known step however slow the machine is."""

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_utils import REPO, TINY_MODEL, free_port, make_image_folder, subprocess_env

from matmamba_vision.training import main
from matmamba_vision.training.checkpoint_files import newest_checkpoint
from matmamba_vision.training.preemption import EXIT_DEADLINE, EXIT_PREEMPTED, EXIT_SECOND_SIGNAL
from matmamba_vision.training.run_lock import LOCK_NAME, RunLock, _start_time
from matmamba_vision.weights import load_torch, load_weights

# 24 images, 4 per step: 6 steps per epoch, 2 epochs; every source of randomness on (dropout, drop-path, mixup,
# random erasing, EMA) so that a wrongly restored RNG or data position shows in the weights
FLAGS = [
    *TINY_MODEL,
    "-b",
    "4",
    "--epochs",
    "2",
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
    "--device",
    "cpu",
    "--checkpoint-interval-steps",
    "2",
]

# train.py, pausing after the optimiser steps in PAUSE_STEPS (global counts, read from AdamW's state) until
# PAUSE_DIR/go-STEP exists; PAUSE_DIR/paused-RANK-STEP (holding the pid) says it is waiting. PAUSE_WRITE=NAME
# instead pauses inside the atomic write of file NAME (half written), for good.
_PAUSED = r"""
import os, runpy, sys, time
from pathlib import Path
import matmamba_vision.weights as ck
import matmamba_vision.training.matryoshka as mt
where, rank = Path(os.environ["PAUSE_DIR"]), os.environ.get("RANK", "0")
steps = {int(s) for s in os.environ.get("PAUSE_STEPS", "").split(",") if s}
original_call, original_write = mt.MatryoshkaStep.__call__, ck.atomic_write
def mark(name, text):  # the marker appears with its content, never empty (the test reads it as soon as it exists)
    (where / f".{name}").write_text(text)
    os.replace(where / f".{name}", where / name)
def call(self, *a, **k):
    out = original_call(self, *a, **k)
    step = int(next(iter(self.optimizer.state.values()))["step"])
    if step in steps:
        mark(f"paused-{rank}-{step}", str(os.getpid()))
        while not (where / f"go-{step}").exists():
            time.sleep(0.01)
    return out
def write(path, fn):
    def half(tmp):
        fn(tmp)
        if Path(path).name == os.environ.get("PAUSE_WRITE"):
            with open(tmp, "r+b") as f:
                f.truncate(os.path.getsize(tmp) // 2)
            mark("paused-write", tmp)
            time.sleep(600)
    return original_write(path, half)
mt.MatryoshkaStep.__call__, ck.atomic_write = call, write
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data"), per_class=8)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    if not path.exists():
        log = path.parent / "stderr.txt"
        raise AssertionError(
            f"{path.name} never appeared (exit {proc.poll()}): {log.read_text()[-3000:] if log.exists() else ''}"
        )


def _paused(cmd, env, pause_dir: Path, launcher=(sys.executable,), **pause) -> subprocess.Popen:
    """``launcher`` (python, or torchrun) running train.py ``cmd`` through the pausing wrapper; stderr to a file."""
    script = pause_dir / "paused_train.py"
    script.write_text(_PAUSED)
    env = dict(env, PAUSE_DIR=str(pause_dir), **{f"PAUSE_{k.upper()}": str(v) for k, v in pause.items()})
    return subprocess.Popen(
        [*launcher, str(script), *cmd],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(pause_dir / "stderr.txt", "w"),
        text=True,
    )


def _stderr(pause_dir: Path) -> str:
    return (pause_dir / "stderr.txt").read_text()


def _torchrun(max_restarts: int):
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--max-restarts",
        str(max_restarts),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
    ]


def _same_ending(a: Path, b: Path, last: int = 1) -> None:
    """The final weights, EMA, step and summary rows (less the time taken) of two runs are identical."""
    wa, wb = (load_weights(d / f"checkpoint-{last}.safetensors") for d in (a, b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), "final weights differ"
    sa, sb = (load_torch(d / f"checkpoint-{last}.state.pt") for d in (a, b))
    assert sa["step"] == sb["step"]
    assert all(torch.equal(sa["ema"][k], sb["ema"][k]) for k in sa["ema"])
    rows = [
        [{k: v for k, v in r.items() if k != "epoch_time"} for r in csv.DictReader(open(d / "summary.csv"))]
        for d in (a, b)
    ]
    assert rows[0] == rows[1]


def test_sigterm_mid_epoch_single_process_resumes_bit_identical(tmp_path, data):
    """Also: a second run pointed at the live run's folder is refused naming its pid; the same command line with
    --resume auto first starts fresh, then continues from the stop checkpoint."""
    base = [*FLAGS, "--data-dir", str(data), "--output", str(tmp_path), "--resume", "auto"]
    env = subprocess_env()
    whole = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *base, "--experiment", "whole"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert whole.returncode == 0, whole.stderr[-3000:]

    run = tmp_path / "run"
    cmd = [str(REPO / "train.py"), *base, "--experiment", "run"]
    proc = _paused(cmd, env, tmp_path, steps=3)
    try:
        _wait_for(tmp_path / "paused-0-3", proc)
        assert (run / "checkpoint-0-2.state.pt").is_file()  # the interval checkpoint
        with pytest.raises(ValueError, match=rf"in use by a live run, pid {proc.pid} on .*train.py"):
            main(
                [
                    *TINY_MODEL,
                    "--data-dir",
                    str(data),
                    "--output",
                    str(tmp_path),
                    "--resume",
                    "auto",
                    "--experiment",
                    "run",
                ]
            )
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        (tmp_path / "go-3").touch()
        proc.wait(timeout=60)
        took = time.monotonic() - t0
    finally:
        proc.kill()
    stderr = _stderr(tmp_path)
    assert proc.returncode == EXIT_PREEMPTED, stderr[-3000:]
    written = re.search(r"written ([\d.]+) s after the signal", stderr)
    print(f"\nsingle process: SIGTERM to checkpoint {written and written.group(1)} s, to exit {took:.2f} s")
    assert took < 25
    assert "SIGTERM: stopping after this optimiser step" in stderr and "checkpoint-0-3.state.pt written" in stderr
    # the stop checkpoint is at the step the signal came in, and replaced the older in-epoch one
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-0-3.safetensors", "checkpoint-0-3.state.pt"]
    assert load_torch(run / "checkpoint-0-3.state.pt")["step"] == 3
    assert not (run / LOCK_NAME).exists()

    _plant_lock(run, pid=_dead_pid())  # as a SIGKILLed run leaves it: taken over
    resumed = subprocess.run([sys.executable, *cmd], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "continuing at epoch 0, step 3 (batch 4 of 6)" in resumed.stderr
    assert "taking over the lock of a run that is gone" in resumed.stderr
    _same_ending(tmp_path / "whole", run)


def _rank_pid(pause_dir: Path, rank: int, step: int) -> int:
    return int((pause_dir / f"paused-{rank}-{step}").read_text())


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _plant_lock(folder: Path, pid: int, host=None, ticks=None, cmd="train.py --epochs 2") -> Path:
    import json
    import socket

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    path.write_text(
        json.dumps(
            {
                "pid": pid,
                "host": host or socket.gethostname(),
                "since": time.time(),
                "start_ticks": ticks if ticks is not None else _start_time(pid),
                "cmd": cmd,
            }
        )
    )
    return path


def test_two_ranks_sigkill_under_torchrun_restart_then_sigterm(tmp_path, data):
    """torchrun --max-restarts 1 with --resume auto: rank 1 SIGKILLed at step 3 (after the step-2 checkpoint), the
    restarted ranks continue from it; then rank 1 alone gets SIGTERM at step 5 and both ranks stop at that step
    (exit 75; no restarts left, so torchrun stops too); the same command again finishes the run. It ends
    bit-identical to an uninterrupted 2-rank run."""
    base = [
        *FLAGS,
        "--data-dir",
        str(data),
        "--output",
        str(tmp_path),
        "--resume",
        "auto",
        "--preempt-deadline",
        "10",
        "--epochs",
        "1",
    ]
    env = subprocess_env()
    whole = subprocess.run(
        [*_torchrun(0), str(REPO / "train.py"), *base, "--experiment", "whole"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert whole.returncode == 0, whole.stderr[-4000:]

    run = tmp_path / "run"
    cmd = [str(REPO / "train.py"), *base, "--experiment", "run"]
    proc = _paused(cmd, env, tmp_path, launcher=_torchrun(1), steps="3,5")
    try:
        for rank in (0, 1):
            _wait_for(tmp_path / f"paused-{rank}-3", proc)
        assert (run / "checkpoint-0-2.state.pt").is_file()
        first = _rank_pid(tmp_path, 0, 3)
        os.kill(_rank_pid(tmp_path, 1, 3), signal.SIGKILL)
        (tmp_path / "go-3").touch()
        # torchrun restarts both ranks; --resume auto finds checkpoint-0-2; step 3 is replayed, step 5 pauses
        for rank in (0, 1):
            _wait_for(tmp_path / f"paused-{rank}-5", proc)
        assert _rank_pid(tmp_path, 0, 5) != first, "rank 0 should have been restarted"
        t0 = time.monotonic()
        os.kill(_rank_pid(tmp_path, 1, 5), signal.SIGTERM)  # rank 1 only: rank 0 must stop at the same step
        (tmp_path / "go-5").touch()
        proc.wait(timeout=120)
        took = time.monotonic() - t0
    finally:
        proc.kill()
    log = _stderr(tmp_path)
    written = re.findall(r"written ([\d.]+) s after the signal", log)
    print(f"\n2 ranks: SIGTERM (to rank 1) to checkpoint {written} s, to torchrun's exit {took:.2f} s")
    assert proc.returncode != 0 and re.search(r"exitcode\s*:\s*75", log), log[-4000:]
    assert "continuing at epoch 0, step 2 (batch 3 of 6)" in log
    assert sorted(p.name for p in run.glob("checkpoint-*.state.pt")) == ["checkpoint-0-5.state.pt"]
    assert load_torch(run / "checkpoint-0-5.state.pt")["step"] == 5
    assert took < 25

    again = subprocess.run([*_torchrun(1), *cmd], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "continuing at epoch 0, step 5 (batch 6 of 6)" in again.stderr
    _same_ending(tmp_path / "whole", run, last=0)


@pytest.mark.parametrize("second", [False, True], ids=["deadline", "sigterm-twice"])
def test_sigterm_inside_a_checkpoint_write(tmp_path, data, second):
    """The write of checkpoint-0-4's state (the commit point) hangs half written. One SIGTERM: exit 76 at
    --preempt-deadline; a second SIGTERM (past the duplicate window): exit 77 at once. Either way no partial file
    is left, and the previous checkpoint is the newest complete one."""
    run = tmp_path / "run"
    deadline = 10 if second else 3
    cmd = [
        str(REPO / "train.py"),
        *FLAGS,
        "--data-dir",
        str(data),
        "--output",
        str(tmp_path),
        "--experiment",
        "run",
        "--epochs",
        "1",
        "--preempt-deadline",
        str(deadline),
    ]
    proc = _paused(cmd, subprocess_env(), tmp_path, write="checkpoint-0-4.state.pt")
    try:
        _wait_for(tmp_path / "paused-write", proc)
        half = Path((tmp_path / "paused-write").read_text())
        assert half.is_file() and half.parent == run
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        if second:
            time.sleep(1.5)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        took = time.monotonic() - t0
    finally:
        proc.kill()
    stderr = _stderr(tmp_path)
    assert proc.returncode == (EXIT_SECOND_SIGNAL if second else EXIT_DEADLINE), stderr[-3000:]
    print(f"\n{'second SIGTERM' if second else 'SIGTERM'} to exit: {took:.2f} s")
    assert took < (1.0 if second else deadline)
    assert not half.exists() and not list(run.glob(".*.tmp")), "a partial file was left"
    assert newest_checkpoint(run) == run / "checkpoint-0-2.state.pt"
    assert load_torch(run / "checkpoint-0-2.state.pt")["step"] == 2


def test_run_lock_live_stale_recycled_and_remote(tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen(["sleep", "60"])
    try:
        path = _plant_lock(folder, holder.pid, cmd="train.py --experiment run")
        before = path.read_text()
        with pytest.raises(ValueError, match=rf"in use by a live run, pid {holder.pid} on .*train.py --experiment run"):
            RunLock(folder).acquire()
        assert path.read_text() == before
        # the same pid started at another time is another process: the lock is stale
        _plant_lock(folder, holder.pid, ticks="1")
        with RunLock(folder):
            assert f'"pid": {os.getpid()}' in path.read_text()
        assert not path.exists()
    finally:
        holder.kill()
        holder.wait()
    _plant_lock(folder, holder.pid)  # its process is gone
    lock = RunLock(folder).acquire()
    with pytest.raises(ValueError, match=rf"pid {os.getpid()}"):
        RunLock(folder).check()
    lock.release()
    # another host's lock: live while refreshed, stale after STALE_AFTER_S
    path = _plant_lock(folder, 1, host="elsewhere", ticks="1")
    with pytest.raises(ValueError, match="pid 1 on elsewhere"):
        RunLock(folder).acquire()
    old = time.time() - 3600
    os.utime(path, (old, old))
    RunLock(folder).acquire().release()


@pytest.mark.parametrize(
    "flags, error",
    [  # numbers: one-line ValueError (the shared flag types); names: argparse's
        (["--preempt-signal", "SIGKILL"], SystemExit),
        (["--preempt-signal", "NOPE"], SystemExit),
        (["--preempt-deadline", "0"], ValueError),
        (["--checkpoint-interval-steps", "-1"], ValueError),
        (["--checkpoint-interval-minutes", "nan"], ValueError),
    ],
)
def test_bad_preemption_flags(flags, error, capsys):
    from matmamba_vision.training.config import parse_args

    with pytest.raises(error) as refused:
        parse_args(flags)
    assert flags[0] in (capsys.readouterr().err if error is SystemExit else str(refused.value))
    assert parse_args(["--preempt-signal", "usr1"]).preempt_signal == ["SIGUSR1"]


def test_resume_auto_needs_an_experiment_name(tmp_path, data):
    with pytest.raises(ValueError, match="--resume auto needs --experiment"):
        main([*TINY_MODEL, "--data-dir", str(data), "--output", str(tmp_path), "--resume", "auto"])
    assert not list(tmp_path.iterdir())


def test_newest_checkpoint_order_and_pruning(tmp_path):
    from matmamba_vision.training.checkpoint_files import prune_mid_epoch

    for stem in ("checkpoint-0", "checkpoint-0-5", "checkpoint-1-3", "checkpoint-1-12"):
        for ext in (".safetensors", ".state.pt"):
            (tmp_path / f"{stem}{ext}").touch()
    (tmp_path / "checkpoint-2-1.safetensors").touch()  # weights without a state file: an unfinished checkpoint
    assert newest_checkpoint(tmp_path) == tmp_path / "checkpoint-1-12.state.pt"  # batches ordered as numbers
    prune_mid_epoch(tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.state.pt")) == ["checkpoint-0.state.pt", "checkpoint-1-12.state.pt"]
    (tmp_path / "checkpoint-1.state.pt").touch()  # the end of epoch 1 supersedes its in-epoch checkpoint
    prune_mid_epoch(tmp_path)
    assert newest_checkpoint(tmp_path) == tmp_path / "checkpoint-1.state.pt"
    assert not (tmp_path / "checkpoint-1-12.safetensors").exists()


def test_checkpoint_trigger_intervals(monkeypatch):
    from matmamba_vision.training import midepoch

    now = [0.0]
    monkeypatch.setattr(midepoch.time, "monotonic", lambda: now[0])
    trigger = midepoch.CheckpointTrigger(every_steps=3, every_minutes=0.5)
    assert trigger.poll(1) == (False, False) and trigger.poll(3) == (True, False)
    assert trigger.poll(6, last=True) == (False, False)  # the end-of-epoch checkpoint follows anyway
    now[0] = 31.0
    assert trigger.poll(7) == (True, False)
    trigger.written()
    assert trigger.poll(8) == (False, False)

    class Signalled:
        requested = True

    trigger.preemption = Signalled()
    assert trigger.poll(8, last=True) == (True, True)


def _batches(loader, epoch, start=0, state=None, rng=None):
    from matmamba_vision.training.checkpointing import set_rng_state

    if rng is not None:
        set_rng_state(rng)
    loader.set_epoch(epoch, start, state)
    return list(loader)


@pytest.mark.parametrize("kind", ["tensor", "folder"])
def test_loaders_resume_inside_an_epoch(tmp_path, kind):
    """A loader set to start an epoch after k batches (with the loader state and RNGs of that moment) yields
    exactly the rest of the uninterrupted epoch: the preloaded tensor path (Fashion-MNIST) and the folder path."""
    from matmamba_vision.data import TensorAugment, TensorTrainLoader, create_train_loader
    from matmamba_vision.training.checkpointing import rng_state

    if kind == "tensor":
        images = torch.randint(0, 255, (40, 1, 28, 28), dtype=torch.uint8)
        augment = TensorAugment((0.5,), (0.5,), pad=2, hflip=0.5, re_prob=0.5)
        make = lambda: TensorTrainLoader(images, torch.arange(40) % 3, ["a", "b", "c"], 4, augment, seed=3)  # noqa: E731
    else:
        data = make_image_folder(tmp_path, per_class=4)
        config = dict(
            input_size=(3, 28, 28),
            interpolation="bilinear",
            mean=(0.5,) * 3,
            std=(0.5,) * 3,
            crop_pct=1.0,
            crop_mode="center",
        )
        make = lambda: create_train_loader("folder", str(data), "train", config, 2, 0, seed=3, re_prob=0.5)  # noqa
    torch.manual_seed(0)
    whole, loader = [], make()
    loader.set_epoch(1)
    for i, batch in enumerate(loader):
        whole.append(batch)
        if i + 1 == 2:
            saved, rng = loader.state_dict(), rng_state()
    rest = _batches(make(), 1, 2, saved, rng)
    assert len(rest) == len(whole) - 2
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(rest, whole[2:]))
    assert len(_batches(make(), 2)) == len(whole)  # the next epoch starts at its beginning again


def test_loader_workers_survive_a_scheduler_sigterm(tmp_path):
    """A scheduler signals every process of the job: a DataLoader worker must not die of it (the main process
    would fail at once instead of checkpointing)."""
    from matmamba_vision.data import create_train_loader

    data = make_image_folder(tmp_path, per_class=4)
    config = dict(
        input_size=(3, 28, 28),
        interpolation="bilinear",
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        crop_pct=1.0,
        crop_mode="center",
    )
    loader = create_train_loader("folder", str(data), "train", config, 2, 1, seed=3)
    loader.set_epoch(0)
    it = iter(loader.loader)
    next(it)
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        os.kill(it._workers[0].pid, sig)
    time.sleep(0.5)
    assert len(list(it)) == len(loader) - 1
