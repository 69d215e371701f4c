"""Synthetic data with known structure for the evaluation tests (helpers, not a test module).

Class ``c`` of ``n_classes`` is a fixed random 28x28 template; a sample is its template plus small noise, so
nearest neighbours (in pixels, and in any smooth embedding) are almost always of the same class.
"""

from __future__ import annotations

from typing import List, Optional

import timm
import torch

import matmamba_vision  # noqa: F401


def tiny_model(seed: int = 0, **kwargs):
    """The small CPU model cut down further: D 32, depth 2 (levels 32, 16, 8)."""
    torch.manual_seed(seed)
    args = dict(embed_dim=32, depth=2, d_state=16)
    args.update(kwargs)
    return timm.create_model("matmamba_vision_tiny_patch4_28", **args).eval()


class SyntheticLoader:
    """An iterable of (images, targets) batches with ``classes``, ``num_samples`` and ``len()``, like the
    data module's evaluation loader; counts how many batches it has yielded (``batches_served``)."""

    def __init__(
        self,
        n: int,
        n_classes: int = 4,
        batch_size: int = 16,
        noise: float = 0.05,
        seed: int = 0,
        classes: Optional[List[str]] = None,
        template_seed: int = 1234,
    ):
        g = torch.Generator().manual_seed(template_seed)
        templates = torch.randn(n_classes, 1, 28, 28, generator=g)
        g = torch.Generator().manual_seed(seed)
        self.targets = torch.arange(n) % n_classes
        self.images = templates[self.targets] + noise * torch.randn(n, 1, 28, 28, generator=g)
        self.batch_size = batch_size
        self.classes = classes if classes is not None else [f"class{i}" for i in range(n_classes)]
        self.num_samples = n
        self.batches_served = 0

    def __len__(self) -> int:
        return (self.num_samples + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        for a in range(0, self.num_samples, self.batch_size):
            self.batches_served += 1
            yield self.images[a : a + self.batch_size], self.targets[a : a + self.batch_size]
