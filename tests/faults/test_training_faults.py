"""train.py under faults: SIGKILL inside a checkpoint write, read-only and full output folders, and
--resume after the model or the granularities changed.

(A non-finite loss is tested in tests/test_train_cli.py::test_non_finite_loss_stops_and_keeps_last_good_checkpoint.)
"""

import hashlib
import os
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import timm
import torch
from train_utils import TINY_MODEL, make_image_folder, subprocess_env, train_cmd

from matmamba_vision.runtime import check_output_dir
from matmamba_vision.training import main
from matmamba_vision.training.checkpoint_files import newest_checkpoint
from matmamba_vision.training.checkpointing import load_training_state
from matmamba_vision.weights import load_torch

FLAGS = ["-b", "4", "--threads", "1", "-j", "0", "--no-progress"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data"), per_class=4)  # 12 images: 3 steps per epoch


def run(data, output, *extra, experiment="run", epochs=2):
    return main(
        [
            *TINY_MODEL,
            *FLAGS,
            "--data-dir",
            str(data),
            "--output",
            str(output),
            "--experiment",
            experiment,
            "--epochs",
            str(epochs),
            *extra,
        ]
    )


def digests(folder: Path, skip=("log.txt",)):
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name not in skip
    }


def tiny_model():
    return timm.create_model(
        "matmamba_vision_tiny_patch4_28", embed_dim=32, depth=2, d_state=8, headdim=4, num_classes=3
    )


# ---- SIGKILL while a checkpoint file is being written ----------------------------------------------------------

