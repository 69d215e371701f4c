"""The LR schedule across a resume (rebuilt from the flags, as timm's train.py; plateau keeps its metric history),
timm's schedule flags, and the best model after resuming from an earlier checkpoint."""

import csv
import shutil

import pytest
import torch
import yaml
from timm.scheduler import create_scheduler_v2
from train_utils import TINY_MODEL, make_image_folder

import matmamba_vision.training.trainer as trainer
from matmamba_vision.training import main
from matmamba_vision.weights import load_weights, read_weights_metadata

FLAGS = [
    "-b",
    "4",
    "--threads",
    "1",
    "-j",
    "0",
    "--no-progress",
    "--deterministic",
    "--checkpoint-hist",
    "8",
    "--lr",
    "2e-3",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data"), per_class=4)  # 12 images: 3 updates per epoch


def scripted_validation(monkeypatch, top1_by_epoch, first_epoch=0, calls_per_epoch=1):
    """train.py's validation replaced by a scripted top-1 per epoch (``calls_per_epoch`` 2 with an EMA model)."""
    calls = [first_epoch * calls_per_epoch]

    def fake(model, loader, granularities, device, amp_dtype=None):
        top1 = top1_by_epoch[calls[0] // calls_per_epoch]
        calls[0] += 1
        return {g: {"loss": 1.0, "top1": top1, "top5": 100.0} for g in granularities}

    monkeypatch.setattr(trainer, "validate", fake)


def run(tmp_path, data, name, *extra):
    return main([*TINY_MODEL, *FLAGS, "--data-dir", str(data), "--output", str(tmp_path), "--experiment", name, *extra])


def lrs(folder):
    return [float(r["lr"]) for r in csv.DictReader(open(folder / "summary.csv"))]


def copy_run_until(src, dst, epoch):
    """A copy of run folder ``src`` as if it had been killed after ``epoch`` (0-based)."""
    dst.mkdir()
    for name in ("args.yaml", "summary.csv", "model_best.safetensors"):
        shutil.copy(src / name, dst / name)
    for e in range(epoch + 1):
        for suffix in (".safetensors", ".state.pt"):
            shutil.copy(src / f"checkpoint-{e}{suffix}", dst / f"checkpoint-{e}{suffix}")
    rows = list(csv.DictReader(open(src / "summary.csv")))[: epoch + 1]
    with open(dst / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_plateau_resume_keeps_its_patience_count(tmp_path, data, monkeypatch):
    """top-1 50, 40, 40, 40 with patience 1: the LR halves after the second bad epoch (epoch 3). A resume after
    epoch 2 must remember the first bad epoch (timm's plateau state_dict keeps only ``best``)."""
    flags = [
        "--epochs",
        "4",
        "--sched",
        "plateau",
        "--no-sched-on-updates",
        "--warmup-epochs",
        "0",
        "--patience-epochs",
        "1",
        "--decay-rate",
        "0.5",
    ]
    top1 = [50.0, 40.0, 40.0, 40.0]
    scripted_validation(monkeypatch, top1)
    run(tmp_path, data, "whole", *flags)
    assert lrs(tmp_path / "whole") == pytest.approx([2e-3, 2e-3, 1e-3, 1e-3])
    copy_run_until(tmp_path / "whole", tmp_path / "killed", epoch=1)
    scripted_validation(monkeypatch, top1, first_epoch=2)
    run(tmp_path, data, "killed", *flags, "--resume", str(tmp_path / "killed"))
    assert lrs(tmp_path / "killed") == lrs(tmp_path / "whole")


@pytest.mark.parametrize("stepping", [[], ["--no-sched-on-updates"]], ids=["per-update", "per-epoch"])
def test_more_epochs_at_resume_rebuild_the_schedule(tmp_path, data, caplog, stepping):
    """--epochs 2, then resumed with --epochs 4: epochs 3 and 4 follow the 4-epoch cosine (as timm's train.py),
    not the end of the 2-epoch one (min_lr), and the log says what changed."""
    flags = [*stepping, "--warmup-epochs", "0", "--min-lr", "1e-6"]
    run(tmp_path, data, "long", *flags, "--epochs", "4")
    run(tmp_path, data, "short", *flags, "--epochs", "2")
    run(tmp_path, data, "short", *flags, "--epochs", "4", "--resume", str(tmp_path / "short"))
    long, extended = lrs(tmp_path / "long"), lrs(tmp_path / "short")
    assert len(extended) == 4 and extended[2:] == pytest.approx(long[2:], rel=1e-9)
    assert extended[2] > 1e-4  # mid-schedule, not min_lr
    assert "rebuilt from this run's flags (--epochs: 2 -> 4)" in caplog.text
    text = (tmp_path / "short" / "args.yaml").read_text()
    assert text.startswith("# recipe card:\n# per update: ")  # the card as comments: still a -c config
    started = yaml.safe_load(text)
    resumed = yaml.safe_load((tmp_path / "short" / "args.resumed-epoch2.yaml").read_text())
    assert started["epochs"] == 2 and resumed["epochs"] == 4  # args.yaml keeps the flags the run started with


def test_step_schedule_flags_reach_timm(tmp_path, data):
    run(
        tmp_path,
        data,
        "step",
        "--epochs",
        "3",
        "--sched",
        "step",
        "--decay-epochs",
        "1",
        "--decay-rate",
        "0.5",
        "--no-sched-on-updates",
        "--warmup-epochs",
        "0",
    )
    assert lrs(tmp_path / "step") == pytest.approx([1e-3, 5e-4, 2.5e-4])  # the row's LR is the next epoch's
    run(
        tmp_path,
        data,
        "multistep",
        "--epochs",
        "3",
        "--sched",
        "multistep",
        "--decay-milestones",
        "2",
        "3",
        "--decay-rate",
        "0.1",
        "--no-sched-on-updates",
        "--warmup-epochs",
        "0",
    )
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2e-3)
    timm_sched, _ = create_scheduler_v2(
        opt, sched="multistep", num_epochs=3, decay_milestones=[2, 3], decay_rate=0.1, warmup_epochs=0
    )
    expected = []
    for epoch in range(3):
        timm_sched.step(epoch + 1)
        expected.append(opt.param_groups[0]["lr"])
    assert lrs(tmp_path / "multistep") == pytest.approx(expected) and len(set(expected)) > 1


def test_sched_none_trains_at_a_constant_lr(tmp_path, data):
    run(tmp_path, data, "none", "--epochs", "2", "--sched", "none")
    assert lrs(tmp_path / "none") == [2e-3, 2e-3]


def test_best_model_after_resuming_an_earlier_checkpoint(tmp_path, data, monkeypatch):
    """The run reached its best at epoch 2 (top-1 60; epochs counted from 0); resumed from epoch 1's checkpoint,
    the replayed epoch 2 scores 45. model_best must be the resumed run's best (epoch 0, from its checkpoint), not
    the abandoned epoch 2's weights, which are kept aside; the model_best/ folder follows."""
    flags = ["--epochs", "3", "--model-ema", "--model-ema-decay", "0.5"]
    scripted_validation(monkeypatch, [50.0, 40.0, 60.0], calls_per_epoch=2)
    run(tmp_path, data, "run", *flags)
    folder = tmp_path / "run"
    assert read_weights_metadata(folder / "model_best.safetensors")["epoch"] == 2
    abandoned = load_weights(folder / "model_best.safetensors")
    in_dir = load_weights(folder / "model_best" / "model.safetensors")
    assert all(torch.equal(in_dir[k], abandoned[k]) for k in abandoned)
    scripted_validation(monkeypatch, [50.0, 40.0, 45.0], first_epoch=2, calls_per_epoch=2)
    run(tmp_path, data, "run", *flags, "--resume", str(folder / "checkpoint-1.state.pt"))
    best = load_weights(folder / "model_best.safetensors")
    assert read_weights_metadata(folder / "model_best.safetensors")["epoch"] == 0
    first = load_weights(folder / "checkpoint-0.safetensors")
    assert all(torch.equal(best[k], first[k]) for k in first)
    in_dir = load_weights(folder / "model_best" / "model.safetensors")
    assert all(torch.equal(in_dir[k], first[k]) for k in first)
    kept = load_weights(folder / "model_best-epoch2.abandoned.safetensors")
    assert all(torch.equal(kept[k], abandoned[k]) for k in kept)
    assert (folder / "model_best_ema.safetensors").is_file()
    assert (folder / "model_best_ema-epoch2.abandoned.safetensors").is_file()


def test_resume_from_weights_without_a_state_names_the_way_forward(tmp_path, data):
    """--resume model_best.safetensors said it was not a weights file; it is one, without a training state."""
    run(tmp_path, data, "run", "--epochs", "1")
    best = tmp_path / "run" / "model_best.safetensors"
    with pytest.raises(
        ValueError,
        match=r"model_best.safetensors has no training state beside it .*"
        r"--initial-checkpoint",
    ):
        run(tmp_path, data, "run", "--epochs", "2", "--resume", str(best))
