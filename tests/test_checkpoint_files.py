"""The run folder's checkpoint file names: one grammar (names written = names found), order, pruning."""

import pytest

from matmamba_vision.training.checkpoint_files import (
    BEST_DIR,
    CheckpointName,
    checkpoints,
    newest_checkpoint,
    parse_name,
    prune_epochs,
    run_files,
    weights_of,
)

NAMES = [
    ("checkpoint-0.state.pt", CheckpointName.at_epoch(0)),
    ("checkpoint-12.safetensors", CheckpointName.at_epoch(12)),
    ("checkpoint-3-40.state.pt", CheckpointName.mid_epoch(3, 40)),
    ("model_best.safetensors", CheckpointName.best()),
    ("model_best_ema.safetensors", CheckpointName.best(ema=True)),
    ("model_best-epoch7.abandoned.safetensors", CheckpointName.abandoned(7)),
    ("model_best_ema-epoch7.abandoned.safetensors", CheckpointName.abandoned(7, ema=True)),
]


@pytest.mark.parametrize("filename, name", NAMES)
def test_names_round_trip(filename, name):
    parsed, suffix = parse_name(filename)
    assert parsed == name and parsed.stem + suffix == filename


@pytest.mark.parametrize(
    "filename",
    [
        "checkpoint-01.state.pt",  # a leading zero: not a name this code writes
        "checkpoint-1-2-3.state.pt",
        "checkpoint-.state.pt",
        "model_best.state.pt",  # a best is weights only
        "model_best-epoch1.safetensors",
        ".checkpoint-1.state.pt.tmp",  # an atomic write's temporary
        "log.txt",
        "summary.csv",
    ],
)
def test_other_files_are_not_checkpoints(filename):
    assert parse_name(filename) is None


def test_a_best_has_no_state_file():
    with pytest.raises(ValueError, match="weights only"):
        _ = CheckpointName.best().state


def test_order_discovery_and_pruning(tmp_path):
    for stem in ("checkpoint-0", "checkpoint-1", "checkpoint-2-5", "checkpoint-2-11", "checkpoint-10"):
        for ext in (".safetensors", ".state.pt"):
            (tmp_path / f"{stem}{ext}").touch()
    (tmp_path / "checkpoint-11.safetensors").touch()  # weights without their state: unfinished
    (tmp_path / "model_best.safetensors").touch()
    (tmp_path / BEST_DIR).mkdir()
    found = [p.name for _, p in checkpoints(tmp_path)]
    assert found == [  # epochs and batches ordered as numbers; an epoch's end after its in-epoch checkpoints
        "checkpoint-0.state.pt",
        "checkpoint-1.state.pt",
        "checkpoint-2-5.state.pt",
        "checkpoint-2-11.state.pt",
        "checkpoint-10.state.pt",
    ]
    assert newest_checkpoint(tmp_path) == tmp_path / "checkpoint-10.state.pt"
    assert weights_of(tmp_path / "checkpoint-2-11.state.pt") == tmp_path / "checkpoint-2-11.safetensors"
    with pytest.raises(ValueError, match="not a checkpoint state file"):
        weights_of(tmp_path / "model_best.safetensors")
    assert [n for n, _, _ in run_files(tmp_path) if n.is_best] == [CheckpointName.best()]
    prune_epochs(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == [
        "checkpoint-1.safetensors",
        "checkpoint-1.state.pt",
        "checkpoint-10.safetensors",
        "checkpoint-10.state.pt",
        "checkpoint-11.safetensors",
        "checkpoint-2-11.safetensors",
        "checkpoint-2-11.state.pt",
        "checkpoint-2-5.safetensors",
        "checkpoint-2-5.state.pt",
    ]
    assert newest_checkpoint(tmp_path / "missing") is None
