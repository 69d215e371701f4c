"""Every Triton kernel launch that the models make, recorded without a GPU.

The models run on fake CUDA tensors (``torch._subclasses.FakeTensorMode``: meta storage that reports a CUDA
device, so the mixer takes its CUDA route, CUDA autocast applies and the wrappers' device checks pass). Every
kernel of :mod:`matmamba_vision.ops.triton` is launched through ``_launch.launch(kernel, grid, *args,
**kwargs)``; :func:`recording` replaces that function with one that records the call, and runs each custom op's
own implementation (the wrapper that computes grids, strides, tiles and launches) beside its fake one, so what
is recorded is what the wrappers compute. The backward runs through :func:`backward`, which walks the autograd
graph in Python (the autograd engine wants a real device for CUDA tensors).

    from triton_launches import Scenario, record
    launches = record(Scenario("35m", 1024, 1, "bf16", width=2, train=True))
"""

from __future__ import annotations

import importlib
import pkgutil
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

import timm
import torch
import torch.nn.functional as F
from torch._library.custom_ops import CustomOpDef
from torch._subclasses.fake_tensor import FakeTensorMode

import matmamba_vision  # noqa: F401  (registers the models)
import matmamba_vision.ops.triton as triton_ops

__all__ = [
    "ARCHS",
    "PRECISIONS",
    "TensorArg",
    "Launch",
    "Scenario",
    "scenarios",
    "record",
    "recording",
    "backward",
    "kernel_modules",
]

ARCHS = {"35m": "matmamba_vision_35m_patch16_224", "135m": "matmamba_vision_135m_patch16_224"}
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # autocast dtype
SIZES = ((224, 64), (1024, 1), (2048, 1))  # (px, batch): issue 25's training and high-resolution shapes
WIDTHS = (1, 2, 4, 8)  # the Matryoshka levels D / m
_BASE = 1 << 20  # a stand-in allocation address (the CUDA caching allocator's blocks are 512-byte aligned)


@dataclass(frozen=True)
class TensorArg:
    """What a kernel sees of a tensor argument: dtype, shape, strides and its byte offset in its allocation;
    ``data_ptr()`` stands in an address with that offset for Triton's 16-byte alignment specialisation."""

    dtype: torch.dtype
    shape: Tuple[int, ...]
    stride: Tuple[int, ...]
    offset_bytes: int

    @classmethod
    def of(cls, t: torch.Tensor) -> "TensorArg":
        return cls(t.dtype, tuple(t.shape), tuple(t.stride()), t.storage_offset() * t.element_size())

    def data_ptr(self) -> int:
        return _BASE + self.offset_bytes

    def element_size(self) -> int:
        return torch.empty((), dtype=self.dtype, device="meta").element_size()

    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True)
class Launch:
    """One launch: the kernel (module and name), its grid, arguments (tensors as :class:`TensorArg`) and
    keyword arguments (constexprs, ``num_warps``, ``num_stages``) as sorted items."""

    module: str
    name: str
    grid: Tuple[int, ...]
    args: tuple
    kwargs: Tuple[Tuple[str, object], ...]

    def kernel(self):
        """The kernel object (a ``triton.jit`` function) in its module."""
        return getattr(importlib.import_module(self.module), self.name)


@dataclass(frozen=True)
class Scenario:
    """One way the models run: model ('35m' | '135m'), image size, batch, precision ('fp32' | 'bf16' | 'fp16',
    the last two as CUDA autocast), width divisor (granularity D / width), training step (forward, loss,
    backward) or inference, and ``pieces``: one block's mixer over the sequence in pieces
    (``forward_piece`` carrying the SSD state: the initial-state path) instead of the whole model."""

    model: str
    px: int
    batch: int
    precision: str
    width: int = 1
    train: bool = False
    pieces: bool = False

    def __post_init__(self):
        if self.model not in ARCHS:
            raise ValueError(f"model must be one of {sorted(ARCHS)}, got {self.model!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")

    def label(self) -> str:
        return (
            f"{self.model} {self.px}px b{self.batch} {self.precision} D/{self.width} "
            f"{'train' if self.train else 'infer'}{' pieces' if self.pieces else ''}"
        )


def scenarios(models=tuple(ARCHS), sizes=SIZES, precisions=tuple(PRECISIONS), widths=WIDTHS) -> List[Scenario]:
    """Issue 25's grid: each model, size, precision and Matryoshka width, inference and training, and the
    initial-state path (pieces) at full width."""
    out = []
    for m in models:
        for px, batch in sizes:
            for prec in precisions:
                for w in widths:
                    for train in (False, True):
                        out.append(Scenario(m, px, batch, prec, w, train))
                out.append(Scenario(m, px, batch, prec, 1, True, pieces=True))
    return out


def kernel_modules() -> List:
    """The modules of :mod:`matmamba_vision.ops.triton` that launch kernels (they import ``_launch.launch``)."""
    from matmamba_vision.ops.triton import _launch

    mods = []
    for info in pkgutil.iter_modules(triton_ops.__path__):
        mod = importlib.import_module(f"{triton_ops.__name__}.{info.name}")
        if getattr(mod, "launch", None) is _launch.launch:
            mods.append(mod)
    return mods


def _eager(op: CustomOpDef):
    """``op`` that first runs its own implementation (which launches, recorded) on the same fake tensors, then
    the op itself (its fake implementation, under autograd)."""

    def run(*args, **kwargs):
        with torch.no_grad():
            op._init_fn(*args, **kwargs)
        return op(*args, **kwargs)

    return run


