"""The Triton kernels compiled for a GPU: what the interpreter cannot show (skipped without CUDA).

bf16 (the interpreter's is unreliable), the official models' shapes, a 2048 px sequence, d_state 256, more
(batch x heads) programs than a CUDA grid's second and third axes hold, golden parity of the 35M-wide
official-layout model through ``ssd_backend="triton"`` on the GPU, and batch-1 inference captured in a CUDA graph.
``python -m pytest -q tests/test_triton_cuda.py`` on a machine with a GPU (about a minute).
"""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DEV = "cuda"
# Max |error| / max |reference|, the reference in float32 (conv, norm) or float64 (SSD) from the same rounded
# inputs. fp32: summation order (the SSD's products in IEEE fp32); fp16 and bf16: outputs rounded (2^-11,
# 2^-8) and the SSD's products in TF32.
TOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}
DTYPES = list(TOL)


def max_rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-12)).item()


@pytest.fixture(autouse=True)
def exact_fp32_references():
    """No TF32 in the float32 references (cuDNN's convolutions default to it)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# (name, batch, seqlen, heads, headdim, groups, d_state): 35M and 135M at 224 px (full width), a 128-wide
# model (headdim 4), d_state 256 with headdim 64 (one P tile, four N tiles), a 2048 px sequence, and
# 1,025 x 64 (batch x heads) programs (> 65,535).
SSD_SHAPES = [
    ("35m", 2, 197, 64, 16, 1, 128),
    ("135m", 2, 197, 64, 32, 1, 128),
    ("headdim4", 2, 50, 64, 4, 1, 16),
    ("dstate256", 1, 300, 4, 64, 2, 256),
    ("2048px", 1, 16385, 4, 16, 1, 128),
    ("grid", 1025, 16, 64, 4, 1, 16),
]


def make_ssd(b, seqlen, h, p, g, n, dtype):
    x = torch.randn(b, seqlen, h, p, device=DEV).to(dtype)
    dt = F.softplus(torch.randn(b, seqlen, h, device=DEV) - 1.0)
    A = -torch.empty(h, device=DEV).uniform_(1.0, 16.0)
    B, C = (torch.randn(b, seqlen, g, n, device=DEV).to(dtype) for _ in range(2))
    D, h0 = torch.randn(h, device=DEV), torch.randn(b, h, p, n, device=DEV)
    return x, dt, A, B, C, D, h0


def ssd_reference(x, dt, A, B, C, D, h0):
    from matmamba_vision.ops import ssd_recurrence_ref

    y, final = ssd_recurrence_ref(x, dt, A, B, C, initial_state=h0, return_final_state=True)
    return y + x.double() * D.double()[:, None], final


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SSD_SHAPES, ids=[s[0] for s in SSD_SHAPES])
def test_ssd_forward_and_grads_on_gpu(shape, dtype):
    from matmamba_vision.ops.triton.ssd import ssd

    torch.manual_seed(0)
    full = make_ssd(*shape[1:], dtype)
    inputs = [t.clone().requires_grad_() for t in full]
    y, final = ssd(*inputs[:5], D=inputs[5], initial_state=inputs[6], return_final_state=True)
    assert y.dtype == dtype and final.dtype == torch.float32
    gy, gf = torch.randn_like(y), torch.randn_like(final)
    got = torch.autograd.grad((y, final), inputs, (gy, gf))
    ref_in = [t.detach().double().requires_grad_() for t in full]
    y_ref, final_ref = ssd_reference(*ref_in)
    want = torch.autograd.grad((y_ref, final_ref), ref_in, (gy.double(), gf.double()))
    assert max_rel(y, y_ref) <= TOL[dtype]
    assert max_rel(final, final_ref) <= TOL[dtype]
    for name, a, w, t in zip(("x", "dt", "A", "B", "C", "D", "h0"), got, want, inputs):
        # dA sums per-token terms that cancel at the official decays (A up to -16): 10x looser
        tol = 10 * TOL[dtype] if name == "A" else TOL[dtype]
        assert a.dtype == t.dtype and torch.isfinite(a).all(), name
        assert max_rel(a, w) <= tol, (name, max_rel(a, w))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch, seqlen, channels", [(2, 197, 1280), (1, 16385, 1280), (70000, 5, 8)])
def test_conv_forward_and_grads_on_gpu(batch, seqlen, channels, dtype):
    """35M's conv channels (x, B, C) at 224 px and 2048 px, as a strided slice of in_proj's output; and a batch
    above a CUDA grid axis's 65,535."""
    from matmamba_vision.ops.causal_conv import causal_conv1d_ref
    from matmamba_vision.ops.triton.causal_conv import causal_conv1d

    torch.manual_seed(0)
    zxbc = torch.randn(batch, seqlen, channels + 40, device=DEV, dtype=dtype, requires_grad=True)
    weight = (0.5 * torch.randn(channels + 8, 4, device=DEV)).to(dtype).requires_grad_()
    bias = torch.randn(channels + 8, device=DEV, dtype=dtype, requires_grad=True)
    out = causal_conv1d(zxbc[..., 40:], weight[:channels], bias[:channels])
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (zxbc, weight, bias), grad)
    ref_in = [t.detach().float().requires_grad_() for t in (zxbc, weight, bias)]
    out_ref = causal_conv1d_ref(ref_in[0][..., 40:], ref_in[1][:channels], ref_in[2][:channels])
    want = torch.autograd.grad(out_ref, ref_in, grad.float())
    assert out.dtype == dtype and max_rel(out, out_ref) <= TOL[dtype]
    for name, a, w in zip(("x", "weight", "bias"), got, want):
        assert max_rel(a, w) <= TOL[dtype], (name, max_rel(a, w))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows, width", [(2 * 197, 1024), (2 * 197, 2048), (2 * 197, 128), (300_000, 256)])
