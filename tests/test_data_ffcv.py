"""FFCV round trip: write a small .beton from a folder, read it back, train a step from it."""

import gc
import json
import re

import pytest
import torch

pytest.importorskip(
    "ffcv",
    reason="the optional ffcv extra is not installed (pip install '.[ffcv]' after "
    "apt-get install pkg-config libopencv-dev libturbojpeg0-dev)",
)

from train_utils import TINY_MODEL, make_image_folder  # noqa: E402

from matmamba_vision.data import create_eval_loader, create_train_loader, fmnist_data_config  # noqa: E402
from matmamba_vision.data.ffcv_writer import main as write_main  # noqa: E402
from matmamba_vision.training import main as train_main  # noqa: E402


# numba's finaliser prints a harmless KeyError at exit
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_ffcv_round_trip_and_training_step(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=4, size=(40, 40))
    out = tmp_path / "ffcv"
    # JPEG here: raw images bring ffcv's raw decoder, whose numba finalisers crash pytest's exit (test below)
    write_main(
        ["--data-dir", str(root), "--output", str(out), "--max-resolution", "32", "-j", "1", "--write-mode", "jpg"]
    )
    meta = json.loads((out / "val.json").read_text())
    assert meta == {"classes": ["ankle", "bag", "coat"], "num_samples": 12}

    cfg = dict(fmnist_data_config(3), mean=(0.5,) * 3, std=(0.25,) * 3)
    val = create_eval_loader("ffcv", str(out), "val", cfg, batch_size=11, workers=1)  # the last batch: 1 image
    images, targets = map(torch.cat, zip(*list(val)))
    assert val.classes == meta["classes"] and val.num_samples == 12
    assert images.shape == (12, 3, 28, 28) and targets.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    means = images.mean(dim=(1, 2, 3))
    assert means[:4].mean() < means[4:8].mean() < means[8:].mean()

    # training reads the 1-channel model's input as the luma of the stored RGB images
    metrics = train_main(
        [
            *TINY_MODEL,
            "--dataset",
            "ffcv",
            "--data-dir",
            str(out),
            "-b",
            "12",
            "--epochs",
            "1",
            "-j",
            "1",
            "--reprob",
            "0.5",
            "--output",
            str(tmp_path / "runs"),
            "--experiment",
            "ffcv",
            "--no-progress",
        ]
    )
    assert sorted(metrics) == [4, 8, 16, 32]
    assert (tmp_path / "runs" / "ffcv" / "checkpoint-0.safetensors").is_file()
    # random erasing is applied to ffcv's batches; RandAugment and colour jitter are refused, not dropped
    train = create_train_loader("ffcv", str(out), "train", cfg, batch_size=12, workers=1, re_prob=1.0)
    train.set_epoch(0)
    erased, _ = next(iter(train))
    plain = create_train_loader("ffcv", str(out), "train", cfg, batch_size=12, workers=1)
    plain.set_epoch(0)
    assert erased.std(dim=(1, 2, 3)).mean() > 1.5 * next(iter(plain))[0].std(dim=(1, 2, 3)).mean()
    # the official RandAugment runs in ffcv's compiled pipeline (our Operation, after the flip)
    official = create_train_loader(
        "ffcv", str(out), "train", cfg, batch_size=12, workers=1, hflip=0.0, auto_augment="official"
    )
    official.set_epoch(0)
    augmented, _ = next(iter(official))
    assert augmented.shape == (12, 3, 28, 28) and torch.isfinite(augmented).all()
    plain = create_train_loader("ffcv", str(out), "train", cfg, batch_size=12, workers=1, hflip=0.0)
    plain.set_epoch(0)
    assert not torch.allclose(augmented, next(iter(plain))[0])
    for flags in (dict(auto_augment="rand-m9-n2"), dict(color_jitter=0.4)):
        with pytest.raises(ValueError, match="not available with --dataset ffcv"):
            create_train_loader("ffcv", str(out), "train", cfg, batch_size=12, workers=1, **flags)
    # Run numba's failing finalisers now, inside this test's warning filter: left to a later garbage
    # collection they can fire inside ast.parse (pytest's assertion rewriting) and trip CPython 3.11.
    del val, train, plain, official
    gc.collect()


def test_ffcv_max_samples_spread_over_the_split(tmp_path, monkeypatch):
    """ffcv's evaluation read the first N images (the first classes of a class-sorted split). The indices handed
    to ffcv's Loader are checked without running it (a second live ffcv loader in one process trips numba's
    finalisers inside pytest's assertion rewriting)."""
    import ffcv.loader

    out = tmp_path / "ffcv"
    out.mkdir()
    (out / "val.beton").write_bytes(b"")
    (out / "val.json").write_text(json.dumps({"classes": ["a", "b", "c"], "num_samples": 12}))
    seen = {}

    class Recorder:
        def __init__(self, *args, indices=None, **kwargs):
            seen["indices"] = indices

    monkeypatch.setattr(ffcv.loader, "Loader", Recorder)
    create_eval_loader("ffcv", str(out), "val", fmnist_data_config(3), batch_size=4, workers=1, max_samples=3)
    assert seen["indices"] == [0, 4, 8]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--max-resolution", "0"], "--max-resolution must be at least 1"),  # hung: a worker failed, the writer waited
        (["--jpeg-quality", "500"], r"--jpeg-quality must be in \[1, 100\]"),
        (["--write-mode", "bogus"], "invalid choice: 'bogus'"),
    ],
)
def test_ffcv_writer_refuses_bad_flags_before_writing(tmp_path, capsys, flags, message):
    root = make_image_folder(tmp_path / "data", per_class=1)
    with pytest.raises(SystemExit):
        write_main(["--data-dir", str(root), "--output", str(tmp_path / "out"), *flags])
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_writer_defaults_are_the_official_files(tmp_path, monkeypatch):
    """The official train_500_0.0_100 files: raw pixels (compression probability 0, quality 100), longest side
    500 (ffcv's writer resizes with INTER_AREA); the function and the command line agree."""
    import inspect

    import matmamba_vision.data.ffcv_writer as writer

    defaults = {k: v.default for k, v in inspect.signature(writer.write_beton).parameters.items()}
    assert (defaults["write_mode"], defaults["max_resolution"], defaults["jpeg_quality"]) == ("raw", 500, 100)
    calls = []
    monkeypatch.setattr(writer, "write_beton", lambda ds, classes, out, *rest: calls.append(rest) or out)
    root = make_image_folder(tmp_path / "data", per_class=1, size=(8, 8), splits=("val",))
    writer.main(["--data-dir", str(root), "--output", str(tmp_path / "out"), "--splits", "val"])
    max_resolution, jpeg_quality, write_mode, _ = calls[0]
    assert (write_mode, max_resolution, jpeg_quality) == ("raw", 500, 100)
