"""retrieval.py's embedding cache under faults: a changed transform or checkpoint content is never served from
the cache, and a process killed inside an embedding pass leaves nothing that is later read as complete.

(validate.py keeps no cache. Cache reuse, a changed checkpoint file and an exception inside the pass at the
library level are tested in tests/test_eval_retrieval.py.)
"""

import importlib.util
import os
import signal
import subprocess
import sys
import time

import pytest
from eval_synthetic import tiny_model
from train_utils import REPO, make_image_folder, subprocess_env

from matmamba_vision.weights import load_weights, save_weights

TINY = [
    "--model",
    "matmamba_vision_tiny_patch4_28",
    "--model-kwargs",
    "embed_dim=32",
    "depth=2",
    "d_state=16",
    "-j",
    "0",
    "-b",
    "4",
    "--knn-backend",
    "torch",
]  # eval_synthetic.tiny_model, named (default: the demo's)
METRICS = ("query", "db_granularity", "top1", "map10", "recall1", "recall5", "recall10")


@pytest.fixture(scope="module")
def retrieval():
    spec = importlib.util.spec_from_file_location("_fault_retrieval", REPO / "retrieval.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data"), per_class=6)  # 18 train, 18 val: 5 batches of 4


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "model.safetensors"
    save_weights(tiny_model(depth=2).state_dict(), path)
    return path


def flags(data, checkpoint, cache, out):
    return [
        "--data-dir",
        str(data),
        "--checkpoint",
        str(checkpoint),
        "--cache-dir",
        str(cache),
        "--output",
        str(out),
        *TINY,
    ]


def cached(rows):
    return {(r["db_cached"], r["query_cached"]) for r in rows}


def test_changed_transform_or_checkpoint_is_never_served_from_cache(retrieval, data, checkpoint, tmp_path):
    base = flags(data, checkpoint, tmp_path / "cache", tmp_path / "out")
    assert cached(retrieval(base)) == {(False, False)}
    assert cached(retrieval(base)) == {(True, True)}  # control: the same run is served from the cache
    for change in (
        ["--crop-pct", "0.75"],
        ["--mean", "0.5", "--std", "0.25"],
        ["--interpolation", "nearest"],
        ["--img-size", "32"],
    ):
        assert cached(retrieval([*base, *change])) == {(False, False)}, change
    # other content at the same path, same size: one trunk parameter nudged
    state = load_weights(checkpoint)
    state["layers.0.mixer.D"] = state["layers.0.mixer.D"] + 0.5
    size = checkpoint.stat().st_size
    save_weights(state, checkpoint)
    assert checkpoint.stat().st_size == size
    assert cached(retrieval(base)) == {(False, False)}


# retrieval.py, paused for good at one point of the embedding pass (a marker file says it got there)
_PAUSED = r"""
import os, runpy, sys, time
from pathlib import Path
import matmamba_vision.evaluation.embeddings as emb
where, marker = os.environ["PAUSE_AT"], Path(os.environ["PAUSE_MARKER"])
def pause():
    marker.write_text(str(os.getpid()))
    time.sleep(600)
if where == "mid-pass":  # after two batches' rows are written
    from matmamba_vision import MatMambaVision
    original, calls = MatMambaVision.forward_many, [0]
    def forward_many(*a, **k):
        calls[0] += 1
        if calls[0] == 3:
            pause()
        return original(*a, **k)
    MatMambaVision.forward_many = forward_many
else:  # every file of the entry written, meta.json saying complete, not yet renamed into place
    rename = os.rename
    def paused_rename(src, dst):
        if Path(src).name.startswith(".tmp-"):
            pause()
        return rename(src, dst)
    emb.os.rename = paused_rename
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("where", ["mid-pass", "before-rename"])
def test_killed_embedding_pass_restarts_cleanly(retrieval, data, checkpoint, tmp_path, where):
    cache, marker = tmp_path / "cache", tmp_path / "paused"
    args = flags(data, checkpoint, cache, tmp_path / "out")
    env = dict(subprocess_env(), PAUSE_AT=where, PAUSE_MARKER=str(marker))
    proc = subprocess.Popen(
        [sys.executable, "-c", _PAUSED, str(REPO / "retrieval.py"), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 240
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert marker.exists() and proc.poll() is None, proc.stderr.read().decode()[-3000:] if proc.poll() else ""
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    debris = [p for p in cache.rglob(".tmp-*") if p.is_dir()]
    assert debris, "the killed pass was writing an entry"
    if where == "before-rename":
        assert any((d / "meta.json").is_file() for d in debris)  # complete inside, but never renamed into place
    entries = [p for p in cache.rglob("meta.json") if not any(part.startswith(".tmp-") for part in p.parts)]
    assert entries == [], "nothing may look like a complete entry"

    again = retrieval(args)
    assert cached(again) == {(False, False)}, "the killed pass's files must not be read"
    assert not [p for p in cache.rglob(".tmp-*")], "the dead process's temporary entries are removed"
    fresh = retrieval(flags(data, checkpoint, tmp_path / "fresh-cache", tmp_path / "fresh-out"))
    assert [[r[k] for k in METRICS] for r in again] == [[r[k] for k in METRICS] for r in fresh]
    assert cached(retrieval(args)) == {(True, True)}


def test_a_live_writers_temporary_entry_is_left_alone(tmp_path):
    """Another process may be writing the same entry right now: only dead writers' debris is removed."""
    from matmamba_vision.evaluation.embeddings import _HOST, EmbeddingCache, _Writer

    cache = EmbeddingCache(tmp_path / "cache")
    ident = dict(model="tiny", split="train", name="g32", granularity=[32])
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        first = _Writer(cache, ident)
        host_pid = f"-{_HOST}-{os.getpid()}-"
        assert host_pid in first.tmp.name
        alive = first.tmp.with_name(first.tmp.name.replace(f"-{os.getpid()}-", f"-{live.pid}-"))
        first.tmp.rename(alive)
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        gone = alive.with_name(alive.name.replace(f"-{live.pid}-", f"-{int(dead.stdout)}-"))
        gone.mkdir()
        other_host = alive.with_name(alive.name.replace(_HOST, "elsewhere"))
        other_host.mkdir()
        second = _Writer(cache, ident)
        assert alive.is_dir() and other_host.is_dir() and not gone.exists() and second.tmp.is_dir()
        second.abort()
    finally:
        live.kill()
        live.wait()
