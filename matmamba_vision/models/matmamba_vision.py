"""MatMamba-Vision: a ViT-like trunk of nested-width Mamba2 blocks, as a timm model."""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    DropPath,
    PatchEmbed,
    get_device_dtype,
    register_notrace_function,
    register_notrace_module,
    resample_abs_pos_embed,
    resample_patch_embed,
    to_2tuple,
)
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import FeatureGetterNet, feature_take_indices
from timm.models._manipulate import checkpoint

try:
    from timm.models._input import update_model_input_size as _update_model_input_size
except ImportError:  # older timm keeps no such record
    _update_model_input_size = None

from ..layers import MatMamba2Mixer
from ..layers.mixer import is_integer
from .convert import convert_official_state_dict

__all__ = [
    "MatMambaVision",
    "MatMambaBlock",
    "MatMambaFeatures",
    "checkpoint_filter_fn",
    "Granularity",
    "DEFAULT_MODEL",
    "DATA_CONFIG_KEYS",
]

# The model the scripts default to (train.py's embedded Fashion-MNIST recipe, and validate.py/retrieval.py
# without --checkpoint): registered below with its own shape, so its checkpoints carry a name that builds it.
DEFAULT_MODEL = "matmamba_vision_tiny_patch14_28"

Granularity = Union[None, int, Sequence[Optional[int]]]
GLOBAL_POOLS = ("token", "avg", "")


def _check_img_size(img_size, patch_size) -> None:
    """ValueError unless ``img_size`` is a positive multiple of ``patch_size`` (a dynamic model's nominal size too:
    its images must fit whole patches)."""
    grid, patch = to_2tuple(img_size), to_2tuple(patch_size)
    if any(not is_integer(s) or s < 1 or s % p for s, p in zip(grid, patch)):
        raise ValueError(f"img_size {img_size} must be a positive multiple of patch_size {patch_size}")


