"""train.py end to end on a tiny folder: outputs, checkpoints, and every bad input of issue 3."""

import csv
import hashlib
import math
import re

import pytest
import torch
import yaml
from train_utils import TINY_MODEL, make_image_folder, truncated_jpeg

from matmamba_vision.training import TrainingError, main
from matmamba_vision.weights import load_torch, load_weights


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data"), per_class=4)


def run(tmp_path, data, *extra, experiment="run"):
    return main(
        [
            *TINY_MODEL,
            "--data-dir",
            str(data),
            "-b",
            "4",
            "--epochs",
            "2",
            "--output",
            str(tmp_path),
            "--experiment",
            experiment,
            "--no-progress",
            *extra,
        ]
    )


def test_outputs_checkpoints_and_best(tmp_path, data):
    metrics = run(
        tmp_path,
        data,
        "--matryoshka-mode",
        "sum",
        "--checkpoint-hist",
        "1",
        "--model-ema",
        "--grad-accum-steps",
        "2",
        "--amp",
        "--amp-dtype",
        "bfloat16",
        "--drop-path",
        "0.1",
        "--proj-drop",
        "0.1",
        "--head-init-bias",
        "-2.3",
        "--best-granularity",
        "8",
    )
    out = tmp_path / "run"
    assert sorted(metrics) == [4, 8, 16, 32] and all(0 <= m["top1"] <= 100 for m in metrics.values())
    args = yaml.safe_load((out / "args.yaml").read_text())
    assert args["model"] == "matmamba_vision_tiny_patch4_28" and args["grad_accum_steps"] == 2
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    for g in (32, 16, 8, 4):
        for key in (f"train_loss_g{g}", f"eval_top1_g{g}", f"eval_top5_g{g}", f"eval_loss_g{g}", f"ema_top1_g{g}"):
            assert float(rows[-1][key]) >= 0, key
    assert (out / "train_curves.png").read_bytes()[:4] == b"\x89PNG"
    log = (out / "log.txt").read_text()  # epochs counted from 0, as in the files, the summary and the metadata
    assert re.findall(r"INFO epoch (\d+) \(0\.\.1, ", log) == ["0", "1"]
    # an RGB folder and a grey model: said once, in the log
    assert log.count("WARNING data: the train images have 3 channels but matmamba_vision_tiny_patch4_28 takes 1") == 1
    # last N kept (N=1), state file loadable weights-only and complete
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1.safetensors", "checkpoint-1.state.pt"]
    state = load_torch(out / "checkpoint-1.state.pt")
    assert {"optimizer", "scheduler", "ema", "rng", "args", "epoch", "step", "best"} <= set(state)
    assert state["epoch"] == 1 and state["step"] == 6 and state["weights"] == "checkpoint-1.safetensors"
    best = load_weights(out / "model_best.safetensors")
    assert best["head.weight"].shape == (3, 32) and (out / "model_best_ema.safetensors").is_file()
    # the head size came from the data's 3 classes: recorded, so validate.py / retrieval.py rebuild it
    from matmamba_vision.weights import read_weights_metadata

    assert read_weights_metadata(out / "model_best.safetensors")["model_kwargs"]["num_classes"] == 3
    assert state["best"]["granularity"] == 8
    best_epoch = read_weights_metadata(out / "model_best.safetensors")["epoch"]
    assert state["best"]["epoch"] == best_epoch and f"(epoch {best_epoch}); outputs in" in log
    # model_best/ is a timm folder: create_model and timm's data config need no other flag
    import timm
    from timm.data import resolve_data_config

    folder = timm.create_model(f"local-dir:{out / 'model_best'}", pretrained=True).eval()
    from matmamba_vision.weights import build_model

    ref = build_model(
        "matmamba_vision_tiny_patch4_28",
        checkpoint=out / "model_best.safetensors",
        num_classes=3,
        embed_dim=32,
        depth=2,
        d_state=8,
        headdim=4,
    ).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(folder(x), ref(x))
    cfg = resolve_data_config({}, model=folder)
    assert cfg["input_size"] == (1, 28, 28) and cfg["mean"] == pytest.approx((0.2860,))


