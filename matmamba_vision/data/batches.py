"""What every data source's loader returns: batches of ``(images float tensor, targets long tensor)`` with
``.classes`` and ``.num_samples``; a training loader also has ``set_epoch``. Shared by the folder/Fashion-MNIST
loaders (:mod:`.loader`) and the FFCV pipeline (:mod:`.ffcv_pipeline`)."""
from __future__ import annotations

from typing import Iterator, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset, Sampler

from .transforms import TensorAugment

__all__ = ["ShardSampler", "EvalLoader", "TrainLoader", "TensorTrainLoader"]

Batch = Tuple[torch.Tensor, torch.Tensor]


class ShardSampler(Sampler):
    """Indices ``rank, rank + world, ...`` in order, without padding (every sample evaluated exactly once);
    with ``limit``, of ``limit`` indices spread evenly over the split (a class-sorted folder keeps every class)."""

    def __init__(self, num_samples: int, rank: int = 0, world: int = 1, limit: Optional[int] = None):
        chosen = range(num_samples) if limit is None or limit >= num_samples else \
            [i * num_samples // limit for i in range(limit)]
        self.indices = list(chosen[rank::world])

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class EvalLoader:
    """Batches of one split for evaluation: iterable, ``len()`` in batches, ``.classes``, ``.num_samples``
    (the whole split; with ``distributed`` each rank sees its shard)."""

    def __init__(self, loader, classes: Sequence[str], num_samples: int, dataset: Optional[Dataset] = None):
        self.loader, self.classes, self.num_samples, self.dataset = loader, list(classes), num_samples, dataset

    def __iter__(self) -> Iterator[Batch]:
        for images, targets in self.loader:
            yield images, targets.long()

    def __len__(self) -> int:
        return len(self.loader)


class TrainLoader(EvalLoader):
    """Shuffled training batches (each rank's share of the global batch); call :meth:`set_epoch` before
    each epoch: the order depends only on ``seed`` and the epoch, so a resumed run replays it. The workers'
    augmentation streams depend on ``seed``, the epoch and ``rank`` (ranks draw independently)."""

    def __init__(self, loader, classes, num_samples, dataset=None, sampler=None, seed: int = 0, rank: int = 0):
        super().__init__(loader, classes, num_samples, dataset)
        self.sampler, self.seed, self.rank = sampler, seed, rank

    def set_epoch(self, epoch: int) -> None:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        if getattr(self.loader, "generator", None) is not None:
            self.loader.generator.manual_seed((self.seed * 1000003 + epoch) * 7919 + self.rank)
        if hasattr(self.loader, "next_epoch"):  # ffcv's Loader
            self.loader.next_epoch = epoch


class TensorTrainLoader:
    """Preloaded uint8 images augmented on the tensor side (:class:`TensorAugment`): the fast path for
    Fashion-MNIST on a CPU, where per-image PIL transforms would cost more than the model."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, classes: Sequence[str], batch_size: int,
                 augment: TensorAugment, seed: int = 0, rank: int = 0, world: int = 1):
        self.images, self.targets, self.classes = images, targets, list(classes)
        self.batch_size, self.augment, self.seed, self.rank, self.world = batch_size, augment, seed, rank, world
        self.num_samples = len(targets)
        self.generator = torch.Generator()
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples // (self.batch_size * self.world)

    def __iter__(self) -> Iterator[Batch]:
        self.generator.manual_seed(self.seed * 1000003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=self.generator)
        step = self.batch_size * self.world
        for i in range(len(self)):  # augment the global batch, then take this rank's share: any world size
            idx = order[i * step:(i + 1) * step]  # sees the same images, shifts and flips (random erasing draws
            # from each rank's own stream)
            images = self.augment(self.images[idx], self.generator)
            yield images[self.rank::self.world], self.targets[idx][self.rank::self.world]
