"""model_best/ (timm's local-dir folder) stays in step with model_best.safetensors when a run is resumed."""

import timm
import torch

from matmamba_vision.training.checkpoint_files import BEST_DIR
from matmamba_vision.training.checkpointing import reconcile_best
from matmamba_vision.weights import load_weights, save_model_dir, save_weights

SMALL = dict(embed_dim=32, depth=1, d_state=16)


def _run_folder(path, seed):
    torch.manual_seed(seed)
    model = timm.create_model("matmamba_vision_tiny_patch4_28", **SMALL)
    save_weights(model.state_dict(), path / "model_best.safetensors", metadata=dict(epoch=0))
    save_model_dir(model, path / BEST_DIR)
    return model


def test_resumed_into_another_folder_brings_the_folder(tmp_path):
    source, dest = tmp_path / "a", tmp_path / "b"
    model = _run_folder(source, 0)
    dest.mkdir()
    assert reconcile_best(source, dest, {"top1": 50.0, "epoch": 0})["epoch"] == 0
    loaded = timm.create_model(f"local-dir:{dest / BEST_DIR}", pretrained=True)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_no_best_left_removes_the_folder(tmp_path):
    run = tmp_path / "run"
    _run_folder(run, 0)
    # the best (epoch 3) is gone with its checkpoint; the model_best here is a later epoch's, moved aside
    save_weights(load_weights(run / "model_best.safetensors"), run / "model_best.safetensors", metadata=dict(epoch=5))
    assert reconcile_best(run, run, {"top1": 50.0, "epoch": 3}) == {"top1": -1.0, "epoch": -1}
    assert not (run / "model_best.safetensors").exists() and not (run / BEST_DIR).exists()
    assert (run / "model_best-epoch5.abandoned.safetensors").is_file()