def test_gated_norm_forward_and_grads_on_gpu(rows, width, dtype):
    """35M and 135M's full inner widths, D/8 of 35M, and more rows than the backward has programs."""
    from matmamba_vision.ops.gated_norm import gated_rms_norm_ref
    from matmamba_vision.ops.triton.gated_norm import gated_rms_norm

    torch.manual_seed(0)
    y = torch.randn(rows, width, device=DEV, dtype=dtype, requires_grad=True)
    zx = torch.randn(rows, 2 * width, device=DEV, dtype=dtype, requires_grad=True)  # z a strided slice
    weight = (1 + 0.1 * torch.randn(width, device=DEV)).to(dtype).requires_grad_()
    out = gated_rms_norm(y, zx[:, :width], weight)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (y, zx, weight), grad)
    ref_in = [t.detach().float().requires_grad_() for t in (y, zx, weight)]
    out_ref = gated_rms_norm_ref(ref_in[0], ref_in[1][:, :width], ref_in[2])
    want = torch.autograd.grad(out_ref, ref_in, grad.float())
    assert out.dtype == dtype and max_rel(out, out_ref) <= TOL[dtype]
    for name, a, w in zip(("y", "z", "weight"), got, want):
        assert max_rel(a, w) <= TOL[dtype], (name, max_rel(a, w))


@pytest.mark.parametrize("name", ["official_tiny", "official_width512"])
def test_golden_parity_on_gpu_through_triton_backend(name):
    """The official code's logits for official-layout checkpoints (tests/data; the 35M-wide one in shared/golden,
    skipped where absent), every level and mix'n'match case, through the Triton backend on the GPU in fp32;
    bf16 autocast within 3 % of them (CPU autocast with the torch backend: 0.5-1.1 %)."""
    from test_golden import RTOL, load_golden, model_kwargs, rel_err

    import matmamba_vision as mv

    tensors, meta, state = load_golden(name)
    model = mv.MatMambaVision(**model_kwargs(meta["config"]), ssd_backend="triton").to(DEV).eval()
    model.load_state_dict(mv.convert_official_state_dict(state))
    x = tensors["input"].to(DEV)
    for case, spec in meta["cases"].items():
        want = tensors[f"logits.{case}"]
        with torch.no_grad(), model.granularity(spec["dims_per_layer"]):
            assert rel_err(model(x).cpu(), want) <= RTOL, case
            with torch.autocast("cuda", dtype=torch.bfloat16):
                assert rel_err(model(x).float().cpu(), want) <= 3e-2, case


def test_batch1_inference_in_a_cuda_graph():
    """torch.compile(mode="reduce-overhead", fullgraph=True) through the Triton backend: replays of the captured
    graph give the eager logits."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("matmamba_vision_35m_patch16_224", ssd_backend="triton").to(DEV).eval()
    compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    with torch.no_grad():
        for _ in range(3):  # warm-up, record, replay
            x = torch.randn(1, 3, 224, 224, device=DEV)
            got = compiled(x).clone()
            torch.testing.assert_close(got, model(x), rtol=1e-3, atol=1e-3)
