"""validate.py and retrieval.py end to end: an image folder, the Fashion-MNIST default, bad input."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from eval_synthetic import SyntheticLoader, tiny_model
from PIL import Image
from train_utils import load_script

from matmamba_vision.weights import CheckpointError, save_weights

ROOT = Path(__file__).resolve().parents[1]
# the model of eval_synthetic.tiny_model, named: the scripts' default is the demo's (patch-7) model
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
    "16",
]
TINY_YAML = [
    "--model",
    "matmamba_vision_tiny_patch4_28",
    "--model-kwargs",
    "{embed_dim: 32, depth: 2, d_state: 16}",
    "-j",
    "0",
    "-b",
    "16",
]


@pytest.fixture(scope="module")
def scripts():
    return load_script("validate"), load_script("retrieval")


def _folder(root: Path, n_train=24, n_val=12, classes=("a", "b", "c", "d"), val_classes=None):
    """ROOT/{train,val}/CLASS/*.png from the synthetic templates (grey 28x28)."""
    for split, n, names in (("train", n_train, classes), ("val", n_val, val_classes or classes)):
        data = SyntheticLoader(n, n_classes=len(names), seed=len(split))
        for i, (img, t) in enumerate(zip(data.images, data.targets)):
            d = root / split / names[int(t)]
            d.mkdir(parents=True, exist_ok=True)
            px = np.clip(img[0].numpy() * 60 + 128, 0, 255).astype(np.uint8)
            Image.fromarray(px, mode="L").save(d / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model_best.safetensors"
    save_weights(tiny_model(depth=2).state_dict(), path)
    return path


def test_validate_on_a_folder(scripts, checkpoint, tmp_path):
    validate, _ = scripts
    data = _folder(tmp_path / "data")
    out = tmp_path / "out"
    rows = validate.main(
        [
            "--data-dir",
            str(data),
            "--checkpoint",
            str(checkpoint),
            "--num-classes",
            "10",
            "--mixnmatch",
            "official",
            "--output",
            str(out),
            "--results-file",
            str(tmp_path / "r.json"),
            *TINY,
        ]
    )
    assert [r["name"] for r in rows[:3]] == ["g=32", "g=16", "g=8"] and len(rows) == 3 + 3  # 3 pairs x (k = 1)
    assert all(r["samples"] == 12 for r in rows)
    for ext in ("csv", "json", "png"):
        assert (out / f"validate.{ext}").stat().st_size > 0
    meta = json.loads((out / "validate.json").read_text())
    assert meta["checkpoint"] == str(checkpoint) and meta["data_config"]["input_size"] == [1, 28, 28]
    assert len(json.loads((tmp_path / "r.json").read_text())["rows"]) == 6


def test_retrieval_on_a_folder_reuses_its_cache(scripts, checkpoint, tmp_path, capsys):
    _, retrieval = scripts
    data = _folder(tmp_path / "data")
    args = [
        "--data-dir",
        str(data),
        "--checkpoint",
        str(checkpoint),
        "--num-classes",
        "10",
        "--output",
        str(tmp_path / "out"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--knn-backend",
        "torch",
        *TINY,
    ]
    first = retrieval.main(args)
    assert [r["query_granularity"] for r in first] == [32, 16, 8]
    assert not any(r["db_cached"] or r["query_cached"] for r in first)
    assert first[0]["top1"] == 100.0  # same-class images are near copies
    second = retrieval.main(args)
    assert all(r["db_cached"] and r["query_cached"] for r in second)
    assert [r["top1"] for r in second] == [r["top1"] for r in first]
    for ext in ("csv", "json", "png"):
        assert (tmp_path / "out" / f"retrieval.{ext}").stat().st_size > 0
    assert "1-NN top-1" in capsys.readouterr().out


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").is_file()
    and not os.environ.get("MATMAMBA_FMNIST_DIR"),
    reason="Fashion-MNIST is not installed",
)
def test_defaults_run_on_fashion_mnist(scripts, tmp_path):
    validate, retrieval = scripts
    rows = validate.main(["--max-samples", "32", "--granularities", "32", "--output", str(tmp_path), *TINY_YAML])
    assert rows[0]["samples"] == 32
    rows = retrieval.main(
        ["--max-samples", "32", "--query-granularities", "16", "--output", str(tmp_path), "--cache-dir", "", *TINY]
    )
    assert rows[0]["queries"] == 32 and rows[0]["db_size"] == 32


def test_bad_input(scripts, checkpoint, tmp_path):
    validate, retrieval = scripts
    data = _folder(tmp_path / "data")
    common = ["--data-dir", str(data), "--output", str(tmp_path / "o"), *TINY]
    wrong = tmp_path / "wrong.safetensors"
    save_weights(tiny_model(depth=3).state_dict(), wrong)
    with pytest.raises(CheckpointError, match=r"unexpected keys: layers\.2\.mixer"):
        validate.main(["--checkpoint", str(wrong), *common])
    shapes = r"shape mismatches: head\.bias.*head\.weight: checkpoint \(10, 32\) vs model \(4, 32\)"
    with pytest.raises(CheckpointError, match=shapes):
        validate.main(["--checkpoint", str(checkpoint), "--num-classes", "4", *common])
    with pytest.raises(ValueError, match="--granularities: the model cannot run at 12"):
        validate.main(["--granularities", "12", *common])
    with pytest.raises(ValueError, match="--mixnmatch"):
        validate.main(["--mixnmatch", "random:many", *common])
    with pytest.raises(ValueError, match="--model-kwargs"):
        validate.main(["--data-dir", str(data), *TINY, "--model-kwargs", "wings=2"])
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    (empty / "val").mkdir()
    with pytest.raises(ValueError):
        retrieval.main(["--data-dir", str(empty), "--cache-dir", "", *TINY])
    odd = _folder(tmp_path / "odd", val_classes=("a", "b", "c", "e"))
    with pytest.raises(ValueError, match="class"):
        retrieval.main(["--data-dir", str(odd), "--cache-dir", "", "--output", str(tmp_path / "o"), *TINY])
    with pytest.raises(ValueError, match="--db-split and --query-split are both 'val'"):
        retrieval.main(["--db-split", "val", "--query-split", "val", *common])
    # an output that cannot be written is found before the evaluation runs (its results were lost after it)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for script in (validate, retrieval):
        with pytest.raises(ValueError, match="--output .*a_file"):
            script.main(
                ["--data-dir", str(data), "--output", str(blocker), "--cache-dir", "", *TINY]
                if script is retrieval
                else ["--data-dir", str(data), "--output", str(blocker), *TINY]
            )
    with pytest.raises(ValueError, match="--results-file"):
        validate.main([*common, "--results-file", str(blocker / "r.csv")])


def test_model_and_levels_read_from_a_train_checkpoint(scripts, tmp_path):
    """train.py records model, model_kwargs and trained granularities in the safetensors metadata."""
    validate, _ = scripts
    data = _folder(tmp_path / "data")
    ckpt = tmp_path / "model_best.safetensors"
    model = tiny_model(depth=2, embed_dim=64, num_classes=4)
    save_weights(
        model.state_dict(),
        ckpt,
        metadata={
            "model": "matmamba_vision_tiny_patch4_28",
            "granularities": [64, 16],
            "model_kwargs": {"embed_dim": 64, "depth": 2, "d_state": 16, "num_classes": 4},
        },
    )
    rows = validate.main(
        [
            "--data-dir",
            str(data),
            "--checkpoint",
            str(ckpt),
            "--mixnmatch",
            "official",
            "--output",
            str(tmp_path / "o"),
            "-j",
            "0",
        ]
    )
    assert [(r["name"], r["trained"]) for r in rows] == [("g=64", True), ("g=16", True), ("64x1+16x1", False)]


def test_baseline_checkpoint_widths_read_from_its_shapes(scripts, checkpoint, tmp_path):
    """A separately trained smaller model (here: weights of a g=16 submodel) queries the full database."""
    from matmamba_vision import extract_submodel

    _, retrieval = scripts
    data = _folder(tmp_path / "data")
    small = tmp_path / "small.safetensors"
    save_weights(extract_submodel(tiny_model(seed=3, depth=2, num_classes=10), 16).state_dict(), small)
    rows = retrieval.main(
        [
            "--data-dir",
            str(data),
            "--checkpoint",
            str(checkpoint),
            "--num-classes",
            "10",
            "--query-granularities",
            "32",
            "--baseline-checkpoints",
            f"small={small}",
            "--cache-dir",
            "",
            "--knn-backend",
            "torch",
            "--output",
            str(tmp_path / "o"),
            *TINY,
        ]
    )
    assert [(r["query"], r["query_kind"], r["query_granularity"], r["db_model"]) for r in rows] == [
        ("g=32", "granularity", 32, "nested"),
        ("small", "baseline", 16, "nested"),
        ("small", "baseline", 16, "small"),  # the baseline against its own database too
    ]
    assert rows[1]["query_params_non_embedding"] < rows[0]["query_params_non_embedding"]


def test_a_checkpoint_trained_at_another_size_with_a_corrupt_image(scripts, tmp_path):
    """train.py at --img-size 32 on 28 px images, one unreadable val image skipped (--skip-corrupt reached only
    the training split before); validate.py and retrieval.py rebuild the 32 px model from the checkpoint (they
    used the registered 28 px input size) and --model-kwargs adds to the recorded kwargs (it replaced them)."""
    from train_utils import TINY_MODEL, truncated_jpeg

    from matmamba_vision.training import main as train

    validate, retrieval = scripts
    data = _folder(tmp_path / "data")
    truncated_jpeg(data / "val" / "a" / "broken.jpg")
    train(
        [
            *TINY_MODEL,
            "--img-size",
            "32",
            "--data-dir",
            str(data),
            "-b",
            "8",
            "--epochs",
            "1",
            "-j",
            "0",
            "--skip-corrupt",
            "--no-progress",
            "--output",
            str(tmp_path),
            "--experiment",
            "r32",
        ]
    )
    ckpt = str(tmp_path / "r32" / "model_best.safetensors")
    common = [
        "--checkpoint",
        ckpt,
        "--data-dir",
        str(data),
        "--skip-corrupt",
        "-j",
        "0",
        "-b",
        "8",
        "--model-kwargs",
        "ssd_backend=torch",
    ]
    rows = validate.main([*common, "--output", str(tmp_path / "val")])
    assert [r["name"] for r in rows] == ["g=32", "g=16", "g=8", "g=4"]
    assert json.loads((tmp_path / "val" / "validate.json").read_text())["data_config"]["input_size"] == [1, 32, 32]
    rows = retrieval.main([*common, "--output", str(tmp_path / "ret"), "--cache-dir", "", "--knn-backend", "torch"])
    assert [r["query_granularity"] for r in rows] == [32, 16, 8, 4]


def test_granularity_lists_take_commas_or_spaces(scripts, checkpoint, tmp_path):
    from matmamba_vision.training.config import parse_args

    assert parse_args(["--granularities", "32", "16"]).granularities == [32, 16]
    assert parse_args(["--granularities", "32,16", "8"]).granularities == [32, 16, 8]
    validate, _ = scripts
    rows = validate.main(
        [
            "--data-dir",
            str(_folder(tmp_path / "data")),
            "--checkpoint",
            str(checkpoint),
            "--num-classes",
            "10",
            "--granularities",
            "32,16",
            "--output",
            str(tmp_path / "o"),
            *TINY,
        ]
    )
    assert [r["name"] for r in rows] == ["g=32", "g=16"]


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--mean", "0.5", "0.5"], r"--mean needs 1 value \(one per input channel\), got 2"),
        (["--pretrained"], "matmamba_vision_tiny_patch4_28 has no published weights"),
    ],
)
def test_eval_flags_refused_with_a_clear_message(scripts, tmp_path, flags, match):
    validate, _ = scripts
    with pytest.raises(ValueError, match=match):
        validate.main(["--output", str(tmp_path / "o"), *TINY, *flags])


def test_unknown_interpolation_is_an_argparse_error(scripts, capsys):
    validate, _ = scripts
    with pytest.raises(SystemExit):
        validate.parse_args(["--interpolation", "foo"])
    assert "invalid choice: 'foo'" in capsys.readouterr().err


def test_max_samples_spreads_over_a_class_sorted_folder(tmp_path):
    """--max-samples took the first N images: on a class-sorted folder (ImageNet's) only the first classes."""
    from matmamba_vision.data import create_eval_loader, fmnist_data_config

    data = _folder(tmp_path / "data", n_val=40)  # val/{a,b,c,d}, listed class by class
    loader = create_eval_loader(
        "folder", str(data), "val", fmnist_data_config(), batch_size=4, workers=0, max_samples=8
    )
    targets = torch.cat([t for _, t in loader])
    assert len(targets) == 8 and set(targets.tolist()) == {0, 1, 2, 3}
    everything = create_eval_loader("folder", str(data), "val", fmnist_data_config(), batch_size=64, workers=0)
    assert len(torch.cat([t for _, t in everything])) == 40


def test_unwritable_cache_dir_is_refused_before_any_work(scripts, tmp_path):
    _, retrieval = scripts
    (tmp_path / "taken").write_text("a file, not a folder")
    with pytest.raises(ValueError, match=r"--cache-dir .*taken/cache: cannot write there"):
        retrieval.main(["--output", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "taken" / "cache"), *TINY])


def test_a_loader_worker_error_is_reported_on_one_line(tmp_path):
    """An unreadable image met in a DataLoader worker (validate.py's default -j 2) came out as ~45 lines."""
    from train_utils import truncated_jpeg

    from matmamba_vision.data import create_eval_loader, fmnist_data_config
    from matmamba_vision.flags import error_line

    data = _folder(tmp_path / "data")
    truncated_jpeg(data / "val" / "a" / "0broken.jpg")
    loader = create_eval_loader("folder", str(data), "val", fmnist_data_config(), batch_size=4, workers=1)
    with pytest.raises(ValueError) as caught:
        for _ in loader:
            pass
    assert "Original Traceback" in str(caught.value)
    line = error_line(caught.value)
    assert line.startswith("unreadable image ") and "0broken.jpg" in line and "\n" not in line


def test_a_non_square_model_is_costed_at_its_own_size(scripts, tmp_path):
    """The FLOPs column counted a square image of the width: a (28, 56) model failed after the whole pass."""
    import matmamba_vision as mv

    validate, _ = scripts
    rows = validate.main(
        [
            "--data-dir",
            str(_folder(tmp_path / "data")),
            "--model-kwargs",
            "{embed_dim: 32, depth: 2, d_state: 16, img_size: [28, 56]}",
            "--num-classes",
            "4",
            "-j",
            "0",
            "-b",
            "16",
            "--output",
            str(tmp_path / "o"),
        ]
    )
    from matmamba_vision.models.matmamba_vision import DEFAULT_MODEL  # validate.py's model without --model
    from matmamba_vision.weights import build_model

    model = build_model(DEFAULT_MODEL, embed_dim=32, depth=2, d_state=16, img_size=(28, 56), num_classes=4)
    assert rows[0]["name"] == "g=32" and rows[0]["gflops"] == pytest.approx(mv.count_flops(model) / 1e9)


def test_cache_is_not_served_after_the_images_change(scripts, checkpoint, tmp_path):
    """The cache key named the folder, not its contents: after images were removed or rewritten the old
    embeddings (and query count) were served."""
    _, retrieval = scripts
    data = _folder(tmp_path / "data")
    args = [
        "--data-dir",
        str(data),
        "--checkpoint",
        str(checkpoint),
        "--num-classes",
        "10",
        "--output",
        str(tmp_path / "out"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--knn-backend",
        "torch",
        "--query-granularities",
        "32",
        *TINY,
    ]
    retrieval.main(args)
    assert all(r["db_cached"] and r["query_cached"] for r in retrieval.main(args))  # unchanged: served
    gone = [sorted(d.glob("*.png"))[0] for d in sorted((data / "val").iterdir())][:3]  # one from each of 3 classes
    for p in gone:
        p.unlink()
    train_image = sorted((data / "train").rglob("*.png"))[0]
    train_image.write_bytes(sorted((data / "train").rglob("*.png"))[-1].read_bytes())
    rows = retrieval.main(args)
    assert not rows[0]["db_cached"] and not rows[0]["query_cached"]
    assert rows[0]["queries"] == 12 - 3


@pytest.mark.parametrize(
    "script, flags, match",
    [
        ("validate", ["--mean", "nan"], r"--mean must be finite"),  # wrote NaN results with exit 0
        ("validate", ["--std", "0"], r"--std must be finite and positive"),
        ("validate", ["--crop-pct", "0"], r"--crop-pct must be in \(0, 1\]"),  # 0 silently meant the default
        ("validate", ["--results-file", "."], "is a folder"),  # a traceback after the whole evaluation
        ("retrieval", ["--knn-backend", "torch", "--knn-index", "HNSW32"], "needs --knn-backend faiss"),
        ("retrieval", ["--max-samples", "5"], "--max-samples must be at least 10 for retrieval"),
        # the flag types train.py uses: a one-line ValueError at parse time
        ("validate", ["-b", "0"], "--batch-size must be at least 1, got 0"),
        ("retrieval", ["--workers", "-1"], "--workers must be 0 or more, got -1"),
        ("validate", ["--model-kwargs", "depth=2", "bogus"], r"--model-kwargs: \['bogus'\] are not KEY=VALUE"),
    ],
)
def test_eval_flags_checked_before_any_work(scripts, tmp_path, script, flags, match):
    validate, retrieval = scripts
    main = validate.main if script == "validate" else retrieval.main
    with pytest.raises(ValueError, match=match):
        main(
            ["--output", str(tmp_path / "o"), "--cache-dir", "", *TINY, *flags]
            if script == "retrieval"
            else ["--output", str(tmp_path / "o"), *TINY, *flags]
        )


def test_each_script_reads_its_checkpoint_once(scripts, tmp_path, monkeypatch):
    """retrieval.py opened one checkpoint four times (metadata for the model, the weights, metadata again for
    the trained levels, the bytes for the cache key's SHA-256); validate.py three. Now one read each, baselines
    too."""
    import builtins
    import hashlib

    import matmamba_vision.weights as ckpt_mod

    validate, retrieval = scripts
    path = tmp_path / "ckpt" / "model_best.safetensors"
    save_weights(
        tiny_model(depth=2).state_dict(),
        path,
        metadata={
            "model": "matmamba_vision_tiny_patch4_28",
            "granularities": [32, 16],
            "model_kwargs": {"embed_dim": 32, "depth": 2, "d_state": 16, "num_classes": 10},
        },
    )
    reads = []

    def spy(original, arg_of):
        def call(*args, **kwargs):
            target = arg_of(args, kwargs)
            if isinstance(target, (str, os.PathLike)) and Path(target).resolve() == path.resolve():
                reads.append(original.__name__)
            return original(*args, **kwargs)

        return call

    monkeypatch.setattr(builtins, "open", spy(builtins.open, lambda a, k: a[0] if a else k.get("file")))
    monkeypatch.setattr(Path, "read_bytes", spy(Path.read_bytes, lambda a, k: a[0]))
    monkeypatch.setattr(ckpt_mod, "safe_open", spy(ckpt_mod.safe_open, lambda a, k: a[0]))
    monkeypatch.setattr(torch, "load", spy(torch.load, lambda a, k: a[0]))
    data = _folder(tmp_path / "data")
    common = ["--data-dir", str(data), "--checkpoint", str(path), "-j", "0", "-b", "16"]
    rows = validate.main([*common, "--output", str(tmp_path / "v")])
    assert [r["name"] for r in rows] == ["g=32", "g=16"]  # the recorded levels and kwargs were used
    assert len(reads) == 1, reads
    reads.clear()
    rows = retrieval.main(
        [
            *common,
            "--output",
            str(tmp_path / "r"),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--knn-backend",
            "torch",
            "--query-granularities",
            "32",
            "--baseline-checkpoints",
            f"base={path}",
        ]
    )
    assert len(reads) == 2, reads  # the model's checkpoint, and the same file once more as the baseline
    # the submodel's row, the baseline's against the model's database and against its own
    assert len(rows) == 3 and rows[0]["query_granularity"] == 32
    assert [r["db_model"] for r in rows] == ["nested", "nested", "base"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == ckpt_mod.read_checkpoint(path).sha256
