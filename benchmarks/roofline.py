"""Roofline forecast of one inference forward on an H100 SXM and an H200, from the launches themselves (CPU only).

The models run on fake CUDA tensors (:mod:`triton_launches`: bf16 autocast, the Triton backend for MatMamba),
and every piece of work is costed from what is recorded:

- each Triton kernel launch, from its recorded arguments (shapes, dtypes, strides, block sizes, grid) by the
  kernel's cost model below: FLOPs of its ``tl.dot`` products (in the precision it asks for: ``tf32`` on
  tensor cores, ``ieee`` on the FP32 units), its other arithmetic (FP32 units), and the bytes it must move
  (each input read and each output written once: DRAM traffic, with re-reads assumed to hit L2);
- each other op (torch's: projections, LayerNorm, attention, elementwise), FLOPs by torch's own formulas
  (``torch.utils.flop_counter``'s registry, as ``FlopCounterMode`` counts), bytes as the op's inputs read and
  outputs written once (broadcast dimensions counted once; views and allocations move nothing); attention as
  one fused (flash) op: q, k, v read and the output written.

time = max(dot FLOPs / tensor-core peak + other FLOPs / FP32 peak, bytes / bandwidth), summed over launches
and ops: a lower bound, with no launch latency, tail effect or cache miss. Peaks (NVIDIA's datasheets, dense):
bf16/fp16 989 TFLOP/s, TF32 494.7, FP32 66.9; HBM 3.35 TB/s (H100 SXM), 4.8 TB/s (H200). An fp32 product in
torch runs on the FP32 units (torch's default: no TF32 for matmuls).

    python benchmarks/roofline.py [--sizes 224 512 1024 1536 2048] [--batch 1] [--kernels]   # Markdown tables
"""

from __future__ import annotations

import argparse
import functools
import inspect
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import timm
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry, sdpa_flop_count

sys.path.insert(0, str(Path(__file__).resolve().parent))

from triton_launches import PRECISIONS, Launch, TensorArg, _cuda_autocast, recording  # noqa: E402

import matmamba_vision  # noqa: E402, F401  (registers the models)

__all__ = ["DEVICES", "Cost", "Forecast", "kernel_cost", "forecast", "device_for"]

DEVICES = {  # FLOP/s per unit, bytes/s
    "H100 SXM": dict(bf16=989e12, fp16=989e12, tf32=494.7e12, fp32=66.9e12, bw=3.35e12),
    "H200": dict(bf16=989e12, fp16=989e12, tf32=494.7e12, fp32=66.9e12, bw=4.8e12),
}
MODELS = {  # Fig. 4's models: timm name -> create_model kwargs
    "35m": ("matmamba_vision_35m_patch16_224", dict(ssd_backend="triton")),
    "135m": ("matmamba_vision_135m_patch16_224", dict(ssd_backend="triton")),
    "vit_s16": ("vit_small_patch16_224", {}),
    "vit_b16": ("vit_base_patch16_224", {}),
}


@dataclass
class Cost:
    """Work of one launch or op: FLOPs per unit ('bf16' | 'fp16' | 'tf32' | 'fp32'), bytes moved."""

    flops: Dict[str, float] = field(default_factory=dict)
    bytes: float = 0.0

    def seconds(self, device: str) -> float:
        peak = DEVICES[device]
        compute = sum(f / peak[unit] for unit, f in self.flops.items())
        return max(compute, self.bytes / peak["bw"])

    def total_flops(self) -> float:
        return sum(self.flops.values())


def _es(t: TensorArg) -> int:
    return t.dtype.itemsize


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _dot_unit(prec: str) -> str:
    return {"tf32": "tf32", "ieee": "fp32"}.get(prec, prec)


def _conv_fwd(a, grid) -> Cost:
    n = grid[0] // _cdiv(a["L"], a["BLOCK_L"]) * a["L"] * a["CH"]
    k = a["K"]
    byt = n * (_es(a["X"]) + _es(a["Y"])) + a["CH"] * (k * _es(a["W"]) + _es(a["Bias"]))
    return Cost({"fp32": n * (2 * k + 1 + (4 if a["SILU"] else 0))}, byt)


