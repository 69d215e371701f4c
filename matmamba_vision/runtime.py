"""What every script checks before it runs, shared by training and evaluation: the ``--device`` it names, and
an output folder it can write."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import List

import torch

__all__ = ["resolve_device", "check_output_dir"]


def resolve_device(name: str) -> torch.device:
    """``--device``; ValueError when it names a device this machine lacks."""
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device {name!r} is not a torch device ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name!r}: CUDA is not available here; use --device cpu")
    return dev


def check_output_dir(directory: Path, flag: str = "--output") -> None:
    """Create ``directory`` and write, fsync and delete a probe file in it: ValueError (naming the folder) when
    that fails, e.g. a read-only file system, no permission, a full disk, or a file in the way. Folders the
    probe created are removed again, so a run that stops at a later check leaves nothing behind."""
    directory = Path(directory)
    created: List[Path] = []
    try:
        try:
            created = [d for d in (directory, *directory.parents) if not d.exists()]
            directory.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".write-probe-", suffix=".tmp", dir=directory)
            try:
                os.write(fd, b"\0" * 4096)
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(probe)
        except OSError as e:
            reason = e.strerror or e
            raise ValueError(f"{flag} {directory}: cannot write there ({reason}); choose another {flag}") from None
    finally:
        for d in created:  # deepest first
            try:
                d.rmdir()
            except OSError:  # never made (the probe failed above it), or no longer empty
                pass
