"""Matryoshka training behind train.py: flags, the per-step logic, validation, checkpoints, outputs."""

from .checkpointing import CheckpointManager, resolve_resume, rng_state, set_rng_state
from .config import build_parser, parse_args
from .matryoshka import MatryoshkaStep, NonFiniteLossError, build_criterion, micro_batch_size
from .preemption import EXIT_DEADLINE, EXIT_PREEMPTED, EXIT_SECOND_SIGNAL
from .trainer import TrainingError, main

__all__ = [
    "main",
    "TrainingError",
    "build_parser",
    "parse_args",
    "MatryoshkaStep",
    "NonFiniteLossError",
    "build_criterion",
    "micro_batch_size",
    "CheckpointManager",
    "resolve_resume",
    "rng_state",
    "set_rng_state",
    "EXIT_PREEMPTED",
    "EXIT_DEADLINE",
    "EXIT_SECOND_SIGNAL",
]