def _chunk_state(a, grid) -> Cost:
    bh, nc, npb = grid
    b, h, q = bh // a["H"], a["H"], a["Q"]
    n_pad = _cdiv(a["N"], a["BLOCK_N"]) * a["BLOCK_N"]
    byt = b * a["L"] * (h * a["P"] * _es(a["X"]) + h * _es(a["DT"]) + a["G"] * a["N"] * _es(a["B"]))
    byt += h * _es(a["A"]) + bh * nc * (q + a["P"] * a["N"]) * 4  # + ACUM, ST (float32)
    dot = 2.0 * bh * nc * npb * a["BLOCK_P"] * q * n_pad
    return Cost({_dot_unit(a["PREC"]): dot, "fp32": bh * nc * (5 * q + npb * a["BLOCK_P"] * q)}, byt)


def _state_pass(a, grid) -> Cost:
    bh, nblk = grid
    steps, c, blk = _cdiv(a["NC"], a["CHUNKS"]), a["CHUNKS"], a["BLOCK"]
    byt = bh * (2 * a["NC"] * a["PN"] + a["NC"] + a["PN"] * (2 if a["HAS_H0"] else 1)) * 4
    work = bh * nblk * steps
    return Cost({"fp32": work * (2 * c * c * blk + 3 * c * c + 4 * c * blk)}, byt)


def _chunk_cb(a, grid) -> Cost:
    bg, nc = grid
    b, q = bg // a["G"], a["Q"]
    n_pad = _cdiv(a["N"], a["BLOCK_N"]) * a["BLOCK_N"]
    byt = b * a["L"] * a["G"] * a["N"] * (_es(a["B"]) + _es(a["C"])) + bg * a["NC"] * q * q * 4
    return Cost({_dot_unit(a["PREC"]): 2.0 * bg * nc * q * q * n_pad}, byt)


def _chunk_scan(a, grid) -> Cost:
    bh, nc, npb = grid
    b, h, g, q, bp = bh // a["H"], a["H"], a["G"], a["Q"], a["BLOCK_P"]
    n_pad = _cdiv(a["N"], a["BLOCK_N"]) * a["BLOCK_N"]
    tokens = b * a["L"]
    byt = tokens * h * a["P"] * (_es(a["X"]) + _es(a["Y"])) + tokens * (h * _es(a["DT"]) + g * a["N"] * _es(a["C"]))
    byt += b * g * a["NC"] * q * q * 4 + bh * a["NC"] * (q + a["P"] * a["N"]) * 4  # CB, ACUM, ST
    byt += h * _es(a["D"]) if a["HAS_D"] else 0
    dot = 2.0 * bh * nc * npb * (q * n_pad * bp + q * q * bp)
    return Cost({_dot_unit(a["PREC"]): dot, "fp32": bh * nc * npb * (6 * q * q + 3 * q * bp)}, byt)


def _norm_fwd(a, grid) -> Cost:
    m, d = a["M"], a["D"]
    byt = m * d * (_es(a["Y"]) + _es(a["Z"]) + _es(a["O"])) + d * _es(a["W"]) + m * 4
    return Cost({"fp32": 10.0 * m * d}, byt)


# kernel name -> cost model of one launch (arguments by name, grid); the forward's kernels, which Fig. 4 runs
COST_MODELS: Dict[str, Callable] = {
    "_conv_fwd_kernel": _conv_fwd,
    "_chunk_state_kernel": _chunk_state,
    "_state_pass_kernel": _state_pass,
    "_chunk_cb_kernel": _chunk_cb,
    "_chunk_scan_kernel": _chunk_scan,
    "_norm_fwd_kernel": _norm_fwd,
}


def kernel_cost(launch: Launch) -> Cost:
    """The cost of one recorded Triton launch (ValueError for a kernel without a cost model)."""
    if launch.name not in COST_MODELS:
        raise ValueError(f"no cost model for {launch.name}; known: {sorted(COST_MODELS)}")
    kernel = launch.kernel()
    names = list(inspect.signature(getattr(kernel, "fn", kernel)).parameters)
    bound = dict(zip(names, launch.args), **dict(launch.kwargs))
    grid = tuple(launch.grid) + (1,) * (3 - len(launch.grid))
    return COST_MODELS[launch.name](bound, grid[: len(launch.grid)])


