"""Background retraining: one OS process per round, events on a queue, cancel, coalesced requests.

The GUI (or the CLI) owns a :class:`RetrainJob`, calls :meth:`RetrainJob.request` whenever the
user asks for a new model, and calls :meth:`RetrainJob.poll` from a timer to receive events::

    {"type": "started", "n_train": 40, "n_val": 10, "parent": "v3", ...}
    {"type": "step", "done": 12, "total": 50, "epoch": 1, "loss": 0.61}   # epochs count from 1
    {"type": "epoch", "done": 1, "total": 5, "epoch": 1, "loss": 0.58, "val_iou": 0.42, ...}
    {"type": "published", "version": "v4", "promoted": True, "reason": "val IoU 0.45 >= ...",
     "val_iou": 0.45, "threshold": 0.4, "metrics": {...}}   # final weights, measured after training
    {"type": "rejected", "version": "v4", "promoted": False, "reason": "val IoU 0.31 < ..."}
    {"type": "error", "message": "..."} / {"type": "cancelled", "message": "..."}
    {"type": "done"}                                     # always last

Training happens in a separate process forked from a warm server that has already imported torch
and Lightning (:mod:`loop.background`; ``spawn`` where there is no ``forkserver``; never a fork of
the GUI process with its Qt state), niced and limited to a few torch threads so the GUI stays
responsive. The child publishes
only after training has finished, with atomic writes, so killing it never damages the current
model or the label store. The child holds the project's retraining lock
(:class:`loop.registry.RetrainLock`), so a second round on the same project, from this process or
another, is refused at once; and it stops without publishing when the process that started it is
gone. Events the job makes up itself (a child terminated after a cancel, or one that died) are
logged to ``logs/retrain.jsonl`` like the child's own.
"""

from __future__ import annotations

import os
import queue as queue_module
import time
from pathlib import Path

from loop import background
from loop.errors import LoopError, NoTrainingDataError
from loop.registry import CheckpointRegistry, RetrainLock
from loop.retrain_worker import MIN_PASSES, RetrainSettings, child_main, log_event, with_threads
from model.runtime import lower_priority
from model.unet import UNetConfig

#: Seconds a cancelled child gets to stop by itself before it is terminated.
CANCEL_GRACE_S = 5.0


def check_training_data(project_root: str | os.PathLike) -> tuple[int, int]:
    """Count reviewed chips and those with a data center, without reading pixels.

    Returns:
        (reviewed chips, reviewed chips touching a ``datacenter`` footprint).

    Raises:
        NoTrainingDataError: None reviewed, or none with a data center.
        ProjectError: Not a project folder.
    """
    from loop.project import Project
    from loop.training_chips import positive_reviewed_count

    project = Project.open(project_root)
    n, n_pos = positive_reviewed_count(project)
    if n == 0:
        raise NoTrainingDataError(f"no reviewed chips in {project.root}: review some chips first.")
    if n_pos == 0:
        raise NoTrainingDataError(
            f"the {n} reviewed chips in {project.root} are all empty or hard negatives: review some "
            "chips with a data center (class datacenter) first."
        )
    return n, n_pos


