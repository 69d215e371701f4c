"""The model through ssd_backend="triton" (interpreter): the official code's outputs at every level and
mix'n'match case (tests/data/official_tiny), and a Matryoshka training step's gradients against the torch
backend's."""

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from test_golden import RTOL, load_golden, model_kwargs, rel_err

import matmamba_vision as mv
from matmamba_vision.training import MatryoshkaStep


def test_golden_parity_through_triton_backend():
    tensors, meta, state = load_golden("official_tiny")
    model = mv.MatMambaVision(**model_kwargs(meta["config"]), ssd_backend="triton").eval()
    model.load_state_dict(mv.convert_official_state_dict(state))
    x = tensors["input"][:1]  # the first image (the interpreter is slow): logits at every level and case
    for case, spec in meta["cases"].items():
        with torch.no_grad(), model.granularity(spec["dims_per_layer"]):
            assert rel_err(model(x), tensors[f"logits.{case}"][:1]) <= RTOL, case
    # Mix'n'match with head counts that are not multiples of 8 (headdim 2: heads = granularity), against
    # the torch backend (which the golden file proves).
    ref = mv.MatMambaVision(**model_kwargs(meta["config"]), ssd_backend="torch").eval()
    ref.load_state_dict(model.state_dict())
    with torch.no_grad(), model.granularity([12, 6]), ref.granularity([12, 6]):
        assert rel_err(model(x), ref(x)) <= RTOL


def test_matryoshka_step_gradients_match_torch_backend():
    def tiny(backend):
        torch.manual_seed(0)
        return timm.create_model(
            "matmamba_vision_tiny_patch4_28",
            img_size=16,
            embed_dim=32,
            depth=2,
            d_state=16,
            headdim=4,
            chunk_size=16,
            ssd_backend=backend,
        )

    x, y = torch.randn(1, 1, 16, 16), torch.randint(0, 10, (1,))
    grads = {}
    for backend in ("torch", "triton"):
        model = tiny(backend)
        loss = 0.0
        for g in (32, 6):  # a sum-mode Matryoshka step; 16 and 3 heads
            with model.granularity(g):
                loss = loss + F.cross_entropy(model(x), y)
        loss.backward()
        grads[backend] = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    assert grads["torch"].keys() == grads["triton"].keys() and grads["torch"]
    for k, g in grads["torch"].items():
        assert rel_err(grads["triton"][k], g) <= 1e-4, k


def test_model_through_triton_backend_compiles_to_one_graph():
    torch.manual_seed(0)
    model = timm.create_model(
        "matmamba_vision_tiny_patch4_28",
        img_size=16,
        embed_dim=32,
        depth=1,
        d_state=16,
        headdim=4,
        chunk_size=16,
        ssd_backend="triton",
    )
    x = torch.randn(1, 1, 16, 16)
    out = model(x)
    out.sum().backward()
    eager = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")  # fullgraph: a graph break raises
    out_c = compiled(x)
    out_c.sum().backward()
    torch.testing.assert_close(out_c, out)
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad, eager[k], rtol=1e-5, atol=1e-6, msg=k)


def test_compiled_matryoshka_training_step_matches_eager():
    """A sum-mode Matryoshka step compiled: the trainer's forward at the four granularities with their losses
    (``MatryoshkaStep._losses``), the loss and the backward in one graph (``fullgraph``; dynamo traces the
    backward with ``trace_autograd_ops``), then the AdamW step. Gradients within 1e-5 of eager's, and the updated
    parameters. The AdamW step is compiled on its own: torch's ``Optimizer.step`` breaks its graph on purpose,
    and dynamo takes no optimizer step after a traced backward ("pending mutation on parameter"), any model."""

    def tiny_step():
        torch.manual_seed(0)
        model = timm.create_model(
            "matmamba_vision_tiny_patch4_28",
            img_size=8,
            embed_dim=32,
            depth=1,
            d_state=16,
            headdim=8,
            chunk_size=16,
            ssd_backend="triton",
        )
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
        return MatryoshkaStep(model, model, optimizer, nn.CrossEntropyLoss(), model.matryoshka_levels)

    def forward_backward(step, x, y):
        loss = torch.stack(step._losses(x, y, step.granularities)).mean()  # sum mode's loss
        loss.backward()
        return loss.detach()

    x, y = torch.randn(1, 1, 8, 8), torch.randint(0, 10, (1,))
    eager, compiled = tiny_step(), tiny_step()
    assert len(eager.granularities) == 4
    loss = forward_backward(eager, x, y)
    eager.optimizer.step()
    torch._dynamo.reset()
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        loss_c = torch.compile(forward_backward, fullgraph=True, backend="aot_eager")(compiled, x, y)
    grads = {k: p.grad.clone() for k, p in compiled.model.named_parameters()}
    torch.compile(compiled.optimizer.step, backend="aot_eager")()
    torch.testing.assert_close(loss_c, loss)
    for (k, p), (_, p_c) in zip(eager.model.named_parameters(), compiled.model.named_parameters()):
        torch.testing.assert_close(grads[k], p.grad, rtol=1e-5, atol=1e-5, msg=k)
        torch.testing.assert_close(p_c, p, rtol=1e-5, atol=1e-6, msg=k)