def test_cycle_mode_and_yaml_config(tmp_path, data):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "matryoshka-mode": "cycle",
                "granularities": [32, 8],
                "epochs": 1,
                "batch_size": 8,
                "mixup": 0.8,
                "cutmix": 1.0,
                "smoothing": 0.1,
            }
        )
    )
    metrics = main(
        [
            *TINY_MODEL,
            "-c",
            str(cfg),
            "--data-dir",
            str(data),
            "--output",
            str(tmp_path),
            "--experiment",
            "cyc",
            "--no-progress",
        ]
    )
    assert sorted(metrics) == [8, 32]
    header = open(tmp_path / "cyc" / "summary.csv").readline()
    assert "train_loss_g32" in header and "train_loss_g8" in header and "g16" not in header


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--model", "resnet50"], "unknown model 'resnet50'"),
        (["--granularities", "32,7"], "--granularities: 7 is not valid"),
        (["--granularities", "64"], "--granularities: 64 is not valid"),
        (["--best-granularity", "16", "--granularities", "32,8"], "--best-granularity 16"),
        (["-b", "6", "--grad-accum-steps", "4"], "does not split into --grad-accum-steps 4"),
        (["-b", "6", "--matryoshka-mode", "cycle"], "cycle mode"),
        (["-b", "64"], "exceeds the 12 images"),
        (["--dataset", "webdataset"], "dataset must be one of"),
        (["--log-interval", "0"], "--log-interval must be at least 1, got 0"),
        (["--smoothing", "1.5"], r"--smoothing must be in \[0, 1\), got 1.5"),
        (["--threads", "-1"], "--threads must be 0"),
        (
            ["-vb", "-2"],
            "--validation-batch-size must be at least 1, got -2",
        ),  # one check (positive_int) for all counts
        (["--warmup-epochs", "-1"], "--warmup-epochs must be 0 or more"),
        # timm's plateau scheduler asserted (a traceback) on per-update stepping, and never left a fractional warm-up
        (["--sched", "plateau"], r"--sched-on-updates must be off (--no-sched-on-updates\) with --sched plateau"),
        (
            ["--sched", "plateau", "--no-sched-on-updates", "--warmup-epochs", "0.3"],
            "--warmup-epochs must be a whole number with --sched plateau, got 0.3",
        ),
        (["--model-kwargs", "{depth:2}"], r"--model-kwargs: \['depth:2'\] are not argument names"),
        (["--drop-path", "1.5"], r"--drop-path must be in \[0, 1\), got 1.5"),  # was a RuntimeError in the first step
        (["--pretrained"], "matmamba_vision_tiny_patch4_28 has no published weights"),
        # found by a hostile-input pass: each trained nonsense with exit 0, or failed later with a traceback
        (["--model-ema-decay", "2"], r"--model-ema-decay must be in \[0, 1\], got 2.0"),
        (["--warmup-lr", "-1"], "--warmup-lr must be 0 or more"),
        (["--min-lr", "10"], r"--min-lr must be in \[0, --lr\], got 10.0"),
        (["--cooldown-epochs", "-5"], "--cooldown-epochs must be 0 or more"),
        (["--num-classes", "0"], "--num-classes must be at least 1"),
        (["--num-classes", "2"], "--num-classes 2 is fewer than the 3 classes of the data"),
        (["--scale", "0.9", "0.1"], "--scale must be two numbers 0 < min <= max <= 1"),
        (["--ratio", "0", "0"], "--ratio must be positive and finite, got 0.0"),  # each value checked by its type
        (["--ratio", "2", "1"], "--ratio must be two numbers 0 < min <= max"),  # the order: a cross-value check
        (["--scale", "0", "1"], r"--scale must be in (0, 1\], got 0.0"),
        (["--lr", "inf"], "--lr must be positive and finite, got inf"),
        (["--epochs", "two"], "--epochs must be at least 1, got 'two'"),
        (["--seed", "-1"], r"--seed must be in \[0, 2\*\*31\), got -1"),
        (["--model-kwargs", "depth"], "--model-kwargs must be KEY=VALUE ... or a YAML mapping, got 'depth'"),
        (["--model-kwargs", "depth=2", "bogus"], r"--model-kwargs: \['bogus'\] are not KEY=VALUE"),
        (["--checkpoint-hist", "0"], "--checkpoint-hist must be at least 1"),
        (["--clip-grad", "nan"], "--clip-grad must be a number"),
        (["--reprob", "2"], r"--reprob must be in \[0, 1\]"),
        (["--re-max-area", "0.01"], r"--re-max-area must be in \[0.02, 1\]"),
        (["--aa", "official-m9"], "--aa must be 'official'"),
        (["--opt", "bogus"], "--opt must be one of timm's optimizers"),
        (["--torchcompile", "bogus"], "--torchcompile must be one of"),
        (["--model-kwargs", "{embed_dim: 32"], "--model-kwargs is not valid YAML"),
    ],
)
def test_bad_flags_stop_before_training(tmp_path, data, flags, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        run(tmp_path, data, *flags)
    assert not (tmp_path / "run").exists()  # no run folder (nor log.txt) is left by a refused run


def test_a_new_run_into_a_folder_holding_a_run_is_refused(tmp_path, data):
    """It used to start there: the keep-last-N pruning deleted its own first checkpoint (the old run's were newer)
    and model_best/summary.csv were overwritten, mixing two runs."""
    run(tmp_path, data, "--epochs", "1")
    files = lambda: {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}  # noqa: E731
    before = files()
    assert tmp_path / "run" / "model_best" / "config.json" in {tmp_path / p for p in before}
    with pytest.raises(ValueError, match=rf"{tmp_path / 'run'} already holds a run .*--resume"):
        run(tmp_path, data, "--epochs", "1", "--seed", "7")
    assert files() == before


def test_unknown_scheduler_is_refused(tmp_path, data, capsys):
    """timm's create_scheduler_v2 returns no schedule for a name it does not know: a typo trained at constant LR."""
    with pytest.raises(SystemExit):
        run(tmp_path, data, "--sched", "cosin")
    assert "invalid choice: 'cosin'" in capsys.readouterr().err


def test_bad_data_stops_before_training(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        run(tmp_path, tmp_path / "absent")
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "val" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="empty"):
        run(tmp_path, tmp_path / "empty")
    differ = make_image_folder(tmp_path / "differ", per_class=2)
    make_image_folder(differ, classes=("yak",), per_class=2, splits=("train",))
    with pytest.raises(ValueError, match="class folders differ"):
        run(tmp_path, differ)
    bad = make_image_folder(tmp_path / "bad", per_class=2)
    (bad / "train" / "bag" / "garbage.png").write_bytes(b"\x00" * 50)
    with pytest.raises(ValueError, match="garbage.png"):
        run(tmp_path, bad)
    cfg = tmp_path / "typo.yaml"
    cfg.write_text("learning_rate: 0.1\n")
    with pytest.raises(ValueError, match="unknown keys.*learning_rate"):
        run(tmp_path, differ, "-c", str(cfg))
    cfg.write_text("lr: [\n")  # a YAML syntax error was a parser traceback
    with pytest.raises(ValueError, match="is not valid YAML"):
        run(tmp_path, differ, "-c", str(cfg))


def test_corrupt_image_mid_epoch(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=4)
    bad = truncated_jpeg(data / "train" / "coat" / "cut.jpg")
    with pytest.raises(ValueError, match=f"unreadable image {bad}.*--skip-corrupt"):
        run(tmp_path, data, "--epochs", "1", experiment="strict")
    run(tmp_path, data, "--epochs", "1", "--skip-corrupt", experiment="lenient")
    log = (tmp_path / "lenient" / "log.txt").read_text()
    assert f"skipped corrupt image {bad}" in log


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, data, monkeypatch):
    run(tmp_path, data, "--epochs", "1")
    out = tmp_path / "run"
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("checkpoint-*")}
    from matmamba_vision.models.matmamba_vision import MatMambaVision

    original = MatMambaVision.forward_head
    monkeypatch.setattr(
        MatMambaVision, "forward_head", lambda self, x, pre_logits=False: original(self, x, pre_logits) * float("inf")
    )
    with pytest.raises(TrainingError, match=r"non-finite training loss.*epoch 1,.*checkpoint-0.state.pt"):
        run(tmp_path, data, "--resume", str(out))
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("checkpoint-*")}
    assert after == digest and torch.isfinite(load_weights(out / "checkpoint-0.safetensors")["head.weight"]).all()


