"""One-line warnings when the data does not fit the model's config: the images' channels, and statistics
stretched from another channel count."""

import numpy as np
import pytest
import timm
from PIL import Image

from matmamba_vision.data import model_data_config
from matmamba_vision.data.match import data_channels, data_mismatch_warnings
from matmamba_vision.evaluation.cli import add_common_args, data_config_from_args

SMALL = dict(embed_dim=32, depth=1, d_state=16)


def _folder(root, mode):
    for split in ("train", "val"):
        d = root / split / "a"
        d.mkdir(parents=True)
        (d / "notes.txt").write_text("not an image")  # skipped by the probe
        Image.fromarray(np.zeros((28, 28, 3), np.uint8)).convert(mode).save(d / "x.png")
    return root


@pytest.mark.parametrize("mode, channels", [("RGB", 3), ("L", 1), ("P", 3), ("LA", 1)])
def test_data_channels_of_a_folder(tmp_path, mode, channels):
    assert data_channels("", str(_folder(tmp_path, mode)), "val") == channels


def test_fmnist_and_grey_model_fit():
    model = timm.create_model("matmamba_vision_tiny_patch4_28", **SMALL)
    assert data_channels("fmnist", None, "val") == 1
    assert data_mismatch_warnings(model, model_data_config(model), 1) == []


def test_rgb_folder_with_a_grey_model(tmp_path):
    grey = timm.create_model("matmamba_vision_tiny_patch4_28", **SMALL)
    (line,) = data_mismatch_warnings(grey, model_data_config(grey), 3, "val")
    assert "val images have 3 channels" in line and "takes 1" in line and "--in-chans 3" in line
    rgb = timm.create_model("matmamba_vision_tiny_patch4_28", in_chans=3, **SMALL)
    (line,) = data_mismatch_warnings(rgb, model_data_config(rgb), 3, "val")
    assert "1-channel statistics repeated over 3" in line and "--mean/--std" in line and "\n" not in line
    # statistics given for the data: no warning
    assert data_mismatch_warnings(rgb, model_data_config(rgb, dict(mean=(0.5,) * 3, std=(0.2,) * 3)), 3) == []
    big = timm.create_model("matmamba_vision_35m_patch16_224", in_chans=1, device="meta", depth=1)
    (line,) = data_mismatch_warnings(big, model_data_config(big), 1)
    assert "3-channel statistics averaged over 1" in line


def test_validate_flags_warn_once_on_stderr(tmp_path, capsys):
    import argparse

    data = _folder(tmp_path, "RGB")
    args = add_common_args(argparse.ArgumentParser()).parse_args(["--data-dir", str(data), "--in-chans", "3"])
    args.split = "val"
    model = timm.create_model("matmamba_vision_tiny_patch4_28", in_chans=3, **SMALL)
    data_config_from_args(args, model)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: the val images are normalised with")
    args.mean, args.std = [0.5], [0.25]
    data_config_from_args(args, model)
    assert capsys.readouterr().err == ""
