"""The held-out split (minitrain/minival carved from train): stratification, determinism, every loader and script."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
from train_utils import TINY_MODEL, load_script, make_image_folder

from matmamba_vision.data import create_eval_loader, create_train_loader, dataset_classes, load_fmnist
from matmamba_vision.data.folder import create_folder_dataset, split_dir
from matmamba_vision.data.holdout import (
    HOLDOUT_SEED,
    holdout_indices,
    holdout_record,
    holdout_size,
    holdout_subset,
    splits_overlap,
)
from matmamba_vision.data.identity import data_identity
from matmamba_vision.data.loader import train_holdout_record
from matmamba_vision.training import main as train_main

ROOT = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    # 3 classes x 7 train images: 21 -> 3 held out, one per class
    return make_image_folder(tmp_path_factory.mktemp("holdout"), per_class=7)


def test_sizes():
    assert holdout_size(60_000) == 10_000 and holdout_size(120_000) == 10_000 and holdout_size(21) == 3
    with pytest.raises(ValueError, match="n"):
        holdout_size(5)


def test_stratified_exactly_with_largest_remainder():
    labels = np.repeat([0, 1, 2, 3], [50, 30, 15, 5])  # 100 labels, shuffled below
    labels = np.random.default_rng(3).permutation(labels)
    idx = holdout_indices(labels, 17, seed=5)
    # shares 8.5, 5.1, 2.55, 0.85: floors 8+5+2+0 = 15, the two largest remainders (0.85, 0.55) get one more
    assert np.bincount(labels[idx], minlength=4).tolist() == [8, 5, 3, 1]
    assert len(idx) == 17 and (np.diff(idx) > 0).all() and idx.dtype == np.int64
    assert np.array_equal(idx, holdout_indices(labels, 17, seed=5))
    assert not np.array_equal(idx, holdout_indices(labels, 17, seed=6))
    # ties go to the lower class id
    assert np.bincount(np.array([0, 0, 1, 1])[holdout_indices([0, 0, 1, 1], 1)], minlength=2).tolist() == [1, 0]


@pytest.mark.parametrize(
    "labels, size, seed, message",
    [
        ([0, 1, 2], 0, 0, "size"),
        ([0, 1, 2], 3, 0, "size"),
        ([0, 1, 2], 1.5, 0, "size"),
        ([0, 1, 2], 1, -1, "seed"),
        ([], 1, 0, "labels"),
        ([[0, 1]], 1, 0, "labels"),
        ([0.5, 1.0], 1, 0, "labels"),
    ],
)
def test_bad_input(labels, size, seed, message):
    with pytest.raises(ValueError, match=message):
        holdout_indices(labels, size, seed)


def test_minitrain_and_minival_partition_train():
    labels = np.random.default_rng(0).integers(0, 7, 600)
    val, train = holdout_subset("minival", labels), holdout_subset("minitrain", labels)
    assert len(val) == 100 and len(train) == 500 and not set(val) & set(train)
    assert np.array_equal(np.sort(np.concatenate([val, train])), np.arange(600))
    assert holdout_subset("train", labels) is None and holdout_subset("val", labels) is None
    assert splits_overlap("train", "minival") and splits_overlap("minitrain", "train")
    assert not splits_overlap("minitrain", "minival") and not splits_overlap("val", "minival")


@pytest.mark.skipif(not FMNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_holdout():
    images, labels = load_fmnist("train")
    record = holdout_record(labels.numpy())
    assert record["size"] == 10_000 and record["of"] == 60_000 and record["seed"] == HOLDOUT_SEED == 0
    assert record["per_class"] == {str(c): 1000 for c in range(10)}
    assert record == holdout_record(labels.numpy()) == train_holdout_record("fmnist")
    held = holdout_indices(labels.numpy(), 10_000, HOLDOUT_SEED)
    assert record["sha256"] == hashlib.sha256(held.astype("<i8").tobytes()).hexdigest()
    val_images, val_labels = load_fmnist("minival")
    rest_images, rest_labels = load_fmnist("minitrain")
    assert len(val_labels) == 10_000 and len(rest_labels) == 50_000
    assert val_labels.bincount().tolist() == [1000] * 10 and rest_labels.bincount().tolist() == [5000] * 10
    assert (val_images == images[held]).all() and (val_labels == labels[held]).all()
    keep = np.setdiff1d(np.arange(60_000), held)
    assert (rest_images == images[keep]).all()
    # the preloaded fast path of the training loader reads the same subset
    loader = create_train_loader("fmnist", split="minitrain", batch_size=500, workers=0)
    assert loader.num_samples == 50_000
    assert create_eval_loader("fmnist", split="minival", batch_size=500, workers=0).num_samples == 10_000


def test_folder_minitrain_minival(folder):
    train = create_folder_dataset(str(folder), "train")
    val = create_folder_dataset(str(folder), "minival")
    rest = create_folder_dataset(str(folder), "minitrain")
    assert (len(train), len(val), len(rest)) == (21, 3, 18)
    assert val.classes == rest.classes == train.classes
    assert sorted(t for _, t in val.reader.samples) == [0, 1, 2]
    assert sorted(val.reader.samples + rest.reader.samples) == sorted(train.reader.samples)
    assert split_dir(str(folder), "minival") == folder / "train"
    assert dataset_classes("", str(folder), "minitrain") == train.classes
    loader = create_eval_loader("", str(folder), "minival", batch_size=2, workers=0)
    assert loader.num_samples == 3 and sum(len(t) for _, t in loader) == 3
    record = train_holdout_record("", str(folder))
    assert record["size"] == 3 and record["of"] == 21 and record["per_class"] == {"0": 1, "1": 1, "2": 1}


def test_cache_identity_differs_between_train_parts(folder):
    idents = [data_identity("", str(folder), s, {"input_size": (3, 28, 28)}) for s in ("train", "minitrain", "minival")]
    assert len({repr(sorted(i.items())) for i in idents}) == 3
    assert "holdout" not in idents[0] and idents[1]["holdout"]["sha256"] == idents[2]["holdout"]["sha256"]


def test_train_on_minitrain_validate_on_minival(tmp_path, folder):
    metrics = train_main(
        [
            *TINY_MODEL,
            "--data-dir",
            str(folder),
            "--train-split",
            "minitrain",
            "--val-split",
            "minival",
            "-b",
            "4",
            "--epochs",
            "1",
            "--threads",
            "1",
            "--output",
            str(tmp_path),
            "--experiment",
            "run",
            "--no-progress",
        ]
    )
    assert metrics
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "4 steps/epoch" in log  # 18 minitrain images in batches of 4 (train's 21 would give 5)


def test_ffcv_refuses_the_holdout_splits(tmp_path):
    for call in (
        lambda: create_eval_loader("ffcv", str(tmp_path), "minival"),
        lambda: create_train_loader("ffcv", str(tmp_path), "minitrain"),
        lambda: dataset_classes("ffcv", str(tmp_path), "minitrain"),
        lambda: train_holdout_record("ffcv", str(tmp_path)),
    ):
        with pytest.raises(ValueError, match="fmnist/folder"):
            call()


def test_bad_split_names_list_the_holdout_splits(tmp_path, folder):
    calls = [
        lambda: create_eval_loader("", str(folder), "test"),
        lambda: create_train_loader("", str(folder), "test"),
        lambda: split_dir(str(folder), "test"),
        lambda: load_fmnist("test", str(tmp_path)),
        lambda: load_script("validate").main(["--data-dir", str(folder), "--split", "test"]),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="minitrain.*minival"):
            call()
    retrieval = load_script("retrieval")
    with pytest.raises(ValueError, match="minitrain.*minival"):
        retrieval.main(["--data-dir", str(folder), "--query-split", "test"])
    with pytest.raises(ValueError, match="share images"):
        retrieval.main(["--data-dir", str(folder), "--db-split", "train", "--query-split", "minival"])
