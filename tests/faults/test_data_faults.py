"""Images that are corrupt, truncated, odd-moded, tiny or huge, and folder trees with junk in them:
each is converted to what the model takes, or reported with its path."""

import numpy as np
import pytest
import torch
from PIL import Image

from matmamba_vision.data import create_eval_loader

RGB_CFG = dict(input_size=(3, 32, 32), interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=1.0)
GREY_CFG = dict(RGB_CFG, input_size=(1, 32, 32), mean=(0.5,), std=(0.5,))


def _tree(root, n=2):
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (40, 30), (i * 40, 90, 200)).save(d / f"{i}.jpg")
    return root


def _all_batches(root, cfg=RGB_CFG, split="val"):
    loader = create_eval_loader(data_dir=str(root), split=split, data_config=cfg, batch_size=4, workers=0)
    return [b for b in loader], loader


ODD_IMAGES = {
    "grey.png": lambda: Image.new("L", (33, 17), 128),
    "cmyk.jpg": lambda: Image.new("CMYK", (20, 20), (0, 128, 255, 10)),
    "rgba.png": lambda: Image.new("RGBA", (25, 25), (255, 0, 0, 0)),
    "grey16.png": lambda: Image.fromarray(np.full((20, 20), 40000, dtype=np.uint16)),
    "palette.gif": lambda: Image.new("P", (20, 20), 3),
    "one_pixel.png": lambda: Image.new("RGB", (1, 1), (1, 2, 3)),
    "huge.jpg": lambda: Image.new("RGB", (4000, 3000), (10, 20, 30)),
    "binary.png": lambda: Image.new("1", (20, 20), 1),
}


@pytest.mark.parametrize("name", sorted(ODD_IMAGES))
@pytest.mark.parametrize("cfg", [RGB_CFG, GREY_CFG], ids=["rgb", "grey"])
def test_odd_images_are_converted(tmp_path, name, cfg):
    root = _tree(tmp_path)
    ODD_IMAGES[name]().save(root / "val" / "cat" / name)
    batches, loader = _all_batches(root, cfg)
    images = torch.cat([b[0] for b in batches])
    assert images.shape == (loader.num_samples, cfg["input_size"][0], 32, 32)
    assert torch.isfinite(images).all()


def test_16_bit_grey_keeps_its_brightness(tmp_path):
    root = _tree(tmp_path)
    (root / "val" / "dog").joinpath("0.jpg").unlink()
    (root / "val" / "dog").joinpath("1.jpg").unlink()
    Image.fromarray(np.full((20, 20), 65535, dtype=np.uint16)).save(root / "val" / "dog" / "white16.png")
    batches, loader = _all_batches(root, GREY_CFG)
    white = torch.cat([b[0] for b in batches])[-1]
    assert white.min() > 0.9  # normalised (1 - 0.5) / 0.5 = 1 for white, not clipped to black or wrapped


@pytest.mark.parametrize("damage", ["corrupt_jpeg", "truncated_png", "empty_file", "text_as_jpg"])
def test_damaged_images_are_named(tmp_path, damage):
    root = _tree(tmp_path)
    target = root / "val" / "dog" / ("bad.png" if damage == "truncated_png" else "bad.jpg")
    if damage == "corrupt_jpeg":
        data = bytearray((root / "val" / "dog" / "0.jpg").read_bytes())
        data[2:40] = b"\x00" * 38
        target.write_bytes(bytes(data))
    elif damage == "truncated_png":
        Image.new("RGB", (64, 64), (5, 6, 7)).save(target)
        target.write_bytes(target.read_bytes()[:60])
    elif damage == "empty_file":
        target.write_bytes(b"")
    else:
        target.write_text("not an image at all")
    with pytest.raises(ValueError, match="bad"):
        _all_batches(root)


def test_non_image_files_are_ignored(tmp_path):
    root = _tree(tmp_path)
    (root / "val" / "cat" / "README.txt").write_text("notes")
    (root / "val" / "cat" / ".DS_Store").write_bytes(b"\x00\x01")
    (root / "val" / "labels.csv").write_text("a,b")
    batches, loader = _all_batches(root)
    assert loader.num_samples == 4 and loader.classes == ["cat", "dog"]


def test_empty_class_folder_is_reported(tmp_path):
    root = _tree(tmp_path)
    (root / "val" / "cow").mkdir()
    (root / "train" / "cow").mkdir()
    with pytest.raises(ValueError, match="cow"):
        _all_batches(root)


def test_decompression_bomb_is_named(tmp_path):
    root = _tree(tmp_path)
    bomb = root / "val" / "cat" / "bomb.png"
    Image.new("1", (20000, 12000)).save(bomb)  # 240 Mpx: over PIL's decompression-bomb limit
    with pytest.raises(ValueError, match="bomb.png"):
        _all_batches(root)