@contextmanager
def recording() -> Iterator[List[Launch]]:
    """Inside: every kernel launch of :mod:`matmamba_vision.ops.triton` is recorded (not run) into the list it
    yields, and the custom ops run their wrappers on fake tensors (see the module's docstring)."""
    launches: List[Launch] = []

    def record_launch(kernel, grid, *args, **kwargs):
        fn = getattr(kernel, "fn", kernel)  # a JITFunction, or an InterpretedFunction under TRITON_INTERPRET
        conv = tuple(TensorArg.of(a) if isinstance(a, torch.Tensor) else a for a in args)
        kw = tuple(sorted((k, TensorArg.of(v) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()))
        launches.append(Launch(fn.__module__, fn.__name__, tuple(int(g) for g in grid), conv, kw))

    saved = []
    try:
        for mod in kernel_modules():
            saved.append((mod, "launch", mod.launch))
            mod.launch = record_launch
            for name, obj in list(vars(mod).items()):
                if isinstance(obj, CustomOpDef):
                    saved.append((mod, name, obj))
                    setattr(mod, name, _eager(obj))
        yield launches
    finally:
        for mod, name, obj in reversed(saved):
            setattr(mod, name, obj)


@contextmanager
def _cuda_autocast(dtype: Optional[torch.dtype]) -> Iterator[None]:
    """CUDA autocast to ``dtype`` (None: off), entered without the CUDA-availability check of
    ``torch.autocast`` (the tensors are fake)."""
    if dtype is None:
        yield
        return
    prev_on, prev_dtype = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    torch.set_autocast_enabled("cuda", True)
    torch.set_autocast_dtype("cuda", dtype)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled("cuda", prev_on)
        torch.set_autocast_dtype("cuda", prev_dtype)


def backward(loss: torch.Tensor) -> int:
    """``loss.backward()`` without the autograd engine: each node of the graph is called in Python once all
    its consumers have sent their gradients, which are summed, reduced to the input's shape and cast to its
    dtype as the engine does (``validate_outputs``); leaves' ``.grad`` are left alone. Returns the number
    of nodes run."""
    root = loss.grad_fn
    deps: Counter = Counter()
    seen, stack = {root}, [root]
    while stack:
        node = stack.pop()
        for nxt, _ in node.next_functions:
            if nxt is None:
                continue
            deps[nxt] += 1
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    grads: Dict = {root: {0: torch.ones_like(loss)}}
    ready, ran = [root], 0
    while ready:
        node = ready.pop()
        buf = grads.pop(node, {})
        if node.name().endswith("AccumulateGrad"):
            continue
        ins = [buf.get(i) for i in range(len(node._input_metadata))]
        outs = node(*ins) if callable(node) else node.apply(*ins)  # C++ node, or a Python autograd.Function's
        ran += 1
        outs = outs if isinstance(outs, tuple) else (outs,)
        for (nxt, nr), g in zip(node.next_functions, outs):
            if nxt is None:
                continue
            if g is not None:
                meta = nxt._input_metadata[nr]
                if tuple(g.shape) != tuple(meta.shape):
                    g = g.sum_to_size(tuple(meta.shape))
                g = g.to(meta.dtype)
                slot = grads.setdefault(nxt, {})
                slot[nr] = g if slot.get(nr) is None else slot[nr] + g
            deps[nxt] -= 1
            if deps[nxt] == 0:
                ready.append(nxt)
    return ran


def _run(s: Scenario, model: torch.nn.Module) -> None:
    model = model.to_empty(device="cuda").train(s.train)
    model.set_granularity(model.embed_dim // s.width)
    amp = PRECISIONS[s.precision]
    with torch.set_grad_enabled(s.train):
        if s.pieces:
            mixer = model.layers[0].mixer
            seqlen = model.patch_embed.num_patches + 1
            u = torch.empty(s.batch, seqlen, model.embed_dim, device="cuda", requires_grad=s.train)
            outs, state, start = [], None, 0
            with _cuda_autocast(amp):
                bounds = mixer.piece_bounds(seqlen)
                if len(bounds) == 1:  # a short sequence: two pieces, so the second starts from a state
                    bounds = [seqlen // 2, seqlen]
                for end in bounds:
                    y, state = mixer.forward_piece(u[:, start:end], state)
                    outs.append(y)
                    start = end
                loss = torch.cat(outs, 1).float().square().mean()
        else:
            x = torch.empty(s.batch, 3, s.px, s.px, device="cuda")
            with _cuda_autocast(amp):
                logits = model(x)
                loss = F.cross_entropy(logits, torch.zeros(s.batch, dtype=torch.long, device="cuda"))
    if s.train:
        backward(loss)


def record(s: Scenario, depth: Optional[int] = None) -> List[Launch]:
    """The launches of one scenario, in order (nothing runs; no GPU needed). ``depth``: blocks of the model
    (None: the model's own); its blocks' mixers are alike and launch alike (the AOT check records one)."""
    kw = {} if depth is None else dict(depth=depth)
    model = timm.create_model(ARCHS[s.model], img_size=s.px, ssd_backend="triton", device="meta", **kw)
    with FakeTensorMode(allow_non_fake_inputs=True), recording() as launches:
        _run(s, model)
    return launches
