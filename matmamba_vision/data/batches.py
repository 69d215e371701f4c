"""What every data source's loader returns: batches of ``(images float tensor, targets long tensor)`` with
``.classes`` and ``.num_samples``; a training loader also has ``set_epoch``. Shared by the folder/Fashion-MNIST
loaders (:mod:`.loader`) and the FFCV pipeline (:mod:`.ffcv_pipeline`)."""

from __future__ import annotations

import itertools
import signal
from typing import Iterator, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

from .transforms import TensorAugment

__all__ = [
    "ShardSampler",
    "EvalLoader",
    "TrainLoader",
    "TensorTrainLoader",
    "ResumableDistributedSampler",
    "ignore_preemption_signals",
]

Batch = Tuple[torch.Tensor, torch.Tensor]


class ShardSampler(Sampler):
    """Indices ``rank, rank + world, ...`` in order, without padding (every sample evaluated exactly once);
    with ``limit``, of ``limit`` indices spread evenly over the split (a class-sorted folder keeps every class)."""

    def __init__(self, num_samples: int, rank: int = 0, world: int = 1, limit: Optional[int] = None):
        chosen = (
            range(num_samples)
            if limit is None or limit >= num_samples
            else [i * num_samples // limit for i in range(limit)]
        )
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


def ignore_preemption_signals(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: workers ignore SIGTERM, SIGUSR1 and SIGUSR2. A scheduler signals every
    process of the job; a worker killed by it would make the main process fail at once (torch's SIGCHLD check)
    instead of finishing its step and checkpointing. Workers still end with the main process."""
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)


class ResumableDistributedSampler(DistributedSampler):
    """torch's DistributedSampler that can start its epoch after ``start`` indices (a resumed epoch)."""

    start = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self) -> int:
        return self.num_samples - self.start


class TrainLoader(EvalLoader):
    """Shuffled training batches (each rank's share of the global batch); call :meth:`set_epoch` before
    each epoch: the order depends only on ``seed`` and the epoch, so a resumed run replays it. The workers'
    augmentation streams depend on ``seed``, the epoch and ``rank`` (ranks draw independently).

    ``set_epoch(epoch, start)`` begins that epoch after its first ``start`` batches (resuming an in-epoch
    checkpoint): the sampler skips their indices, or, for a loader without one (ffcv), they are read and dropped.
    With ``workers`` > 0 the rest of the epoch has the same images but the workers' augmentation streams start
    afresh; with 0 they come from the main process's RNG, which the checkpoint restores."""

    def __init__(self, loader, classes, num_samples, dataset=None, sampler=None, seed: int = 0, rank: int = 0):
        super().__init__(loader, classes, num_samples, dataset)
        self.sampler, self.seed, self.rank = sampler, seed, rank
        self._drop = 0

    def set_epoch(self, epoch: int, start: int = 0, state: Optional[dict] = None) -> None:
        self._drop = 0
        if isinstance(self.sampler, ResumableDistributedSampler):
            self.sampler.start = start * self.loader.batch_size
        elif start:
            self._drop = start
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        if getattr(self.loader, "generator", None) is not None:
            self.loader.generator.manual_seed((self.seed * 1000003 + epoch) * 7919 + self.rank)
        if hasattr(self.loader, "next_epoch"):  # ffcv's Loader
            self.loader.next_epoch = epoch

    def state_dict(self) -> dict:
        """What an in-epoch checkpoint needs beyond the batch count and the global RNGs (nothing here)."""
        return {}

    def __iter__(self) -> Iterator[Batch]:
        batches = super().__iter__()
        for _ in itertools.islice(batches, self._drop):
            pass
        return batches

    def __len__(self) -> int:
        return len(self.loader) - self._drop


class TensorTrainLoader:
    """Preloaded uint8 images augmented on the tensor side (:class:`TensorAugment`): the fast path for
    Fashion-MNIST on a CPU, where per-image PIL transforms would cost more than the model."""

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        classes: Sequence[str],
        batch_size: int,
        augment: TensorAugment,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
    ):
        self.images, self.targets, self.classes = images, targets, list(classes)
        self.batch_size, self.augment, self.seed, self.rank, self.world = batch_size, augment, seed, rank, world
        self.num_samples = len(targets)
        self.generator = torch.Generator()
        self.epoch, self.start, self._resume_generator = 0, 0, None

    def set_epoch(self, epoch: int, start: int = 0, state: Optional[dict] = None) -> None:
        """``start`` > 0 with ``state`` (:meth:`state_dict` saved after that many batches): resume inside the epoch."""
        if start and (state or {}).get("generator") is None:
            raise ValueError("TensorTrainLoader.set_epoch: resuming inside an epoch needs the state saved with it")
        self.epoch, self.start = epoch, start
        self._resume_generator = state["generator"] if start else None

    def state_dict(self) -> dict:
        """The augmentation generator's state (call after a batch: the next batch continues from it)."""
        return {"generator": self.generator.get_state()}

    def __len__(self) -> int:
        return self.num_samples // (self.batch_size * self.world)

    def __iter__(self) -> Iterator[Batch]:
        self.generator.manual_seed(self.seed * 1000003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=self.generator)
        step = self.batch_size * self.world
        first, self.start = self.start, 0
        if first:
            self.generator.set_state(self._resume_generator)
        for i in range(first, len(self)):  # augment the global batch, then take this rank's share: any world size
            idx = order[i * step : (i + 1) * step]  # sees the same images, shifts and flips (random erasing draws
            # from each rank's own stream)
            images = self.augment(self.images[idx], self.generator)
            yield images[self.rank :: self.world], self.targets[idx][self.rank :: self.world]
