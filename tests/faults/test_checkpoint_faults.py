"""Checkpoint files that are truncated, bit-flipped, hostile, or interrupted mid-write."""

import ast
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch

from matmamba_vision.weights import (
    CheckpointError,
    load_checkpoint,
    load_torch,
    load_weights,
    save_torch,
    save_weights,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def model():
    return timm.create_model("matmamba_vision_tiny_patch4_28", embed_dim=32, depth=2, d_state=8)


def corrupt(path: Path, offset_from_end: int = None, truncate_to: float = None) -> None:
    data = bytearray(path.read_bytes())
    if truncate_to is not None:
        data = data[: int(len(data) * truncate_to)]
    else:
        data[len(data) - offset_from_end] ^= 0x04
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncate_half", "truncate_header", "flip_tensor_byte", "flip_header_byte"])
def test_damaged_safetensors_named_in_error(model, tmp_path, how):
    path = tmp_path / "model.safetensors"
    save_weights(model.state_dict(), path)
    size = path.stat().st_size
    if how == "truncate_half":
        corrupt(path, truncate_to=0.5)
    elif how == "truncate_header":
        corrupt(path, truncate_to=16 / size)
    elif how == "flip_tensor_byte":
        corrupt(path, offset_from_end=17)
    else:
        corrupt(path, offset_from_end=size - 20)
    with pytest.raises(CheckpointError, match=str(path)):
        load_weights(path)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(model, path)


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_damaged_state_file_named_in_error(tmp_path, how):
    path = tmp_path / "state.pth"
    save_torch({"optimizer": {"exp_avg": torch.randn(256, 64)}, "epoch": 4}, path)
    if how == "truncate":
        corrupt(path, truncate_to=0.6)
    else:
        corrupt(path, offset_from_end=path.stat().st_size // 2)
    with pytest.raises(CheckpointError, match="state.pth"):
        load_torch(path)


def test_atomic_write_syncs_the_data_before_the_rename_and_then_the_folder(tmp_path, monkeypatch):
    """A kill leaves the page cache to the kernel, so only this order survives a power loss: the new file's
    data on disk before the rename makes it visible, then the folder's entry."""
    import matmamba_vision.weights as ck

    events, fsync, replace = [], os.fsync, os.replace

    def logged_fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return fsync(fd)

    def logged_replace(src, dst):
        events.append(("replace", str(src)))
        return replace(src, dst)

    monkeypatch.setattr(ck.os, "fsync", logged_fsync)
    monkeypatch.setattr(ck.os, "replace", logged_replace)
    ck.atomic_write(tmp_path / "w.bin", lambda p: Path(p).write_bytes(b"x"))
    at = [kind for kind, _ in events].index("replace")
    assert ("fsync", events[at][1]) in events[:at]
    assert events[-1] == ("fsync", str(tmp_path))


def test_checked_torch_file_without_its_checksum_is_named(tmp_path):
    path = tmp_path / "hand_made.pt"
    torch.save({"format": "matmamba_vision/checked-torch-v1", "data": torch.zeros(4, dtype=torch.uint8)}, path)
    with pytest.raises(CheckpointError, match="hand_made.pt.*without its data or checksum"):
        load_torch(path)


def test_files_get_the_umask_mode_not_the_temporary_files(model, tmp_path):
    from matmamba_vision.weights import save_weights

    old = os.umask(0o022)
    try:
        for path in (
            save_weights(model.state_dict(), tmp_path / "w.safetensors"),
            save_torch({"epoch": 1}, tmp_path / "s.pt"),
        ):
            assert oct(os.stat(path).st_mode & 0o777) == oct(0o644), path
    finally:
        os.umask(old)


class _Exploit:
    """Unpickling this would create the marker file, if the loader ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("suffix", [".pth", ".bin"])
def test_code_running_pickle_is_refused_without_running(model, tmp_path, suffix):
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil{suffix}"
    torch.save({"state_dict": model.state_dict(), "payload": _Exploit(marker)}, path)
    for load in (load_torch, load_weights, lambda p: load_checkpoint(model, p)):
        with pytest.raises(CheckpointError, match=f"evil{suffix}"):
            load(path)
    with pytest.raises(Exception):  # noqa: B017 - timm's own pretrained path is weights-only too (any refusal)
        timm.create_model(
            "matmamba_vision_tiny_patch4_28",
            embed_dim=32,
            depth=2,
            d_state=8,
            pretrained=True,
            pretrained_cfg_overlay=dict(file=str(path)),
        )
    assert not marker.exists()


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_weights(path)
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_weights(tmp_path / "missing.safetensors")


def test_checkpoint_for_another_model_names_the_keys(model, tmp_path):
    other = timm.create_model("matmamba_vision_tiny_patch4_28", embed_dim=32, depth=3, d_state=16)
    path = tmp_path / "other.safetensors"
    save_weights(other.state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, path)
    msg = str(err.value)
    assert "other.safetensors" in msg and "unexpected keys: layers.2." in msg and "shape mismatches" in msg
    assert "layers.0.mixer.xbc_proj.weight: checkpoint (96, 32) vs model (80, 32)" in msg


_WRITER = r"""
import sys, torch
from matmamba_vision.weights import save_weights
path, n = sys.argv[1], 0
while True:
    n += 1
    save_weights({"w": torch.full((1 << 21,), float(n)), "n": torch.tensor(n)}, path)
    print(n, flush=True)
"""


def test_sigkill_during_writes_leaves_a_loadable_file(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    save_weights({"w": torch.zeros(1 << 21), "n": torch.tensor(0)}, path)
    for delay in (0.0, 0.02, 0.11):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path)],
            stdout=subprocess.PIPE,
            cwd=REPO,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )
        assert proc.stdout.readline()  # one whole write done: it is now writing again
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = load_weights(path)  # whole: either an old or a new version, never a partial one
        assert torch.all(state["w"] == state["n"].float())
    assert not [p for p in tmp_path.iterdir() if p.name == "ckpt.safetensors" and p.stat().st_size == 0]


def _torch_load_calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "load":
            base = node.func.value
            if isinstance(base, ast.Name) and base.id == "torch":
                yield node


def test_no_torch_load_without_weights_only():
    sources = [  # the project's own code: not tests, not hidden folders (.venv, carried third-party wheels)
        p
        for p in REPO.rglob("*.py")
        if "tests" not in p.parts and not any(part.startswith(".") for part in p.relative_to(REPO).parts)
    ]
    offenders = []
    for src in sources:
        for call in _torch_load_calls(ast.parse(src.read_text(), str(src))):
            kw = {k.arg: k.value for k in call.keywords}
            if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                offenders.append(f"{src.relative_to(REPO)}:{call.lineno}")
    assert sources and not offenders, offenders


def test_random_bytes_checkpoint_gives_one_line_without_unsafe_advice(tmp_path):
    """torch's refusal continues with advice to retry with weights_only=False: unsafe for an unknown file."""
    from matmamba_vision.weights import CheckpointError, load_torch

    path = tmp_path / "rand.bin"
    path.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(CheckpointError) as caught:
        load_torch(path)
    assert str(path) in str(caught.value) and "weights_only" not in str(caught.value)
    assert "\n" not in str(caught.value)
