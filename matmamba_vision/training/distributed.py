"""torchrun DDP set-up (NCCL on GPU, gloo on CPU) and the few collectives training needs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.distributed as dist
from timm.utils.distributed import init_distributed_device_so

from ..runtime import resolve_device

__all__ = [
    "DistInfo",
    "init_distributed",
    "all_reduce_mean",
    "all_reduce_sum",
    "replicas_identical",
    "barrier",
    "all_rng_states",
    "from_main",
]


@dataclass
class DistInfo:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: Optional[str] = None) -> DistInfo:
    """timm's ``init_distributed_device_so`` on a checked ``--device``: a process group when torchrun (or SLURM)
    starts several processes (NCCL for CUDA, else gloo), each CUDA rank on its local GPU."""
    dev = resolve_device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if restart != "0" and int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        return _init_restarted_attempt(dev, restart)
    found = init_distributed_device_so(device=str(dev))
    return DistInfo(torch.device(found["device"]), found["global_rank"], found["world_size"], found["local_rank"])


def _init_restarted_attempt(dev: torch.device, restart: str) -> DistInfo:
    """The process group of an attempt torchrun restarted: keys of the dead attempt may still be in the store
    (seen with torchrun's default static rendezvous: a rank dialled a dead rank's address), so this attempt's
    group uses keys of its own."""
    world, rank, local = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    store, _, _ = next(dist.rendezvous("env://", rank=rank, world_size=world))
    store = dist.PrefixStore(f"/matmamba_vision/restart_{restart}", store)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", store=store, rank=rank, world_size=world)
    return DistInfo(dev, rank, world, local)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


def from_main(obj):
    """Rank 0's ``obj`` on every rank (a picklable value every rank computed, e.g. a time-stamped name)."""
    if dist.is_available() and dist.is_initialized():
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return obj


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_rng_states() -> List[Dict]:
    """Every rank's RNG states (rank order), so a resumed DDP run continues each rank's streams."""
    from .checkpointing import rng_state

    state = rng_state()
    if not (dist.is_available() and dist.is_initialized()):
        return [state]
    gathered: List[Optional[Dict]] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, state)
    return gathered  # type: ignore[return-value]


@torch.no_grad()
def replicas_identical(model: torch.nn.Module) -> bool:
    """True when every rank holds bit-identical parameters (rank 0's are broadcast and compared)."""
    if not (dist.is_available() and dist.is_initialized()):
        return True
    flat = torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])
    ref = flat.clone()
    dist.broadcast(ref, src=0)
    mismatch = torch.tensor([0.0 if torch.equal(ref, flat) else 1.0], device=flat.device)
    dist.all_reduce(mismatch)
    return mismatch.item() == 0