def test_best_model_is_written_before_the_state_that_names_it(tmp_path, data, monkeypatch):
    """A kill between the two writes must not leave a state file whose "best" epoch is not the best model on disk."""
    from matmamba_vision.training.checkpointing import CheckpointManager

    order = []
    save, save_best = CheckpointManager.save, CheckpointManager.save_best
    monkeypatch.setattr(CheckpointManager, "save", lambda self, *a, **k: order.append("state") or save(self, *a, **k))
    monkeypatch.setattr(
        CheckpointManager, "save_best", lambda self, *a, **k: order.append("best") or save_best(self, *a, **k)
    )
    run(tmp_path, data, "--epochs", "1")  # the first epoch is always the best so far
    assert order == ["best", "state"]


def test_warmup_prefix_adds_the_warmup_epochs(tmp_path, data):
    """timm adds --warmup-epochs (a float flag) to the epochs under --warmup-prefix: 1 + 0.5 -> 2 epochs run."""
    run(tmp_path, data, "--epochs", "1", "--warmup-epochs", "0.5", "--warmup-prefix", "--sched-on-updates")
    assert [r["epoch"] for r in csv.DictReader(open(tmp_path / "run" / "summary.csv"))] == ["0", "1"]


def test_ema_added_on_resume_starts_from_the_resumed_weights(tmp_path, data):
    run(tmp_path, data, "--epochs", "1")
    out = tmp_path / "run"
    resumed = load_weights(out / "checkpoint-0.safetensors")
    run(tmp_path, data, "--resume", str(out), "--model-ema", "--model-ema-decay", "0.999")
    ema = load_torch(out / "checkpoint-1.state.pt")["ema"]
    for k in ("head.weight", "layers.0.mixer.xbc_proj.weight"):  # 3 updates at decay 0.999: still the resumed weights
        assert ((ema[k] - resumed[k]).norm() / resumed[k].norm()).item() < 0.01, k