# train.py with atomic_write slowed down for one file: the temporary file is half written, a marker file says
# so, and the process sleeps until it is killed. The kill therefore always lands inside that write.
_PAUSE_IN_WRITE = r"""
import os, runpy, sys, time
from pathlib import Path
import matmamba_vision.weights as ck
target, marker = os.environ["PAUSE_FILE"], os.environ["PAUSE_MARKER"]
original = ck.atomic_write
def paused(path, write):
    def half_written(tmp):
        write(tmp)
        if Path(path).name == target:
            size = os.path.getsize(tmp)
            with open(tmp, "r+b") as f:
                f.truncate(size // 2)
            Path(marker).write_text(tmp)
            time.sleep(600)
    return original(path, half_written)
ck.atomic_write = paused
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("target", ["checkpoint-1.safetensors", "checkpoint-1.state.pt"])
def test_sigkill_inside_a_checkpoint_write_keeps_the_previous_one_and_resume_works(tmp_path, data, target):
    out = tmp_path / "run"
    marker = tmp_path / "paused"
    cmd = train_cmd(
        [
            *TINY_MODEL,
            *FLAGS,
            "--data-dir",
            str(data),
            "--output",
            str(tmp_path),
            "--experiment",
            "run",
            "--epochs",
            "2",
            "--checkpoint-hist",
            "1",
        ]
    )
    env = dict(subprocess_env(), PAUSE_FILE=target, PAUSE_MARKER=str(marker))
    proc = subprocess.Popen(
        [cmd[0], "-c", _PAUSE_IN_WRITE, *cmd[1:]], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.time() + 240
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert marker.exists() and proc.poll() is None, proc.stderr.read().decode()[-3000:] if proc.poll() else ""
        before = digests(out)
        half = Path(marker.read_text())
        assert half.is_file() and half.parent == out  # the write in progress
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert digests(out) == before
    # the previous checkpoint is the newest complete one, and it loads
    assert newest_checkpoint(out) == out / "checkpoint-0.state.pt"
    state = load_training_state(out / "checkpoint-0.state.pt", tiny_model())
    assert state["epoch"] == 0 and state["step"] == 3
    assert not (out / "checkpoint-1.state.pt").exists()
    # --resume continues from it, replaces the half-done epoch and clears the orphaned temporary file
    metrics = run(data, tmp_path, "--resume", str(out), "--checkpoint-hist", "1", experiment="")
    assert sorted(metrics) == [4, 8, 16, 32]
    assert "continuing at epoch 1, step 3" in (out / "log.txt").read_text()
    final = load_torch(out / "checkpoint-1.state.pt")
    assert final["epoch"] == 1 and final["step"] == 6
    load_training_state(out / "checkpoint-1.state.pt", tiny_model())
    assert not (out / "checkpoint-0.state.pt").exists()  # --checkpoint-hist 1
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")], "orphaned temporary files remain"


# ---- --resume with another model or other granularities --------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("trained")
    run(data, root, epochs=1)
    return root / "run"


@contextmanager
def no_state_loaded():
    """Fails the test if any module or optimiser state is loaded meanwhile."""
    calls = []
    originals = {cls: cls.load_state_dict for cls in (torch.nn.Module, torch.optim.Optimizer)}

    def spy(cls):
        def load_state_dict(self, *a, **k):
            calls.append(type(self).__name__)
            return originals[cls](self, *a, **k)

        return load_state_dict

    for cls in originals:
        cls.load_state_dict = spy(cls)
    try:
        yield calls
    finally:
        for cls, fn in originals.items():
            cls.load_state_dict = fn


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--granularities", "32,8"], r"granularities \[32, 16, 8, 4\].*\[32, 8\]"),
        (["--model-kwargs", "{embed_dim: 32, depth: 1, d_state: 8, headdim: 4}"], r"depth: 2 -> 1"),
        (
            ["--model-kwargs", "{embed_dim: 32, depth: 2, d_state: 8, headdim: 4, chunk_size: 64}"],
            r"chunk_size: 256 -> 64",
        ),
        (["--img-size", "32"], r"img_size: 28 -> 32"),
        (
            [
                "--model",
                "matmamba_vision_35m_patch16_224",
                "--model-kwargs",
                "{img_size: 28, patch_size: 4, embed_dim: 32, depth: 2, d_state: 8, headdim: 4}",
            ],
            r"--model matmamba_vision_tiny_patch4_28.*matmamba_vision_35m_patch16_224",
        ),
    ],
)
def test_resume_after_a_change_of_model_or_granularities_is_refused(tmp_path, data, trained, flags, message):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    before = digests(out)
    with no_state_loaded() as loads, pytest.raises(ValueError, match=r"--resume .*checkpoint-0\.state\.pt.*" + message):
        run(data, tmp_path, "--resume", str(out), *flags, experiment="")
    assert loads == [], f"state loaded before the refusal: {loads}"
    assert digests(out) == before and newest_checkpoint(out) == out / "checkpoint-0.state.pt"


def test_resume_with_other_regularisation_is_accepted(tmp_path, data, trained):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    run(data, tmp_path, "--resume", str(out), "--drop-path", "0.1", "--proj-drop", "0.1", experiment="")
    assert load_torch(out / "checkpoint-1.state.pt")["step"] == 6


# ---- read-only and full output folders, reported before training starts ----------------------------------------


@contextmanager
def tmpfs(path: Path, options: str):
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({done.stderr.decode().strip()}); the checks without a mount "
            "run in test_preflight_*"
        )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def test_read_only_output_is_reported_before_training(tmp_path, data):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        with pytest.raises(ValueError, match=rf"--output {ro}/run: cannot write there.*Read-only file system"):
            run(data, ro)


def test_full_disk_is_reported_before_training(tmp_path, data):
    with tmpfs(tmp_path / "small", "size=256k") as small:
        with pytest.raises(ValueError, match=rf"--output {small}/run: .* MiB free, .*checkpoints need about"):
            run(data, small)
        assert not list(small.rglob("checkpoint-*"))
        with open(small / "filler", "wb") as f:  # now completely full: even the write probe fails
            with pytest.raises(OSError):
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
        with pytest.raises(ValueError, match=rf"--output {small}/run2: cannot write there.*No space left"):
            run(data, small, experiment="run2")
        assert not list(small.rglob("checkpoint-*"))


def test_preflight_free_space_estimate(tmp_path, data, monkeypatch):
    real = shutil.disk_usage
    need = {}

    def fake(path):
        usage = real(path)
        return usage._replace(free=need.get("free", usage.free))

    monkeypatch.setattr(shutil, "disk_usage", fake)
    need["free"] = 200 * 1024
    with pytest.raises(ValueError, match=r"--output .*run: 0\.2 MiB free, .*checkpoints need about [\d.]+ MiB"):
        run(data, tmp_path, epochs=1)
    assert not list(tmp_path.rglob("checkpoint-*"))
    need["free"] = 64 << 20  # enough for the tiny model
    run(data, tmp_path, epochs=1)
    assert (tmp_path / "run" / "checkpoint-0.state.pt").is_file()


def test_preflight_unwritable_folder(tmp_path):
    """A folder this process may not write to: chmod, and as root an unprivileged effective user."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    as_root = os.geteuid() == 0
    try:
        if as_root:
            os.seteuid(65534)  # nobody: the permission bits apply again
        with pytest.raises(ValueError, match=rf"--output {locked}: cannot write there.*Permission denied"):
            check_output_dir(locked)
        with pytest.raises(ValueError, match=rf"--output {locked}/sub: cannot write there.*Permission denied"):
            check_output_dir(locked / "sub")
    finally:
        if as_root:
            os.seteuid(0)
        locked.chmod(0o755)
    assert list(locked.iterdir()) == []
    check_output_dir(locked / "sub")  # writable again: no error, and the probe leaves no trace (file or folder)
    assert list(locked.iterdir()) == []
    (locked / "sub").mkdir()
    check_output_dir(locked / "sub")  # a folder that was there stays, empty
    assert list((locked / "sub").iterdir()) == []


def test_output_is_a_file(tmp_path, data):
    (tmp_path / "taken").write_text("not a folder")
    with pytest.raises(ValueError, match=r"--output .*taken/run: cannot write there"):
        run(data, tmp_path / "taken")


def test_scripts_report_a_read_only_folder_in_one_line(tmp_path, data):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        done = subprocess.run(
            train_cmd([*TINY_MODEL, *FLAGS, "--data-dir", str(data), "--output", str(ro)]),
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert done.returncode == 2 and done.stderr.startswith("train.py: error: --output"), done.stderr[-2000:]
    assert "Traceback" not in done.stderr
