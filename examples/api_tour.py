"""A short tour of the elastic API on the small CPU model: create, choose widths, extract, count."""

import tempfile

import timm
import torch

import matmamba_vision as mv
from matmamba_vision.weights import save_model_dir

model = timm.create_model("matmamba_vision_tiny_patch4_28").eval()
images = torch.randn(4, 1, 28, 28)
print(f"model: {model.pretrained_cfg['architecture']}, trained levels {model.matryoshka_levels}")
for g in model.matryoshka_levels:
    with torch.no_grad(), model.granularity(g):
        logits = model(images)
    print(
        f"g={g:4d}: params {mv.count_params(model, g):>9,d}  MFLOPs {mv.count_flops(model, g) / 1e6:7.1f}"
        f"  logits {tuple(logits.shape)}"
    )
mix = [128, 128, 64, 64, 32, 16]
small = mv.extract_submodel(model, mix)
with torch.no_grad(), model.granularity(mix):
    same = torch.allclose(small(images), model(images), atol=1e-6)
print(f"mix'n'match {mix}: extracted {sum(p.numel() for p in small.parameters()):,d} params, same outputs: {same}")
with tempfile.TemporaryDirectory() as d:
    save_model_dir(small, d)
    reloaded = timm.create_model(f"local-dir:{d}", pretrained=True).eval()
    with torch.no_grad():
        print("reloaded from", d, "same outputs:", torch.allclose(reloaded(images), small(images)))
# several configurations on one batch, shared leading blocks computed once
outs = dict(model.forward_many(images, [None, 64, mix]))
print("forward_many:", {i: tuple(o.shape) for i, o in outs.items()})
# build on the meta device: shapes only (model.to_empty(device=...) then model.init_weights() materialises it)
meta = timm.create_model("matmamba_vision_35m_patch16_224", device="meta")
print(f"35M on meta: {sum(p.numel() for p in meta.parameters()) / 1e6:.1f}M params, no memory used")