# batch and steps per optimiser update: 4 official micro-steps (one per granularity) make one update (issue 16)
@pytest.mark.parametrize("name, batch, steps", [("imagenet_35m", 32768, 31_200), ("imagenet_135m", 16384, 62_400)])
def test_official_recipe_configs(name, batch, steps):
    from train_utils import REPO

    from matmamba_vision.training import parse_args

    args = parse_args(["-c", str(REPO / "configs" / f"{name}.yaml")])
    assert args.batch_size == batch and args.lr == 5e-3 and args.min_lr == pytest.approx(2e-4 * 5e-3)
    assert args.matryoshka_mode == "cycle" and args.weight_decay == 0.1 and args.clip_grad == 1.0
    assert (args.mixup, args.cutmix, args.smoothing, args.reprob, args.head_init_bias) == (0.8, 1.0, 0.1, 0.25, -6.9)
    per_epoch = 1_281_167 // batch  # ImageNet-1K train images, last partial batch dropped
    total_epochs = args.epochs + args.warmup_epochs  # warmup_prefix: timm adds the warm-up epochs
    assert args.warmup_prefix and math.ceil(total_epochs) * per_epoch == steps
    assert args.warmup_epochs * per_epoch == pytest.approx(2_500)  # 10,000 official micro-steps
    assert parse_args(["-c", str(REPO / "configs" / "fmnist.yaml")]).model_kwargs == parse_args([]).model_kwargs


