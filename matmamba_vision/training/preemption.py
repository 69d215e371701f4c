"""Preemption: SIGTERM (and ``--preempt-signal`` extras such as SIGUSR1) asks the run to stop at the end of the
current optimiser step, write a checkpoint and exit with :data:`EXIT_PREEMPTED`, all within ``--preempt-deadline``
seconds of the signal.

Exit codes (documented in README's training section):

- :data:`EXIT_PREEMPTED` (75, ``EX_TEMPFAIL``): stopped on a signal with a complete checkpoint of the step it
  stopped at; run the same command with ``--resume auto`` to continue.
- :data:`EXIT_DEADLINE` (76): the checkpoint could not be written within ``--preempt-deadline``; the process
  exited anyway, leaving the previous checkpoint as the newest complete one.
- :data:`EXIT_SECOND_SIGNAL` (77): a second signal came: exited at once, the previous checkpoint kept.

The signals are watched by a thread reading Python's wakeup fd, so the deadline and a second signal act even
while the main thread is inside a long C call (a checkpoint write). A repeat within :data:`DUPLICATE_WINDOW_S`
of the first counts as the same request: a scheduler and torchrun often both forward one SIGTERM. On a hard
exit the temporary files of an unfinished atomic write are removed, so no partial file is left anywhere.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Iterable, List, Optional

__all__ = ["EXIT_PREEMPTED", "EXIT_DEADLINE", "EXIT_SECOND_SIGNAL", "DUPLICATE_WINDOW_S", "Preemption", "signal_name"]

EXIT_PREEMPTED = 75
EXIT_DEADLINE = 76
EXIT_SECOND_SIGNAL = 77
DUPLICATE_WINDOW_S = 1.0

_logger = logging.getLogger("train")


def signal_name(text: str) -> str:
    """argparse type: a catchable signal's name ('SIGUSR1' or 'USR1'), returned as 'SIGUSR1'."""
    name = text.strip().upper()
    name = name if name.startswith("SIG") else f"SIG{name}"
    if (
        name in ("SIGKILL", "SIGSTOP")
        or not isinstance(getattr(signal, name, None), signal.Signals)
        or name.startswith("SIG_")
    ):
        raise argparse.ArgumentTypeError(f"expected a signal name that can be caught, e.g. SIGUSR1, got {text!r}")
    return name


def _clean_temporaries(directory: Optional[Path]) -> None:
    """Remove the temporary files of atomic writes (``.NAME.*.tmp``) in ``directory``: this run's, as the folder
    is locked while it is live."""
    if directory is None:
        return
    try:
        for tmp in Path(directory).glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
    except OSError:
        pass


