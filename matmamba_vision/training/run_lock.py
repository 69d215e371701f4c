"""A lock on a run folder while a run is live: ``RUN_FOLDER/run.lock`` names the process (host, pid, start
time, command line). A second run pointed at the folder is refused with that process named; a lock whose
process is gone (killed, the machine restarted) is taken over.

A lock written on this host is live while its pid runs with the recorded start time (so a recycled pid does not
count). A lock from another host cannot be probed: it is live while its holder refreshes it (the file's
modification time, touched by :meth:`RunLock.refresh`) and stale after :data:`STALE_AFTER_S` seconds without.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

__all__ = ["LOCK_NAME", "STALE_AFTER_S", "RunLock", "live_holder", "describe"]

LOCK_NAME = "run.lock"
STALE_AFTER_S = 300.0  # a lock from another host untouched this long is stale
REFRESH_EVERY_S = 60.0  # how often a live run touches its lock

_logger = logging.getLogger("train")


def _start_time(pid: int) -> Optional[str]:
    """The process's start time in clock ticks since boot (Linux /proc), or None where it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the command name in parentheses may hold spaces


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _read(path: Path) -> Optional[Dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def describe(holder: Dict) -> str:
    """'pid 123 on host (train.py ...), started 2026-12-05 08:00:00 UTC' for a lock's contents."""
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.get("since", 0)))
    return f"pid {holder.get('pid')} on {holder.get('host')} ({holder.get('cmd', '?')}), started {started}"


def live_holder(directory: Path) -> Optional[Dict]:
    """The contents of ``directory``'s lock when a live process holds it, else None (no lock, or a stale one)."""
    path = Path(directory) / LOCK_NAME
    holder = _read(path)
    if holder is None:
        if not path.exists():
            return None
        try:  # written but not yet filled in (a run taking it this instant), or damaged: judged by its age
            return (
                {"pid": "?", "host": "?", "cmd": "unreadable lock"}
                if time.time() - path.stat().st_mtime < STALE_AFTER_S
                else None
            )
        except OSError:
            return None
    if holder.get("host") != socket.gethostname():
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:
            return None
        return holder if age < STALE_AFTER_S else None
    pid = holder.get("pid")
    if not isinstance(pid, int) or not _pid_alive(pid):
        return None
    started = holder.get("start_ticks")
    if started is not None and _start_time(pid) not in (None, started):
        return None  # the pid was recycled by another process
    return holder


class RunLock:
    """Holds ``directory/run.lock`` from :meth:`acquire` to :meth:`release` (also a context manager)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self._made: List[Path] = []
        self._held = False
        self._touched = 0.0

    def _refusal(self, holder: Dict) -> ValueError:
        return ValueError(
            f"--output/--experiment: {self.directory} is in use by a live run, {describe(holder)}; "
            f"wait for it to end or stop it, or choose another --experiment (a lock left by a "
            f"process that is gone is taken over)"
        )

    def check(self) -> None:
        """ValueError naming the live process when one holds the folder (nothing is written)."""
        holder = live_holder(self.directory)
        if holder is not None and not self._held:
            raise self._refusal(holder)

    def acquire(self) -> "RunLock":
        """Create the lock (the folder too if needed); a stale lock is taken over, a live one refused."""
        if self._held:
            return self
        self._made = [d for d in (self.directory, *self.directory.parents) if not d.exists()]
        self.directory.mkdir(parents=True, exist_ok=True)
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "start_ticks": _start_time(os.getpid()),
            "since": time.time(),
            "cmd": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300],
        }
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = live_holder(self.directory)
                if holder is not None:
                    raise self._refusal(holder) from None
                stale = _read(self.path)
                # moved aside under a unique name first: of two runs taking over at once, one wins the O_EXCL
                aside = self.path.with_name(f".{LOCK_NAME}.{os.getpid()}.stale")
                try:
                    os.replace(self.path, aside)
                    os.unlink(aside)
                except FileNotFoundError:
                    pass
                _logger.warning(
                    "%s: taking over the lock of a run that is gone (%s)",
                    self.directory,
                    describe(stale) if stale else "unreadable lock",
                )
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
                f.flush()
                os.fsync(f.fileno())
            self._held, self._touched = True, time.time()
            return self
        raise ValueError(f"--output/--experiment: could not take the lock {self.path} (other runs keep taking it)")

    def refresh(self) -> None:
        """Touch the lock (at most every minute) so that other hosts see the run as live."""
        now = time.time()
        if self._held and now - self._touched >= REFRESH_EVERY_S:
            self._touched = now
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        """Remove the lock (if it is still ours), and the folders :meth:`acquire` made if they stayed empty."""
        if not self._held:
            return
        self._held = False
        holder = _read(self.path)
        if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)
        for d in self._made:  # deepest first
            try:
                d.rmdir()
            except OSError:
                pass
        self._made = []

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