@pytest.mark.parametrize(
    "text, message",
    [
        ("lr: [1, 2]\n", r"lr takes one value, got \[1, 2\]"),  # were TypeError tracebacks from set_defaults' values
        ("scale: 0.5\n", "scale takes a list, got 0.5"),
        ("amp_dtype: float64\n", r"amp_dtype must be one of \['bfloat16', 'float16'\], got 'float64'"),
        ("clip_mode: bogus\n", "clip_mode must be one of"),
        ("model_ema: 'no'\n", "model_ema takes true or false, got 'no'"),
        ("mixup: true\n", "mixup takes float, got True"),
        ("epochs: 2.5\n", "epochs takes an integer, got 2.5"),
        # the same type functions as the flags (were checked only after parsing, in a separate table)
        ("log_interval: 0\n", "log_interval: must be at least 1, got 0"),
        ("drop_path: 1.5\n", r"drop_path: must be in \[0, 1\), got 1.5"),
        ("opt: bogus\n", "opt: must be one of timm's optimizers"),
        ("lr: .nan\n", "lr: must be positive and finite, got nan"),
        ("min_lr: 10\n", r"--min-lr must be in \[0, --lr\], got 10"),  # cross-value checks apply to files too
        ("model_kwargs: {'depth:2': null}\n", r"--model-kwargs: \['depth:2'\] are not argument names"),
    ],
)
def test_config_values_are_checked_like_flags(tmp_path, data, text, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(ValueError, match=message):
        run(tmp_path, data, "-c", str(cfg))
    assert not (tmp_path / "run").exists()


def test_model_kwargs_syntaxes():
    """One --model-kwargs: timm's KEY=VALUE, a YAML mapping (runs' args.yaml hold it), or a config file's mapping
    or KEY=VALUE list; all give the same dict."""
    from matmamba_vision.training import parse_args

    want = {"embed_dim": 32, "depth": 2, "img_size": (28, 56), "ssd_backend": "torch"}
    assert (
        parse_args(["--model-kwargs", "embed_dim=32", "depth=2", "img_size=(28, 56)", "ssd_backend=torch"]).model_kwargs
        == want
    )
    yaml_form = parse_args(["--model-kwargs", "{embed_dim: 32, depth: 2, img_size: [28, 56], ssd_backend: torch}"])
    assert yaml_form.model_kwargs == dict(want, img_size=[28, 56])
    assert parse_args(["--model", "other"]).model_kwargs == {}


def test_recorded_args_yaml_is_a_config(tmp_path):
    """A run's args.yaml (model_kwargs as a mapping now, as a YAML string in older runs) reads back with -c."""
    from matmamba_vision.training import parse_args
    from matmamba_vision.training.outputs import write_args

    args = parse_args(["--model-kwargs", "embed_dim=32", "depth=2", "--lr", "0.01", "--scale", "0.5", "1"])
    write_args(tmp_path / "args.yaml", vars(args))
    again = parse_args(["-c", str(tmp_path / "args.yaml")])
    assert vars(again) == dict(vars(args), config=str(tmp_path / "args.yaml"))
    (tmp_path / "old.yaml").write_text("model_kwargs: '{embed_dim: 32, depth: 2}'\n")
    assert parse_args(["-c", str(tmp_path / "old.yaml")]).model_kwargs == {"embed_dim": 32, "depth": 2}
    (tmp_path / "list.yaml").write_text("model_kwargs: [embed_dim=32, depth=2]\n")
    assert parse_args(["-c", str(tmp_path / "list.yaml")]).model_kwargs == {"embed_dim": 32, "depth": 2}
