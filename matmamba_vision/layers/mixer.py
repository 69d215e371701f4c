"""The MatMamba2 mixer: a Mamba2 mixer whose inner width is nested.

At granularity ``g`` a layer uses ``expand * g`` inner channels (``expand * g / headdim`` heads). Weights are
stored so that every granularity's weights are contiguous leading rows, so a nested forward slices views
and copies no weight:

- ``xbc_proj.weight``: rows ``[B (groups*d_state), C (groups*d_state), x (d_inner)]``;
- ``zdt_proj.weight``: per head, ``headdim`` rows of ``z`` then that head's ``dt`` row;
- ``conv.weight`` (channels, d_conv) and ``conv.bias``: channels ``[B, C, x]``;
- ``dt_bias``, ``A_log``, ``D`` per head; ``norm.weight`` and ``out_proj`` columns per inner channel.

:func:`matmamba_vision.models.convert_official_state_dict` maps the official layout onto this one.
"""

from __future__ import annotations

import math
import numbers
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.dispatch import check_ssd_backend, select_ssd_backend
from ..ops.gated_norm import gated_rms_norm_linear, rms_norm_linear
from .gated_norm import GatedRMSNorm

__all__ = ["MatMamba2Mixer", "use_backend"]


def is_integer(value: object) -> bool:
    """An integer of any integer type (numpy's too), not a bool: what size and granularity arguments take."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


class CausalConv(nn.Module):
    """Parameters of the depthwise causal conv (channels, kernel) and (channels,)."""

    def __init__(self, channels: int, kernel_size: int, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(channels, kernel_size, **dd))
        self.bias = nn.Parameter(torch.empty(channels, **dd))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.weight.shape[1])  # nn.Conv1d's default init for a depthwise conv
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)


class MatMamba2Mixer(nn.Module):
    """Mamba2 mixer with nested (Matryoshka) inner width.

    Args:
        dim: residual width D.
        max_granularity: the largest granularity g this layer holds (D for a full model; less for an
            extracted submodel). Inner width is ``expand * max_granularity``.
        d_state, expand, headdim, d_conv, chunk_size, ngroups: Mamba2's SSM settings.
        proj_drop: dropout on the input projection's output and on the mixer's output.
        ssd_backend: which kernels run (:mod:`matmamba_vision.ops.dispatch`): 'auto', 'torch', 'reference',
            'triton' or 'mamba_ssm'; :meth:`set_backend` changes it, :func:`use_backend` for a block of code.
        device, dtype: where and in which dtype the parameters are created (``device="meta"``: shapes only,
            materialised by ``to_empty`` and :meth:`reset_parameters`).
    """

    PIECE_LEN = 512  # tokens per piece for CPU inference over long sequences (a multiple of the SSD chunk)

    def __init__(
        self,
        dim: int,
        max_granularity: Optional[int] = None,
        d_state: int = 128,
        expand: int = 2,
        headdim: Optional[int] = None,
        d_conv: int = 4,
        chunk_size: int = 256,
        ngroups: int = 1,
        proj_drop: float = 0.0,
        norm_eps: float = 1e-5,
        ssd_backend: str = "auto",
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        A_init_range=(1.0, 16.0),
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        for name, value in (
            ("dim", dim),
            ("d_state", d_state),
            ("expand", expand),
            ("d_conv", d_conv),
            ("chunk_size", chunk_size),
            ("ngroups", ngroups),
        ):
            if not is_integer(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.dim = dim
        self.max_granularity = max_granularity or dim
        self.expand = expand
        self.headdim = headdim or dim // 32
        self.d_state = d_state
        self.ngroups = ngroups
        self.chunk_size = chunk_size
        self.ssd_backend = check_ssd_backend(ssd_backend)
        self.d_inner = expand * self.max_granularity
        if self.headdim <= 0 or self.d_inner % self.headdim:
            raise ValueError(f"headdim ({self.headdim}) must divide expand * max_granularity ({self.d_inner})")
        self.nheads = self.d_inner // self.headdim
        if self.nheads % ngroups:
            raise ValueError(f"ngroups ({ngroups}) must divide the number of heads ({self.nheads})")
        self.n_bc = 2 * ngroups * d_state
        self.active_granularity: Optional[int] = None  # None: full width

        self._ssm_init = dict(dt_min=dt_min, dt_max=dt_max, dt_init_floor=dt_init_floor, A_init_range=A_init_range)

        self.xbc_proj = nn.Linear(dim, self.n_bc + self.d_inner, bias=False, **dd)
        self.zdt_proj = nn.Linear(dim, self.nheads * (self.headdim + 1), bias=False, **dd)
        self.conv = CausalConv(self.n_bc + self.d_inner, d_conv, **dd)
        self.dt_bias = nn.Parameter(torch.empty(self.nheads, **dd))
        self.A_log = nn.Parameter(torch.empty(self.nheads, **dd))
        self.D = nn.Parameter(torch.empty(self.nheads, **dd))
        self._init_ssm_parameters()
        self.norm = GatedRMSNorm(self.d_inner, eps=norm_eps, **dd)
        self.out_proj = nn.Linear(self.d_inner, dim, bias=False, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def set_backend(self, backend: str) -> None:
        """Run ``backend``'s kernels from now on (a name of :data:`matmamba_vision.ops.SSD_BACKENDS`)."""
        self.ssd_backend = check_ssd_backend(backend)

    @torch.no_grad()
    def _init_ssm_parameters(self) -> None:
        """Mamba2's init of the per-head parameters: dt log-uniform in [dt_min, dt_max] (floored), stored as
        inverse softplus in ``dt_bias``; ``A = U[A_init_range]`` stored as ``log`` in ``A_log``; ``D = 1``.
        Drawn in float32 on the parameters' device, then cast to their dtype."""
        cfg, device = self._ssm_init, self.dt_bias.device
        lo, hi = math.log(cfg["dt_min"]), math.log(cfg["dt_max"])
        dt = torch.exp(torch.rand(self.nheads, device=device) * (hi - lo) + lo).clamp(min=cfg["dt_init_floor"])
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_log.copy_(torch.log(torch.empty(self.nheads, device=device).uniform_(*cfg["A_init_range"])))
        self.D.fill_(1.0)

    def reset_parameters(self) -> None:
        """Initialise every parameter of the mixer as the constructor does (same order of random draws), e.g.
        after ``to_empty`` of a model built on the meta device."""
        self.xbc_proj.reset_parameters()
        self.zdt_proj.reset_parameters()
        self.conv.reset_parameters()
        self._init_ssm_parameters()
        self.norm.reset_parameters()
        self.out_proj.reset_parameters()

    def granularity_step(self) -> int:
        """The smallest valid granularity; every valid one is a multiple of it."""
        unit = self.headdim * self.ngroups  # expand * g must fill whole heads, in whole groups
        return unit // math.gcd(unit, self.expand)

    def check_granularity(self, g: Optional[int]) -> Optional[int]:
        """Return ``g`` if this layer can run at it (None = full width), else raise ValueError."""
        if g is None:
            return None
        step = self.granularity_step()
        if not is_integer(g) or not 0 < g <= self.max_granularity or g % step:
            raise ValueError(
                f"granularity must be a multiple of {step} in [{step}, {self.max_granularity}] "
                f"(expand * g divisible by headdim={self.headdim} x ngroups={self.ngroups}), got {g!r}"
            )
        return int(g)

    def sliced_parameters(self, g: Optional[int] = None) -> Dict[str, torch.Tensor]:
        """Views of the parameters active at granularity ``g``, keyed as in ``state_dict``."""
        g = self.check_granularity(g) or self.max_granularity
        di = self.expand * g
        h = di // self.headdim
        nc = self.n_bc + di
        return {
            "xbc_proj.weight": self.xbc_proj.weight[:nc],
            "zdt_proj.weight": self.zdt_proj.weight[: h * (self.headdim + 1)],
            "conv.weight": self.conv.weight[:nc],
            "conv.bias": self.conv.bias[:nc],
            "dt_bias": self.dt_bias[:h],
            "A_log": self.A_log[:h],
            "D": self.D[:h],
            "norm.weight": self.norm.weight[:di],
            "out_proj.weight": self.out_proj.weight[:, :di],
        }

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """(batch, seqlen, dim) -> (batch, seqlen, dim), at ``self.active_granularity``.

        CPU inference on sequences longer than ``2 * PIECE_LEN`` runs in pieces (:meth:`forward_in_pieces`).
        """
        if self.runs_in_pieces(u):
            return self.forward_in_pieces(u.shape[1], lambda start, end: u[:, start:end])
        return self._mix(u, self.sliced_parameters(self.active_granularity))[0]

    def runs_in_pieces(self, u: torch.Tensor) -> bool:
        """Whether :meth:`forward` on ``u`` runs in pieces: CPU inference over more than ``2 * PIECE_LEN``
        tokens."""
        return not torch.is_grad_enabled() and u.device.type == "cpu" and u.shape[1] > 2 * self.PIECE_LEN

    def forward_in_pieces(self, seqlen: int, piece_input: Callable[[int, int], torch.Tensor]) -> torch.Tensor:
        """The mixer over a sequence of ``seqlen`` tokens whose rows ``start:end`` are ``piece_input(start, end)``,
        in pieces of about ``PIECE_LEN`` tokens (inference).

        Each piece carries the conv's last inputs and the SSD state to the next: the same result as one pass
        (up to rounding), with every temporary a fraction of the size (less peak memory, and buffers that
        stay in cache). ``piece_input`` lets a caller form each piece's input on the fly (the block adds the
        residual and normalises a piece at a time).
        """
        w = self.sliced_parameters(self.active_granularity)
        # The norm's weight folded into out_proj once for all pieces; each piece writes its rows of ``out``.
        w = dict(w, **{"out_proj.weight": w["out_proj.weight"] * w["norm.weight"], "norm.weight": None})
        out, state, start = None, None, 0
        for end in self.piece_bounds(seqlen):
            rows = None if out is None else out[:, start:end]
            y, state = self._mix(piece_input(start, end), w, state, carry=True, out=rows)
            if out is None:  # allocated after the first piece, whose dtype (e.g. under autocast) it takes
                out = y.new_empty(y.shape[0], seqlen, y.shape[-1])
                rows = out[:, start:end]
            if y is not rows:  # the first piece, or dropout (train mode) replaced the written rows
                rows.copy_(y)
            start = end
        return out

    @classmethod
    def piece_bounds(cls, seqlen: int) -> List[int]:
        """End indices of the pieces: whole pieces of ``PIECE_LEN`` (a multiple of the SSD's chunk, so no
        padding), the rest joined to the last one."""
        return list(range(0, seqlen - cls.PIECE_LEN // 2, cls.PIECE_LEN))[1:] + [seqlen]

    def forward_piece(self, u: torch.Tensor, state: Optional[Tuple] = None) -> Tuple[torch.Tensor, Tuple]:
        """The mixer over the next piece of a sequence, continuing from ``state`` (None at the start: the
        conv's last inputs and the SSD state of the tokens before); returns (out, state for the next piece)."""
        return self._mix(u, self.sliced_parameters(self.active_granularity), state, carry=True)

    def _mix(
        self,
        u: torch.Tensor,
        w: Dict[str, Optional[torch.Tensor]],
        state: Optional[Tuple] = None,
        carry: bool = False,
        out: Optional[torch.Tensor] = None,
    ):
        """The mixer on ``u`` with the parameters ``w`` (:meth:`sliced_parameters`; ``norm.weight`` None when
        folded into ``out_proj.weight``), continuing from ``state`` = (the conv's last ``d_conv - 1`` inputs,
        the SSD state) of the tokens before it; returns (out, the state after ``u`` or None unless ``carry``).
        ``out`` (inference): written with the result."""
        b, seqlen, _ = u.shape
        conv_tail, ssd_state = state if state is not None else (None, None)
        h = w["A_log"].shape[0]
        p, gn = self.headdim, self.ngroups * self.d_state

        xbc = self.proj_drop(F.linear(u, w["xbc_proj.weight"]))
        zdt = self.proj_drop(F.linear(u, w["zdt_proj.weight"])).view(b, seqlen, h, p + 1)
        conv_in, new_tail, k = xbc, None, w["conv.weight"].shape[1]
        kernels = select_ssd_backend(self.ssd_backend, u)
        xbc = kernels.conv1d_silu(conv_in, w["conv.weight"], w["conv.bias"])
        if carry and k > 1:
            tail = conv_tail if conv_tail is not None else conv_in.new_zeros(b, k - 1, conv_in.shape[-1])
            head = torch.cat([tail, conv_in[:, : k - 1]], dim=1)  # the inputs the first k-1 outputs see
            if conv_tail is not None and seqlen > 0:  # those outputs, recomputed with the previous piece's inputs
                windows = head.unfold(1, k, 1)  # (b, min(seqlen, k-1), channels, k)
                xbc[:, : k - 1] = F.silu((windows * w["conv.weight"]).sum(-1).add_(w["conv.bias"]))
            new_tail = (head if seqlen < k - 1 else conv_in)[:, -(k - 1) :].clone()
        B, C, x = torch.split(xbc, [gn, gn, h * p], dim=-1)
        x = x.view(b, seqlen, h, p)
        z, dt = zdt[..., :p], zdt[..., p]
        dt = F.softplus(dt.float() + w["dt_bias"].float())
        norm = kernels.gated_rms_norm  # None: the torch tail below, the gate and norm fused with their neighbours
        inference = not torch.is_grad_enabled() and norm is None
        if inference:
            # SiLU over the whole contiguous (z, dt) buffer (dt was read above), cheaper than over the
            # strided z view; the gate is then a strided view of it.
            z = F.silu(zdt, inplace=True)[..., :p]
        A = -torch.exp(w["A_log"].float())
        y = kernels.ssd(  # positional, as every backend's ssd takes them
            x,
            dt,
            A,
            B.view(b, seqlen, self.ngroups, self.d_state),
            C.view(b, seqlen, self.ngroups, self.d_state),
            self.chunk_size,
            ssd_state,
            carry,
        )
        if carry:
            y, ssd_state = y
        Dx = w["D"].to(x.dtype).unsqueeze(-1)
        if norm is not None:
            weight = w["norm.weight"]  # None where forward_in_pieces folded it into out_proj
            weight = weight if weight is not None else w["out_proj.weight"].new_ones(h * p)
            y = norm(torch.addcmul(y, x, Dx).flatten(2), z.flatten(2), weight, self.norm.eps)
            out = F.linear(y, w["out_proj.weight"])
        elif inference:
            y = y.addcmul_(x, Dx).mul_(z)
            out = rms_norm_linear(y.flatten(2), w["norm.weight"], w["out_proj.weight"], eps=self.norm.eps, out=out)
        else:
            y = torch.addcmul(y, x, Dx)
            out = gated_rms_norm_linear(
                y.flatten(2), z.flatten(2), w["norm.weight"], w["out_proj.weight"], eps=self.norm.eps
            )
        return self.proj_drop(out), ((new_tail, ssd_state) if carry else None)


@contextmanager
def use_backend(model: nn.Module, backend: str) -> Iterator[nn.Module]:
    """Every :class:`MatMamba2Mixer` in ``model`` runs ``backend``'s kernels inside the block, its own
    ``ssd_backend`` again after it (e.g. ``'reference'``: work that depends on the shapes only, as
    :func:`matmamba_vision.count_flops` counts)."""
    check_ssd_backend(backend)
    mixers = [m for m in model.modules() if isinstance(m, MatMamba2Mixer)]
    previous = [m.ssd_backend for m in mixers]
    for m in mixers:
        m.set_backend(backend)
    try:
        yield model
    finally:
        for m, name in zip(mixers, previous):
            m.ssd_backend = name