@register_notrace_function  # it branches on the input's shape: a leaf when torch.fx traces the model (a public name:
# torch.fx wraps no name that starts with "_")
def check_input_images(
    x: torch.Tensor, in_chans: int, img_size: Tuple[int, int], patch_size: Tuple[int, int], dynamic_img_size: bool
) -> None:
    """ValueError unless ``x`` is a batch of images the model takes."""
    if x.dim() != 4:
        raise ValueError(f"expected images of shape (batch, {in_chans}, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] != in_chans:
        raise ValueError(f"expected {in_chans} input channels (in_chans), got {x.shape[1]}")
    size = tuple(x.shape[-2:])
    if dynamic_img_size:
        if size[0] % patch_size[0] or size[1] % patch_size[1]:
            raise ValueError(f"image size {size} must be a multiple of patch_size {patch_size}")
    elif size != tuple(img_size):
        raise ValueError(
            f"expected {img_size} images, got {size}; create the model with img_size={size} or dynamic_img_size=True"
        )


def _resample_pos_embed(pos: torch.Tensor, new_size: Tuple[int, int], old_size: Tuple[int, int]) -> torch.Tensor:
    """(1, patches + 1, D) position embeddings on an ``old_size`` grid -> ``new_size``: the patch positions
    resampled (timm's), the [CLS] position (a suffix here) kept."""
    patch_pos = resample_abs_pos_embed(pos[:, :-1], new_size=new_size, old_size=old_size, num_prefix_tokens=0)
    return torch.cat([patch_pos, pos[:, -1:]], dim=1)


_LEAF = "configs"


def _prefix_tree(dims_list: Sequence[Sequence[int]]) -> Dict:
    """Nested dicts keyed by each block's granularity; the node after a configuration's last block lists its
    index under ``_LEAF``."""
    root: Dict = {}
    for idx, dims in enumerate(dims_list):
        node = root
        for g in dims:
            node = node.setdefault(int(g), {})
        node.setdefault(_LEAF, []).append(idx)
    return root


@register_notrace_module  # its forward branches on the input (pieces, granularity): a leaf when torch.fx traces
class MatMambaBlock(nn.Module):
    """``residual = h + residual; h = drop_path(mixer(norm(residual)))`` (add -> norm -> mixer, no MLP)."""

    def __init__(
        self, dim: int, drop_path: float = 0.0, norm_eps: float = 1e-5, device=None, dtype=None, **mixer_kwargs
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.norm = nn.LayerNorm(dim, eps=norm_eps, **dd)
        self.mixer = MatMamba2Mixer(dim, norm_eps=norm_eps, **mixer_kwargs, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self, hidden: torch.Tensor, residual: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.mixer.runs_in_pieces(hidden):
            return self._forward_in_pieces(hidden, residual)
        residual = hidden if residual is None else hidden + residual
        return self.drop_path(self.mixer(self.norm(residual))), residual

    def _forward_in_pieces(self, hidden: torch.Tensor, residual: Optional[torch.Tensor]):
        """Inference over long sequences: the residual sum and the norm are formed a piece at a time, as the
        mixer consumes them, so the normalised sequence never exists whole (one cold pass over the stream
        instead of three, and that much less peak memory)."""
        # The sum in the promoted dtype, as ``hidden + residual`` (under autocast the mixer's output is bfloat16
        # and the residual stream stays float32).
        total = (
            hidden
            if residual is None
            else hidden.new_empty(hidden.shape, dtype=torch.promote_types(hidden.dtype, residual.dtype))
        )

        def piece_input(start: int, end: int) -> torch.Tensor:
            if residual is not None:
                torch.add(hidden[:, start:end], residual[:, start:end], out=total[:, start:end])
            return self.norm(total[:, start:end])

        return self.drop_path(self.mixer.forward_in_pieces(hidden.shape[1], piece_input)), total


def _block_at(blk: MatMambaBlock, granularity: Optional[int], hidden: torch.Tensor, residual: Optional[torch.Tensor]):
    """``blk(hidden, residual)`` at ``granularity``, the block's own setting restored afterwards."""
    previous, blk.mixer.active_granularity = blk.mixer.active_granularity, granularity
    try:
        return blk(hidden, residual)
    finally:
        blk.mixer.active_granularity = previous


class MatMambaVision(nn.Module):
    """MatMamba-Vision classifier. The [CLS] token is a suffix: with a causal scan only the last token sees
    every patch.

    Nested widths: :meth:`set_granularity` (one g for every block or one per block) and the
    :meth:`granularity` context manager choose the inner width each block runs at; :meth:`forward_many` runs
    several such configurations on one batch, computing shared leading blocks once.

    ``device`` / ``dtype`` (timm's factory arguments) place and type every parameter at construction;
    ``device="meta"`` builds shapes only, materialised by ``to_empty(device=...)`` then :meth:`init_weights`.
    """

    def __init__(
        self,
        img_size: Union[int, Tuple[int, int]] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "token",
        embed_dim: int = 512,
        depth: int = 20,
        d_state: int = 128,
        expand: int = 2,
        headdim: Optional[int] = None,
        d_conv: int = 4,
        chunk_size: int = 256,
        ngroups: int = 1,
        mixer_dims: Optional[Sequence[int]] = None,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_eps: float = 1e-5,
        dynamic_img_size: bool = False,
        ssd_backend: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if global_pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")
        for name, value, low in (("depth", depth, 1), ("embed_dim", embed_dim, 1), ("num_classes", num_classes, 0)):
            if not is_integer(value) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        _check_img_size(img_size, patch_size)
        if mixer_dims is not None and len(mixer_dims) != depth:
            raise ValueError(f"mixer_dims needs one entry per block ({depth}), got {len(mixer_dims)}")
        headdim = headdim or embed_dim // 32
        if mixer_dims is not None and not all(is_integer(d) for d in mixer_dims):
            raise ValueError(f"mixer_dims entries must be integers, got {list(mixer_dims)}")
        mixer_dims = [int(d) for d in mixer_dims] if mixer_dims is not None else [embed_dim] * depth
        if not all(0 < d <= embed_dim for d in mixer_dims):
            raise ValueError(f"mixer_dims entries must be in [1, embed_dim={embed_dim}], got {mixer_dims}")
        self.model_args: Dict[str, Any] = dict(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=num_classes,
            global_pool=global_pool,
            embed_dim=embed_dim,
            depth=depth,
            d_state=d_state,
            expand=expand,
            headdim=headdim,
            d_conv=d_conv,
            chunk_size=chunk_size,
            ngroups=ngroups,
            mixer_dims=mixer_dims,
            drop_rate=drop_rate,
            proj_drop_rate=proj_drop_rate,
            drop_path_rate=drop_path_rate,
            norm_eps=norm_eps,
            dynamic_img_size=dynamic_img_size,
            ssd_backend=ssd_backend,
        )
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.in_chans = in_chans
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.dynamic_img_size = dynamic_img_size
        self.grad_checkpointing = False
        # timm reads a model's input traits: only images of img_size pass unless dynamic (PatchEmbed's own check is
        # off, so timm would otherwise take the model as flexible and fall back to the registered size)
        self._traits = {"fixed_input_size": not dynamic_img_size}

        self.patch_embed = PatchEmbed(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            bias=True,
            strict_img_size=False,
            output_fmt="NHWC" if dynamic_img_size else None,
            **dd,
        )
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim, **dd))
        self.pos_embed = nn.Parameter(torch.empty(1, num_patches + 1, embed_dim, **dd))
        nn.init.normal_(self.pos_embed, std=0.02)
        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()  # also under torch.device("meta")
        self.layers = nn.ModuleList(
            MatMambaBlock(
                embed_dim,
                drop_path=dpr[i],
                norm_eps=norm_eps,
                max_granularity=mixer_dims[i],
                d_state=d_state,
                expand=expand,
                headdim=headdim,
                d_conv=d_conv,
                chunk_size=chunk_size,
                ngroups=ngroups,
                proj_drop=proj_drop_rate,
                ssd_backend=ssd_backend,
                **dd,
            )
            for i in range(depth)
        )
        self.norm_f = nn.LayerNorm(embed_dim, eps=norm_eps, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.feature_info = [dict(module=f"layers.{i}", num_chs=embed_dim, reduction=patch_size) for i in range(depth)]
        self.init_weights(needs_reset=False)

    @torch.no_grad()
    def init_weights(self, needs_reset: bool = True) -> None:
        """The official model's init: linear biases zero, each ``out_proj`` weight kaiming-uniform(a=sqrt(5))
        divided by sqrt(depth), the mixers' own parameters by their ``reset_parameters``. ``needs_reset=True``
        first re-initialises every parameter as construction does, in the same order of random draws (timm's
        contract, for a model built on the meta device and materialised with ``to_empty``: the same seed gives
        the same weights)."""
        if needs_reset:
            self.patch_embed.proj.reset_parameters()
            nn.init.zeros_(self.cls_token)
            nn.init.normal_(self.pos_embed, std=0.02)
            for blk in self.layers:
                blk.norm.reset_parameters()
                blk.mixer.reset_parameters()
            for m in (self.norm_f, self.head):  # Identity when pruned / without classes
                if isinstance(m, (nn.LayerNorm, nn.Linear)):
                    m.reset_parameters()
        for m in self.modules():
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        for blk in self.layers:
            w = blk.mixer.out_proj.weight
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
            w.div_(math.sqrt(len(self.layers)))

    # ----------------------------------------------------------------- timm model API
    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """The SSM's per-head parameters (A_log, D, dt_bias); all other 1-D params are excluded by timm."""
        return {f"layers.{i}.mixer.{n}" for i in range(len(self.layers)) for n in ("A_log", "D", "dt_bias")}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r"^cls_token|^pos_embed|^patch_embed",
            blocks=[(r"^layers\.(\d+)", None), (r"^norm_f", (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new head of ``num_classes`` (0: none), on the model's device and dtype and in its training mode
        (timm's contract); ``global_pool`` None keeps the pooling."""
        if global_pool is not None:
            if global_pool not in GLOBAL_POOLS:
                raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.model_args.update(num_classes=num_classes, global_pool=self.global_pool)
        dd = get_device_dtype(self)
        self.head = nn.Linear(self.embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.head.train(self.training)

    @torch.jit.ignore
    def set_input_size(
        self,
        img_size: Optional[Union[int, Tuple[int, int]]] = None,
        patch_size: Optional[Union[int, Tuple[int, int]]] = None,
    ) -> None:
        """Change the input resolution and/or patch size in place, as timm's ViT does: the patch position
        embeddings are resampled to the new grid (the [CLS] token's is kept) and a new patch size resamples
        the patch embedding's kernel. ``None`` keeps the current value."""
        new_img = tuple(self.patch_embed.img_size) if img_size is None else to_2tuple(img_size)
        new_patch = tuple(self.patch_embed.patch_size) if patch_size is None else to_2tuple(patch_size)
        if any(not is_integer(p) or p < 1 for p in new_patch):
            raise ValueError(f"patch_size must be a positive integer (or a pair), got {patch_size!r}")
        _check_img_size(new_img, new_patch)
        prev_grid = tuple(self.patch_embed.grid_size)
        self.patch_embed.set_input_size(img_size=new_img, patch_size=new_patch)
        grid = tuple(self.patch_embed.grid_size)
        if grid != prev_grid:
            with torch.no_grad():
                pos = _resample_pos_embed(self.pos_embed, grid, prev_grid)
            self.pos_embed = nn.Parameter(pos, requires_grad=self.pos_embed.requires_grad)
        self.model_args.update(img_size=new_img, patch_size=new_patch)
        for info in self.feature_info:
            info["reduction"] = new_patch[0]
        if _update_model_input_size is not None:  # timm's record of the model's current input (timm >= 1.0.31)
            _update_model_input_size(self, new_img, patch_size=new_patch)

    # ----------------------------------------------------------------- granularity
    @property
    def granularities(self) -> List[Optional[int]]:
        """The granularity each block runs at now (None = that block's full width)."""
        return [blk.mixer.active_granularity for blk in self.layers]

    @property
    def matryoshka_levels(self) -> List[int]:
        """The trained levels D, D/2, D/4, D/8 that every block of this model can run at."""
        levels = []
        for m in (1, 2, 4, 8):
            g = self.embed_dim // m
            try:
                self.resolve_granularity(g)
            except ValueError:
                continue
            levels.append(g)
        return levels

    def resolve_granularity(self, granularity: Granularity) -> List[Optional[int]]:
        """One checked granularity per block from None, an int, or a per-block list; ValueError if invalid."""
        n = len(self.layers)
        if granularity is None or is_integer(granularity):
            dims = [granularity] * n
        elif isinstance(granularity, (list, tuple)):
            if len(granularity) != n:
                raise ValueError(
                    f"a per-layer granularity list needs one entry per block ({n}), got {len(granularity)}"
                )
            dims = list(granularity)
        else:
            raise ValueError(f"granularity must be None, an int, or a list of {n} ints, got {granularity!r}")
        out = []
        for i, (blk, g) in enumerate(zip(self.layers, dims)):
            try:
                out.append(blk.mixer.check_granularity(g))
            except ValueError as e:
                raise ValueError(f"layer {i}: {e}") from None
        return out

    def set_granularity(self, granularity: Granularity) -> None:
        """Run every block at ``granularity`` (int), each at its own (list), or at full width (None)."""
        for blk, g in zip(self.layers, self.resolve_granularity(granularity)):
            blk.mixer.active_granularity = g

    @contextmanager
    def granularity(self, granularity: Granularity) -> Iterator["MatMambaVision"]:
        """Temporarily run at ``granularity``; the previous setting is restored on exit."""
        previous = self.granularities
        self.set_granularity(granularity)
        try:
            yield self
        finally:
            for blk, g in zip(self.layers, previous):
                blk.mixer.active_granularity = g

    # ----------------------------------------------------------------- forward
    def _check_input(self, x: torch.Tensor) -> None:
        check_input_images(
            x, self.in_chans, self.patch_embed.img_size, self.patch_embed.patch_size, self.dynamic_img_size
        )

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        pos = self.pos_embed
        if self.dynamic_img_size:
            b, h, w, c = x.shape
            pos = _resample_pos_embed(pos, (h, w), self.patch_embed.grid_size)
            x = x.reshape(b, h * w, c)
        x = torch.cat([x, self.cls_token.expand(x.shape[0], -1, -1)], dim=1)
        return x + pos

    def _run_block(self, blk: nn.Module, hidden: torch.Tensor, residual: Optional[torch.Tensor]):
        if self.grad_checkpointing and not torch.jit.is_scripting() and torch.is_grad_enabled():
            # The recomputation in the backward runs at the granularity of this forward, whatever is set by
            # then (a Matryoshka step leaves each granularity's context before its backward).
            return checkpoint(_block_at, blk, blk.mixer.active_granularity, hidden, residual)
        return blk(hidden, residual)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> normalised tokens (batch, num_patches + 1, embed_dim); [CLS] last."""
        self._check_input(x)
        hidden, residual = self._pos_embed(self.patch_embed(x)), None
        for blk in self.layers:
            hidden, residual = self._run_block(blk, hidden, residual)
        return self.norm_f(hidden + residual)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.global_pool == "token":
            return x[:, -1]
        if self.global_pool == "avg":
            return x[:, :-1].mean(dim=1)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool ([CLS] or mean of patches); ``pre_logits=True`` returns the embedding used for retrieval."""
        x = self.head_drop(self.pool(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.no_grad()
    def forward_many(
        self,
        x: torch.Tensor,
        granularities: Sequence[Granularity],
        pre_logits: bool = False,
        share_prefix: bool = True,
    ) -> Iterator[Tuple[int, torch.Tensor]]:
        """Run several granularity configurations on one batch (inference: no autograd graph).

        ``granularities``: one entry per configuration, each what :meth:`set_granularity` takes (None, an int,
        or a per-block list; checked first, ValueError naming the configuration). Yields ``(index, output)``
        for every configuration, in an order of the method's choosing: logits, or the pooled embedding with
        ``pre_logits=True``. Blocks are causal in depth (block ``i`` depends only on the granularities of
        blocks ``0..i``), so the configurations are walked as a prefix tree and a run of leading blocks
        shared by several is computed once; each output is bit-identical to ``self(x)`` at that
        granularity. ``share_prefix=False`` runs one whole forward per configuration. The model's own
        granularity setting is unchanged afterwards.
        """
        dims_list = []
        for i, g in enumerate(granularities):
            try:
                dims = self.resolve_granularity(g)
            except ValueError as e:
                raise ValueError(f"granularities[{i}]: {e}") from None
            dims_list.append([d or blk.mixer.max_granularity for d, blk in zip(dims, self.layers)])
        previous = self.granularities
        try:
            if not share_prefix:
                for i, dims in enumerate(dims_list):
                    self.set_granularity(dims)
                    yield i, self.forward_head(self.forward_features(x), pre_logits=pre_logits)
                return
            self._check_input(x)
            tokens = self._pos_embed(self.patch_embed(x))
            # Depth first over the prefix tree; each stack entry: (subtree, block index, that block's input
            # hidden/residual, its granularity). A block runs when its entry is popped, so at most one pending
            # input per depth stays alive.
            stack = [(child, 0, tokens, None, g) for g, child in reversed(list(_prefix_tree(dims_list).items()))]
            while stack:
                node, level, hidden, residual, g = stack.pop()
                blk = self.layers[level]
                blk.mixer.active_granularity = g  # checked above
                hidden, residual = blk(hidden, residual)
                for idx in node.get(_LEAF, []):
                    yield idx, self.forward_head(self.norm_f(hidden + residual), pre_logits=pre_logits)
                stack.extend(
                    (child, level + 1, hidden, residual, cg)
                    for cg, child in reversed(list(node.items()))
                    if cg != _LEAF
                )
        finally:
            for blk, g in zip(self.layers, previous):
                blk.mixer.active_granularity = g

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """The residual stream after the chosen blocks (timm's contract; the [CLS] token is the 'prefix').

        Returns (final normalised tokens, intermediates), or only the intermediates.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        self._check_input(x)
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        b, _, height, width = x.shape
        blocks = self.layers[: max_index + 1] if stop_early else self.layers
        hidden, residual = self._pos_embed(self.patch_embed(x)), None
        intermediates = []
        for i, blk in enumerate(blocks):
            hidden, residual = self._run_block(blk, hidden, residual)
            if i in take_indices:
                stream = hidden + residual
                intermediates.append(self.norm_f(stream) if norm else stream)
        cls_tokens = [y[:, -1:] for y in intermediates]
        intermediates = [y[:, :-1] for y in intermediates]
        if output_fmt == "NCHW":
            gh, gw = self.patch_embed.dynamic_feat_size((height, width))
            intermediates = [y.reshape(b, gh, gw, -1).permute(0, 3, 1, 2).contiguous() for y in intermediates]
        if return_prefix_tokens:
            intermediates = list(zip(intermediates, cls_tokens))
        if intermediates_only:
            return intermediates
        if len(blocks) < len(self.layers):  # stopped early: finish the trunk for the final features
            for blk in self.layers[len(blocks) :]:
                hidden, residual = self._run_block(blk, hidden, residual)
        return self.norm_f(hidden + residual), intermediates

    def prune_intermediate_layers(
        self, indices: Union[int, List[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> List[int]:
        """Drop blocks after the last needed intermediate (and optionally the final norm and head)."""
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        self.layers = self.layers[: max_index + 1]
        self.model_args.update(depth=max_index + 1, mixer_dims=self.model_args["mixer_dims"][: max_index + 1])
        if prune_norm:
            self.norm_f = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices


class MatMambaFeatures(FeatureGetterNet):
    """timm's ``features_only=True`` wrapper with the elastic API of the model inside it: ``set_granularity``,
    ``granularity()``, ``granularities``, ``matryoshka_levels``, ``resolve_granularity`` and ``forward_many``."""

    @property
    def granularities(self) -> List[Optional[int]]:
        return self.model.granularities

    @property
    def matryoshka_levels(self) -> List[int]:
        return self.model.matryoshka_levels

    def resolve_granularity(self, granularity: Granularity) -> List[Optional[int]]:
        return self.model.resolve_granularity(granularity)

    def set_granularity(self, granularity: Granularity) -> None:
        self.model.set_granularity(granularity)

    @contextmanager
    def granularity(self, granularity: Granularity) -> Iterator["MatMambaFeatures"]:
        with self.model.granularity(granularity):
            yield self

    @torch.no_grad()
    def forward_many(self, x: torch.Tensor, granularities: Sequence[Granularity]) -> Iterator[Tuple[int, Any]]:
        """Yield ``(index, features)`` for each configuration (what ``set_granularity`` takes; all checked first),
        each ``features`` equal to ``self(x)`` at that granularity (one pass per configuration)."""
        checked = []
        for i, g in enumerate(granularities):
            try:
                checked.append(self.resolve_granularity(g))
            except ValueError as e:
                raise ValueError(f"granularities[{i}]: {e}") from None
        for i, dims in enumerate(checked):
            with self.granularity(dims):
                yield i, self(x)


def _source_grid(tokens: int, model: MatMambaVision) -> Tuple[int, int]:
    """The patch grid of a checkpoint's ``tokens`` position embeddings: from the model args it was saved with
    (timm passes them for ``local-dir:``/hub folders), else square."""
    src = getattr(model, "pretrained_model_args", None) or {}
    if src.get("img_size") is not None and src.get("patch_size") is not None:
        grid = tuple(s // p for s, p in zip(to_2tuple(src["img_size"]), to_2tuple(src["patch_size"])))
        if grid[0] * grid[1] == tokens:
            return grid
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(
            f"pos_embed: {tokens} patch positions and no recorded grid (img_size, patch_size) to "
            f"resample them from; a square grid is assumed only when the count is a square"
        )
    return side, side


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: MatMambaVision) -> Dict[str, torch.Tensor]:
    """timm's pretrained filter: official layout -> ours; the position embedding resampled to the model's grid
    and the patch embedding's kernel to its patch size (as timm's ViT does)."""
    state_dict = convert_official_state_dict(state_dict)
    pos = state_dict.get("pos_embed")
    if pos is not None and pos.shape != model.pos_embed.shape:
        state_dict["pos_embed"] = _resample_pos_embed(
            pos, model.patch_embed.grid_size, _source_grid(pos.shape[1] - 1, model)
        )
    kernel = state_dict.get("patch_embed.proj.weight")
    if kernel is not None and kernel.shape[-2:] != model.patch_embed.proj.weight.shape[-2:]:
        state_dict["patch_embed.proj.weight"] = resample_patch_embed(kernel, list(model.patch_embed.patch_size))
    return state_dict


def _create(variant: str, pretrained: bool = False, **kwargs) -> MatMambaVision:
    out_indices = kwargs.pop("out_indices", 3)
    return build_model_with_cfg(
        MatMambaVision,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls=MatMambaFeatures),
        **kwargs,
    )


# The data-config keys of timm that the evaluation transform reads (a model's pretrained cfg carries them).
DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def _cfg(**kwargs) -> Dict[str, Any]:
    return {
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "paper_ids": "arXiv:2410.06718",
        "paper_name": "MatMamba: A Matryoshka State Space Model",
        **kwargs,
    }


def _fmnist_cfg(**kwargs) -> Dict[str, Any]:
    """Fashion-MNIST models: 10 classes, 28x28 grey images, the training split's mean and std."""
    return _cfg(
        num_classes=10,
        input_size=(1, 28, 28),
        crop_pct=1.0,
        interpolation="bilinear",
        mean=(0.2860,),
        std=(0.3530,),
        **kwargs,
    )


default_cfgs = generate_default_cfgs(
    {
        "matmamba_vision_35m_patch16_224.in1k": _cfg(
            hf_hub_id="scaledfoundations/MatMamba-Vision-35M-ImageNet",
            hf_hub_filename="pytorch_model.bin",
        ),
        "matmamba_vision_135m_patch16_224.in1k": _cfg(
            hf_hub_id="scaledfoundations/MatMamba-Vision-135M-ImageNet",
            hf_hub_filename="pytorch_model.bin",
        ),
        "matmamba_vision_tiny_patch4_28.fmnist": _fmnist_cfg(),
        "matmamba_vision_tiny_patch7_28.fmnist": _fmnist_cfg(),
        "matmamba_vision_tiny_patch14_28.fmnist": _fmnist_cfg(),
    }
)


@register_model
def matmamba_vision_35m_patch16_224(pretrained: bool = False, **kwargs) -> MatMambaVision:
    """MatMamba-Vision-35M (D 512, depth 20, d_state 128), ImageNet-1K."""
    args = dict(patch_size=16, embed_dim=512, depth=20, d_state=128)
    return _create("matmamba_vision_35m_patch16_224", pretrained, **dict(args, **kwargs))


@register_model
def matmamba_vision_135m_patch16_224(pretrained: bool = False, **kwargs) -> MatMambaVision:
    """MatMamba-Vision-135M (D 1024, depth 20, d_state 128), ImageNet-1K."""
    args = dict(patch_size=16, embed_dim=1024, depth=20, d_state=128)
    return _create("matmamba_vision_135m_patch16_224", pretrained, **dict(args, **kwargs))


@register_model
def matmamba_vision_tiny_patch4_28(pretrained: bool = False, **kwargs) -> MatMambaVision:
    """A small model for a CPU: 28x28 grey images (Fashion-MNIST), 10 classes."""
    args = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=128, depth=6, d_state=32, headdim=16)
    return _create("matmamba_vision_tiny_patch4_28", pretrained, **dict(args, **kwargs))


@register_model
def matmamba_vision_tiny_patch7_28(pretrained: bool = False, **kwargs) -> MatMambaVision:
    """The demo's model before issue 17: 28x28 grey images at patch 7 (16 tokens), D 128, depth 4, d_state 16,
    10 classes (the patch-4 model: 49 tokens, depth 6, d_state 32)."""
    args = dict(img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=128, depth=4, d_state=16, headdim=16)
    return _create("matmamba_vision_tiny_patch7_28", pretrained, **dict(args, **kwargs))


@register_model
def matmamba_vision_tiny_patch14_28(pretrained: bool = False, **kwargs) -> MatMambaVision:
    """The demo's model (``python train.py`` / ``make demo``): 28x28 grey images at patch 14 (4 tokens), D 128,
    depth 4, d_state 16, 10 classes. Its steps on a CPU are bound by per-operation overhead, so fewer tokens
    and bigger batches cost less per image than the patch-7 model (figures: BENCHMARKS.md)."""
    args = dict(img_size=28, patch_size=14, in_chans=1, num_classes=10, embed_dim=128, depth=4, d_state=16, headdim=16)
    return _create("matmamba_vision_tiny_patch14_28", pretrained, **dict(args, **kwargs))
