"""Fashion-MNIST from Debian's IDX files through the shared data module."""

import gzip

import pytest
import torch

from matmamba_vision.data import (
    FashionMNIST,
    TensorAugment,
    TensorTrainLoader,
    create_eval_loader,
    create_train_loader,
    fmnist_data_config,
    load_fmnist,
)
from matmamba_vision.data.fmnist import FMNIST_DIR, read_idx

pytestmark = pytest.mark.skipif(
    not (__import__("pathlib").Path(FMNIST_DIR) / "t10k-labels-idx1-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed (make setup installs it as root)",
)


def test_eval_loader_default_is_fmnist_test_set():
    loader = create_eval_loader(batch_size=500, workers=0)
    assert loader.num_samples == 10000 and len(loader) == 20
    assert loader.classes[0] == "T-shirt/top" and len(loader.classes) == 10
    images, targets = next(iter(loader))
    assert images.shape == (500, 1, 28, 28) and images.dtype == torch.float32 and targets.dtype == torch.long
    assert abs(images.mean().item()) < 0.2 and 0.8 < images.std().item() < 1.2  # normalised by the dataset stats
    counts = torch.bincount(torch.cat([t for _, t in loader]), minlength=10)
    assert counts.tolist() == [1000] * 10  # the real test set: 1000 per class


def test_grey_images_follow_in_chans_and_train_split():
    loader = create_eval_loader("fmnist", split="train", data_config=fmnist_data_config(3), batch_size=64, workers=0)
    images, _ = next(iter(loader))
    assert loader.num_samples == 60000 and images.shape == (64, 3, 28, 28)
    assert torch.equal(images[:, 0], images[:, 2])  # grey converted to RGB


def test_pil_dataset_and_tensor_loader_agree_without_augmentation():
    ds = FashionMNIST("val")
    img, target = ds[3]
    assert img.mode == "L" and img.size == (28, 28) and isinstance(target, int)
    images, targets = load_fmnist("val")
    cfg = fmnist_data_config()
    loader = TensorTrainLoader(
        images[:64].unsqueeze(1),
        targets[:64],
        ds.classes,
        16,
        TensorAugment(cfg["mean"], cfg["std"], pad=0, hflip=0.0),
        seed=0,
    )
    evaluated = create_eval_loader("fmnist", data_config=cfg, batch_size=64, workers=0)
    reference = next(iter(evaluated))[0]
    batch, labels = next(iter(loader))
    order = [int(i) for i in torch.randperm(64, generator=torch.Generator().manual_seed(0))[:16]]
    assert torch.allclose(batch, reference[order], atol=1e-6) and torch.equal(labels, targets[order])


def test_train_loader_replays_by_epoch():
    loader = create_train_loader(batch_size=32, seed=3)
    loader.set_epoch(1)
    a = next(iter(loader))
    loader.set_epoch(0)
    next(iter(loader))
    loader.set_epoch(1)
    b = next(iter(loader))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    loader.set_epoch(2)
    assert not torch.equal(next(iter(loader))[1], a[1])


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="split"):
        create_eval_loader("fmnist", split="test")
    with pytest.raises(ValueError, match="dataset must be one of"):
        create_eval_loader("imagenet21k")
    with pytest.raises(ValueError, match="does not exist"):
        create_eval_loader("fmnist", data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="missing"):
        create_eval_loader("fmnist", data_dir=str(tmp_path))
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(gzip.compress(b"\x01\x02\x03\x04junk"))
    with pytest.raises(ValueError, match="magic"):
        read_idx(bad)
    truncated = tmp_path / "short.gz"
    truncated.write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 9, 1, 2])))
    with pytest.raises(ValueError, match="truncated"):
        read_idx(truncated)
    # a gzip stream cut in half, a header cut short, a float payload that is not whole values: each named
    cut = tmp_path / "cut.gz"
    whole = gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 200]) + bytes(range(200)) * 5)
    cut.write_bytes(whole[: len(whole) // 2])
    half_header = tmp_path / "half_header"
    half_header.write_bytes(bytes([0, 0, 8, 3, 0, 0, 0]))
    odd = tmp_path / "odd"
    odd.write_bytes(bytes([0, 0, 0x0D, 1, 0, 0, 0, 2]) + bytes(6))  # float32 x 2 needs 8 bytes
    assert len(whole) // 2 > 20
    for path in (cut, half_header, odd):
        with pytest.raises(ValueError, match=f"{path.name}.*|{path}"):
            read_idx(path)


def test_fast_path_takes_the_erasing_count():
    from matmamba_vision.data import create_train_loader

    loader = create_train_loader("fmnist", batch_size=8, workers=0, re_prob=1.0, re_count=3)
    assert loader.augment.erase.max_count == 3


def test_train_loader_at_another_size_uses_timm_transforms():
    """A model that is not 28x28 (e.g. the 35M at 224) trains on Fashion-MNIST through timm's transforms; the
    preloaded fast path, which only knows 28x28, used to refuse it."""
    cfg = dict(fmnist_data_config(3), input_size=(3, 64, 64))
    loader = create_train_loader("fmnist", data_config=cfg, batch_size=8, workers=0)
    assert not isinstance(loader, TensorTrainLoader)
    images, targets = next(iter(loader))
    assert images.shape == (8, 3, 64, 64) and targets.shape == (8,)