def _unique_bytes(t: torch.Tensor) -> int:
    """Bytes of the elements ``t`` holds (a broadcast, stride-0 dimension once)."""
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        n *= size if stride != 0 else 1
    return n * t.element_size()


# ops that move no data: allocations, and views whose schema does not say so
_NO_DATA = {"empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "_unsafe_view", "alias"}


def _unit(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


class _TorchOps(TorchDispatchMode):
    """Costs every op that reaches the dispatcher (not the project's custom ops, costed per kernel launch)."""

    def __init__(self):
        super().__init__()
        self.costs: List[Tuple[str, Cost]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func._schema.name
        if name.startswith("matmamba_vision::") or func.is_view or name.split("::")[-1] in _NO_DATA:
            return out
        ins = [t for t in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        outs = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        if not outs:
            return out
        cost = Cost(bytes=float(sum(_unique_bytes(t) for t in ins + outs)))
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            cost.flops[_unit(ins[0].dtype)] = float(formula(*args, **kwargs, out_val=out))
        self.costs.append((name.split("::")[-1], cost))
        return out


class _FusedAttention(TorchFunctionMode):
    """``F.scaled_dot_product_attention`` as one fused op (as flash attention runs on a GPU): FLOPs by torch's
    formula, q, k, v read and the output written once. The fake tensors cannot choose a GPU backend, and its
    math fallback would count the score matrix."""

    def __init__(self, ops: _TorchOps):
        super().__init__()
        self.ops = ops

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q, k, v = args[:3]
            out = q.new_empty((*q.shape[:-1], v.shape[-1]))
            flops = float(sdpa_flop_count(q.shape, k.shape, v.shape))
            byt = float(sum(_unique_bytes(t) for t in (q, k, v, out)))
            self.ops.costs.append(("scaled_dot_product_attention", Cost({_unit(q.dtype): flops}, byt)))
            return out
        return func(*args, **kwargs)


@dataclass
class Item:
    """One kind of work in a forward: calls, FLOPs, bytes and forecast seconds per device (totals)."""

    calls: float = 0.0
    flops: float = 0.0
    bytes: float = 0.0
    seconds: Dict[str, float] = field(default_factory=lambda: {d: 0.0 for d in DEVICES})

    def add(self, cost: Cost, n: float = 1.0) -> None:
        self.calls += n
        self.flops += n * cost.total_flops()
        self.bytes += n * cost.bytes
        for d in DEVICES:
            self.seconds[d] += n * cost.seconds(d)

    def scaled_sum(self, other: "Item", a: float, b: float) -> "Item":
        """``a * self + b * other``."""
        out = Item(a * self.calls + b * other.calls, a * self.flops + b * other.flops, a * self.bytes + b * other.bytes)
        out.seconds = {d: a * self.seconds[d] + b * other.seconds[d] for d in DEVICES}
        return out


@dataclass
class Forecast:
    """A forward's forecast: per item ('triton:<kernel>' or 'torch:<op>') and in total, per device."""

    model: str
    px: int
    batch: int
    width: int
    items: Dict[str, Item]

    def seconds(self, device: str) -> float:
        return sum(i.seconds[device] for i in self.items.values())

    def img_s(self, device: str) -> float:
        return self.batch / self.seconds(device)

    def flops(self) -> float:
        return sum(i.flops for i in self.items.values())

    def bytes(self) -> float:
        return sum(i.bytes for i in self.items.values())


def _measure(model: str, px: int, batch: int, width: int, precision: str, **kwargs) -> Dict[str, Item]:
    """Items of one forward of ``model`` built with ``kwargs`` (e.g. ``depth``), on fake CUDA tensors."""
    name, base = MODELS[model]
    net = timm.create_model(name, img_size=px, device="meta", **dict(base, **kwargs)).eval()
    items: Dict[str, Item] = defaultdict(Item)
    ops = _TorchOps()
    with FakeTensorMode(allow_non_fake_inputs=True), recording() as launches, torch.no_grad():
        net = net.to_empty(device="cuda")
        if width != 1:
            net.set_granularity(net.embed_dim // width)
        x = torch.empty(batch, 3, px, px, device="cuda")
        with _cuda_autocast(PRECISIONS[precision]), _FusedAttention(ops), ops:
            net(x)
    for launch in launches:
        items[f"triton:{launch.name}"].add(kernel_cost(launch))
    for op, cost in ops.costs:
        items[f"torch:{op}"].add(cost)
    return dict(items)


@functools.lru_cache(maxsize=None)
def _forecast(model: str, px: int, batch: int, width: int, precision: str, kw: Tuple) -> Forecast:
    kwargs = dict(kw)
    name, base = MODELS[model]
    depth = kwargs.pop("depth", None)
    if depth is None:
        net = timm.create_model(name, device="meta", **base)
        depth = len(net.blocks if hasattr(net, "blocks") else net.layers)
    # the blocks are alike: every block after the first adds what the second does
    one = _measure(model, px, batch, width, precision, depth=1, **kwargs)
    two = _measure(model, px, batch, width, precision, depth=2, **kwargs)
    items = {}
    for key in set(one) | set(two):
        a, b = one.get(key, Item()), two.get(key, Item())
        items[key] = a.scaled_sum(b, 2 - depth, depth - 1)  # a + (depth - 1) * (b - a)
    return Forecast(model, px, batch, width, items)


def forecast(model: str, px: int, batch: int = 1, width: int = 1, precision: str = "bf16", **kwargs) -> Forecast:
    """The roofline forecast of one inference forward of ``model`` ('35m', '135m', 'vit_s16', 'vit_b16') at
    ``px`` pixels, batch ``batch``, granularity D / ``width`` (MatMamba), under ``precision`` autocast;
    ``kwargs`` go to ``timm.create_model`` (e.g. ``depth``)."""
    if model not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {model!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    return _forecast(model, px, batch, width, precision, tuple(sorted(kwargs.items())))


def device_for(name: str) -> str:
    """The forecast device for a CUDA device name (H200 for an H200, else the H100 SXM)."""
    return "H200" if "H200" in name else "H100 SXM"


def _kernel_table(fcs: List[Forecast]) -> List[str]:
    rows = [
        "| model | px | item | calls | GFLOP | MB | FLOP/B | H100 us | H200 us | H100 share |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for fc in fcs:
        total = fc.seconds("H100 SXM")
        for key, it in sorted(fc.items.items(), key=lambda kv: -kv[1].seconds["H100 SXM"]):
            if not key.startswith("triton:") and it.seconds["H100 SXM"] < 0.02 * total:
                continue  # small torch ops: in the totals only
            rows.append(
                f"| {fc.model} | {fc.px} | `{key}` | {it.calls:.0f} | {it.flops / 1e9:.2f} | {it.bytes / 1e6:.1f} | "
                f"{it.flops / max(it.bytes, 1):.1f} | {it.seconds['H100 SXM'] * 1e6:.1f} | "
                f"{it.seconds['H200'] * 1e6:.1f} | {100 * it.seconds['H100 SXM'] / total:.0f}% |"
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 512, 1024, 1536, 2048])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--kernels", action="store_true", help="also the per-kernel table of the 35M model")
    args = ap.parse_args()
    print(
        "| model | px | batch | GFLOP | MB moved | H100 SXM ms | H100 img/s | H200 ms | H200 img/s |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    fcs: Dict[Tuple[str, int], Forecast] = {}
    for px in args.sizes:
        for model in MODELS:
            fc = fcs[model, px] = forecast(model, px, args.batch)
            print(
                f"| {model} | {px} | {args.batch} | {fc.flops() / 1e9:.1f} | {fc.bytes() / 1e6:.0f} | "
                f"{fc.seconds('H100 SXM') * 1e3:.3f} | {fc.img_s('H100 SXM'):.0f} | {fc.seconds('H200') * 1e3:.3f} | "
                f"{fc.img_s('H200'):.0f} |",
                flush=True,
            )
    print("\n| forecast ratio 35M / ViT-S/16 img/s, batch %d | H100 SXM | H200 |\n|---|---:|---:|" % args.batch)
    for px in args.sizes:
        a, b = fcs["35m", px], fcs["vit_s16", px]
        print(
            f"| {px} px | {a.img_s('H100 SXM') / b.img_s('H100 SXM'):.2f} | {a.img_s('H200') / b.img_s('H200'):.2f} |"
        )
    if args.kernels:
        print()
        print("\n".join(_kernel_table([fcs["35m", px] for px in args.sizes])))


if __name__ == "__main__":
    main()
