"""ImageNet-style folders through timm's dataset: the pipeline and its bad inputs."""

import logging

import pytest
import torch
from train_utils import make_image_folder, truncated_jpeg

from matmamba_vision.data import create_eval_loader, create_train_loader, fmnist_data_config

RGB28 = dict(fmnist_data_config(3), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def test_folder_eval_and_train_pipelines(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=4, size=(36, 30))
    loader = create_eval_loader(data_dir=str(root), data_config=RGB28, batch_size=5, workers=0)
    assert loader.classes == ["ankle", "bag", "coat"] and loader.num_samples == 12 and len(loader) == 3
    batches = list(loader)
    images = torch.cat([b[0] for b in batches])
    assert images.shape == (12, 3, 28, 28)
    assert torch.cat([b[1] for b in batches]).tolist() == [0] * 4 + [1] * 4 + [2] * 4  # in order, every sample once
    means = images.mean(dim=(1, 2, 3))
    assert means[:4].mean() < means[4:8].mean() < means[8:].mean()  # class colours survive the transforms
    grey = create_eval_loader("folder", str(root), "train", fmnist_data_config(1), batch_size=12, workers=0)
    assert next(iter(grey))[0].shape == (12, 1, 28, 28)
    train = create_train_loader(
        data_dir=str(root),
        data_config=RGB28,
        batch_size=4,
        workers=0,
        seed=1,
        auto_augment="rand-m9-n2-mstd0.5",
        color_jitter=0.4,
        re_prob=0.25,
    )
    train.set_epoch(0)
    shapes = [tuple(x.shape) for x, _ in train]
    assert shapes == [(4, 3, 28, 28)] * 3
    # colour jitter stays beside RandAugment (timm drops it there unless forced)
    assert "ColorJitter" in repr(train.dataset.transform)


def test_each_rank_draws_its_own_augmentation(tmp_path):
    """The workers' seeds come from the loader's generator: seeded per epoch and per rank, so two ranks do not
    apply the same random draws to their (different) images, and a resumed epoch replays its own."""
    from matmamba_vision.data.batches import TrainLoader

    def draws(rank, epoch):
        loader = torch.utils.data.DataLoader(range(4), generator=torch.Generator())
        train = TrainLoader(loader, ["a"], 4, seed=3, rank=rank)
        train.set_epoch(epoch)
        return loader.generator.initial_seed()

    assert draws(0, 0) != draws(1, 0) and draws(0, 0) != draws(0, 1) and draws(1, 2) == draws(1, 2)


def test_distributed_eval_shards_without_padding(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "data", per_class=3)
    import matmamba_vision.data.loader as loader_mod

    seen = []
    for rank in range(2):
        monkeypatch.setattr(loader_mod, "_rank_world", lambda distributed, r=rank: (r, 2))
        loader = create_eval_loader(data_dir=str(root), data_config=RGB28, batch_size=4, workers=0, distributed=True)
        seen += torch.cat([t for _, t in loader]).tolist()
        assert loader.num_samples == 9
    assert sorted(seen) == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        create_eval_loader(data_dir=str(tmp_path / "absent"))
    (tmp_path / "only_train" / "train" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="no val"):
        create_eval_loader(data_dir=str(tmp_path / "only_train"))
    (tmp_path / "empty" / "val" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="empty"):
        create_eval_loader(data_dir=str(tmp_path / "empty"))


def test_nested_class_folders_are_refused(tmp_path):
    """train/cat/{a,b}/x.png was read as classes 'a' and 'b' (timm names a class after its innermost folder)."""
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            make_image_folder(tmp_path / "data" / split / cls, classes=("a", "b"), per_class=1, splits=(".",))
    with pytest.raises(ValueError, match=r"cat/a/000.jpg is not directly in a class folder"):
        create_eval_loader(data_dir=str(tmp_path / "data"), data_config=RGB28, workers=0)


def test_class_lists_must_match(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=1)
    make_image_folder(root, classes=("zebra",), per_class=1, splits=("val",))
    with pytest.raises(ValueError, match=r"class folders differ.*zebra"):
        create_eval_loader(data_dir=str(root), data_config=RGB28, workers=0)
    with pytest.raises(ValueError, match="class folders differ"):
        create_train_loader(data_dir=str(root), data_config=RGB28, batch_size=1, workers=0)


def test_unreadable_image_is_named_before_loading(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=2)
    bad = root / "val" / "bag" / "broken.jpg"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="unreadable image .*broken.jpg"):
        create_eval_loader(data_dir=str(root), data_config=RGB28, workers=0)


def test_corrupt_image_mid_epoch_raises_or_is_skipped(tmp_path, caplog):
    root = make_image_folder(tmp_path / "data", per_class=2)
    bad = truncated_jpeg(root / "train" / "coat" / "cut.jpg")
    strict = create_train_loader(data_dir=str(root), data_config=RGB28, batch_size=7, workers=0)
    strict.set_epoch(0)
    with pytest.raises(ValueError, match="unreadable image .*cut.jpg.*--skip-corrupt"):
        list(strict)
    lenient = create_train_loader(data_dir=str(root), data_config=RGB28, batch_size=7, workers=0, skip_corrupt=True)
    lenient.set_epoch(0)
    with caplog.at_level(logging.WARNING):
        batches = list(lenient)
    assert [tuple(x.shape) for x, _ in batches] == [(7, 3, 28, 28)]
    assert str(bad) in caplog.text and "skipped corrupt image" in caplog.text