class RetrainJob:
    """Retrains the project's model in a separate process.

    Args:
        project_root: Project folder.
        epochs: Training epochs per round (at least; see ``min_passes``).
        lr: Learning rate.
        batch_size: Chips per batch.
        val_fraction: Share of reviewed chips held out (chosen by window hash, stable across rounds).
        unet: Model shape of a cold start; default base 16, depth 4, dropout 0.1 (BALD needs dropout).
        tolerance: Allowed validation drop before a new model is kept only as a candidate.
        seed: Training seed.
        max_time_s: Stop training after this many seconds (best-so-far weights are published).
        threads: Torch threads of the child; default half the CPUs.
        min_passes: Fewest chip passes per round; epochs are raised to reach it with few reviewed
            chips (default :data:`loop.retrain_worker.MIN_PASSES`; 0 trains exactly ``epochs``).
    """

    def __init__(
        self,
        project_root: str | os.PathLike,
        epochs: int = 5,
        lr: float = 1e-3,
        batch_size: int = 8,
        val_fraction: float = 0.2,
        unet: UNetConfig | None = None,
        tolerance: float = 0.02,
        seed: int = 0,
        max_time_s: float | None = None,
        threads: int | None = None,
        min_passes: int | None = None,
    ) -> None:
        self.project_root = Path(project_root)
        self.settings = with_threads(
            RetrainSettings(epochs=epochs, min_passes=MIN_PASSES if min_passes is None else min_passes,
                            lr=lr, batch_size=batch_size, val_fraction=val_fraction, unet=unet,
                            tolerance=tolerance, seed=seed, max_time_s=max_time_s),
            threads,
        )
        self._ctx = None
        self._process = None
        self._queue = None
        self._cancel = None
        self._cancel_deadline: float | None = None
        self._finished = True
        self._exiting: list = []  # (process, deadline) of children that sent "done" but still run
        self._pending = False
        self.last_result: dict | None = None

    # ----- state ----------------------------------------------------------------------------------
    @property
    def is_running(self) -> bool:
        """True from :meth:`start` until the ``done`` event has been polled."""
        return not self._finished

    @property
    def pending(self) -> bool:
        """True when a follow-up round was requested while one was running."""
        return self._pending

    # ----- control --------------------------------------------------------------------------------
    def start(self) -> None:
        """Check that there is something to learn from, then start one round in a new process.

        Raises:
            NoTrainingDataError: No reviewed chips, or only empty/negative ones; nothing started.
            RetrainBusyError: Another process is retraining this project; nothing started.
            ProjectError: ``checkpoints/registry.json`` is unreadable or has a malformed entry.
            RuntimeError: A round is already running (use :meth:`request` to queue one).
        """
        if self.is_running:
            raise RuntimeError("a retraining round is already running; use request() to queue a follow-up.")
        check_training_data(self.project_root)
        checkpoints = self.project_root / "checkpoints"
        RetrainLock(checkpoints).check()  # refuse at once; the child takes the lock for the round
        CheckpointRegistry(checkpoints).versions()  # a hand-edited registry fails here, not after training
        self._ctx = background.context()
        self._queue = self._ctx.Queue()
        self._cancel = self._ctx.Event()
        self._cancel_deadline = None
        self._process = self._ctx.Process(
            target=child_main,
            args=(str(self.project_root), self.settings, self._queue, self._cancel, os.getpid()),
            name="dclabel-retrain",
            daemon=True,
        )
        self._process.start()
        lower_priority(self._process.pid)  # inherited from the fork server; a spawned child before its imports
        self._finished = False

    def request(self) -> bool:
        """Ask for a new model: start now, or mark one follow-up round if one is running.

        Repeated requests while running coalesce into a single follow-up.

        Returns:
            True if a round started now, False if it was queued as the follow-up.

        Raises:
            NoTrainingDataError: Not running and nothing to learn from.
            RetrainBusyError: Not running here, and another process is retraining the project.
        """
        if self.is_running:
            self._pending = True
            return False
        self.start()
        return True

    def cancel(self) -> None:
        """Stop the running round (the child stops between steps; killed after a grace period).

        Also drops a pending follow-up. The current model is never replaced by a cancelled round.
        """
        self._pending = False
        if self.is_running and self._cancel is not None:
            self._cancel.set()
            if self._cancel_deadline is None:
                self._cancel_deadline = time.monotonic() + CANCEL_GRACE_S

    def poll(self) -> list[dict]:
        """Events that arrived since the last call, without blocking.

        When a round ends with a follow-up pending, the follow-up starts here (its failure to
        start is reported as an ``error`` event).
        """
        self._reap()
        events = self._drain()
        if self.is_running and not any(e["type"] == "done" for e in events):
            events.extend(self._check_child())
        if any(e["type"] == "done" for e in events):
            self._finish()
            if self._pending:
                self._pending = False
                try:
                    self.start()
                except LoopError as exc:  # no data, another round running, registry unreadable
                    events.extend([{"type": "error", "message": str(exc), "kind": type(exc).__name__},
                                   {"type": "done"}])
        for e in events:
            if e["type"] in ("published", "rejected", "cancelled", "error"):
                self.last_result = e
        return events

    def wait(self, timeout: float | None = None, interval: float = 0.1) -> list[dict]:
        """Poll until the running round (and any follow-up) is done; returns every event seen."""
        end = None if timeout is None else time.monotonic() + timeout
        events: list[dict] = []
        while self.is_running:
            events.extend(self.poll())
            if end is not None and time.monotonic() > end:
                break
            if self.is_running:
                time.sleep(interval)
        return events

    def close(self) -> None:
        """Cancel and reap the child (for application shutdown)."""
        self.cancel()
        for proc, _ in self._exiting:
            proc.join(CANCEL_GRACE_S)
            if proc.is_alive():
                proc.terminate()
        self._exiting = []
        if self._process is not None and self._process.is_alive():
            self._process.join(CANCEL_GRACE_S)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join(2)
        self._finish()

    # ----- internals ----------------------------------------------------------------------------
    def _drain(self) -> list[dict]:
        events: list[dict] = []
        if self._queue is None:
            return events
        while True:
            try:
                events.append(self._queue.get_nowait())
            except queue_module.Empty:
                return events
            except (EOFError, OSError):
                return events

    def _reap(self) -> None:
        """Join finished children without blocking; terminate ones that outstay the grace period."""
        still = []
        for proc, deadline in self._exiting:
            if proc.is_alive():
                if time.monotonic() > deadline:
                    proc.terminate()
                still.append((proc, deadline))
            else:
                proc.join(0)
        self._exiting = still

    def _check_child(self) -> list[dict]:
        """Synthesised events for a child that died silently or ignored a cancel."""
        proc = self._process
        if proc is None:
            return []
        if proc.is_alive():
            if self._cancel_deadline is not None and time.monotonic() > self._cancel_deadline:
                proc.terminate()
                proc.join(2)
                if proc.is_alive():
                    proc.kill()
                    proc.join(2)
                return self._logged({"type": "cancelled", "message": "retraining stopped (terminated after "
                                     "cancel); the current model is unchanged."})
            return []
        time.sleep(0.05)  # the queue's feeder may still be flushing the last events
        late = self._drain()
        if any(e["type"] == "done" for e in late):
            return late
        return [*late, *self._logged({"type": "error", "message": f"the retraining process exited "
                                      f"unexpectedly (exit code {proc.exitcode}); the current model is unchanged."})]

    def _logged(self, event: dict) -> list[dict]:
        """An event the job makes up for its child, logged as the child logs its own, then ``done``."""
        log_event(self.project_root, {**event, "time": time.time(), "by": "job"})
        return [event, {"type": "done"}]

    def _finish(self) -> None:
        # Never wait here (poll() runs on the GUI thread): a child still tearing down after "done"
        # is reaped by later polls, and terminated if it lingers past the grace period.
        if self._process is not None:
            self._exiting.append((self._process, time.monotonic() + CANCEL_GRACE_S))
        self._reap()
        if self._queue is not None:
            self._queue.close()
            self._queue.join_thread()
        self._process = self._queue = self._cancel = None
        self._cancel_deadline = None
        self._finished = True