class Preemption:
    """Installed for the training loop (``with Preemption(...) as p``): :attr:`requested` turns true on the first
    signal; the loop stops at a step boundary, checkpoints, calls :meth:`checkpoint_written`, then exits with
    :data:`EXIT_PREEMPTED`. ``clean_dir``: the run folder whose temporary files a hard exit removes (rank 0)."""

    def __init__(self, signals: Iterable[str] = ("SIGTERM",), deadline: float = 25.0, clean_dir: Optional[Path] = None):
        self.signals: List[signal.Signals] = []
        for name in ["SIGTERM", *signals]:
            sig = getattr(signal, signal_name(name))
            if sig not in self.signals:
                self.signals.append(sig)
        self.deadline, self.clean_dir = deadline, clean_dir
        self.requested_at: Optional[float] = None
        self.signal: Optional[signal.Signals] = None
        self._written = threading.Event()
        self._lock = threading.RLock()  # the main thread's handler may run inside itself
        self._seen = 0  # signals the watcher has read
        self._previous = {}
        self._previous_fd = -1
        self._pipe = None
        self._thread = None
        self._timer = None

    @property
    def requested(self) -> bool:
        return self.requested_at is not None

    # ---- installation
    def __enter__(self) -> "Preemption":
        if threading.current_thread() is not threading.main_thread():
            _logger.warning("preemption signals not handled: training runs outside the main thread")
            return self
        r, w = os.pipe()
        os.set_blocking(w, False)
        self._pipe = (r, w)
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._python_handler)
        self._previous_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, name="preemption-signals", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self._timer is not None and exc_type is None:  # the run ended normally (e.g. signalled in its last
            self._timer.cancel()  # validation, after the final checkpoint)
        if self._pipe is None:
            return
        signal.set_wakeup_fd(self._previous_fd)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        r, w = self._pipe
        self._pipe = None
        os.write(w, b"\0")  # ends the watcher (0 is no signal)
        self._thread.join(timeout=5)
        os.close(r)
        os.close(w)
        # after a stop (SystemExit) or an error the deadline keeps bounding the exit (e.g. a process group's teardown)

    def _python_handler(self, signum, frame) -> None:
        """Marks the request in the main thread as soon as it runs Python code, so the step under way is the
        one the run stops after; the watcher thread counts signals (a second one) and keeps the deadline."""
        self._request(signal.Signals(signum))

    # ---- the watcher thread
    def _watch(self) -> None:
        r, _ = self._pipe
        while True:
            try:
                data = os.read(r, 64)
            except OSError:
                return
            for signum in data:
                if signum == 0:
                    return
                if signum in self.signals:
                    self._seen += 1
                    sig = signal.Signals(signum)
                    if self._seen == 1:
                        self._request(sig)
                    elif time.monotonic() - self.requested_at > DUPLICATE_WINDOW_S:
                        self._hard_exit(EXIT_SECOND_SIGNAL, f"second {sig.name}: exiting at once")

    def _request(self, sig: signal.Signals) -> None:
        """The first signal (from the main thread's handler or the watcher, whichever runs first)."""
        with self._lock:
            if self.requested_at is not None:
                return
            self.requested_at, self.signal = time.monotonic(), sig
            margin = min(1.0, 0.2 * self.deadline)  # the rest of the exit fits in the deadline
            self._timer = threading.Timer(self.deadline - margin, self._deadline_passed)
            self._timer.daemon = True
            self._timer.start()
        _logger.warning(
            "%s: stopping after this optimiser step to write a checkpoint (within %.0f s; a second "
            "signal exits at once)",
            sig.name,
            self.deadline,
        )

    def _deadline_passed(self) -> None:
        if self._written.is_set():
            self._hard_exit(EXIT_PREEMPTED, "checkpoint written; exit took past the deadline")
        self._hard_exit(
            EXIT_DEADLINE, f"no checkpoint within --preempt-deadline {self.deadline:g} s; the previous one is kept"
        )

    def _hard_exit(self, code: int, why: str) -> None:
        if code != EXIT_PREEMPTED:
            _clean_temporaries(self.clean_dir)
        try:
            sys.stderr.write(f"train.py: {why} (exit code {code})\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - exiting regardless
            pass
        os._exit(code)

    # ---- the training loop's side
    def checkpoint_written(self) -> None:
        """The stop checkpoint is complete on disk (on every rank: after the barrier that follows the write)."""
        self._written.set()

    def exit(self, path: Optional[Path]) -> None:
        """Raise SystemExit(:data:`EXIT_PREEMPTED`) after logging how long the stop took."""
        name = path.name if path else "(on rank 0)"
        if self.requested_at is None:  # another rank was signalled
            _logger.warning(
                "preempted (another rank's signal): checkpoint %s written; exit code %d", name, EXIT_PREEMPTED
            )
        else:
            _logger.warning(
                "preempted (%s): checkpoint %s written %.2f s after the signal; continue with the same "
                "command and --resume auto (exit code %d)",
                self.signal.name,
                name,
                time.monotonic() - self.requested_at,
                EXIT_PREEMPTED,
            )
        raise SystemExit(EXIT_PREEMPTED)
