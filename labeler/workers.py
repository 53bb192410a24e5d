"""Run a GUI-free long function as a napari ``thread_worker`` generator that yields its progress.

The learner's long functions report through ``progress(done, total, info)`` callbacks and stop on
a ``cancel`` callable. :func:`progress_worker` runs such a function in a helper thread and turns
its callbacks into ``yield``\\ s of the worker, so the GUI receives them on the main thread through
``worker.yielded`` and ``worker.quit()`` (or :meth:`ProgressJob.cancel`) stops the function at its
next check. Exceptions reach ``worker.errored``; the return value reaches ``worker.returned``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from napari.qt.threading import GeneratorWorker, thread_worker


@dataclass(frozen=True)
class Progress:
    """One progress report of a background job."""

    done: int
    total: int
    info: dict = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        """``done / total`` in [0, 1] (0 when total is unknown)."""
        return min(1.0, self.done / self.total) if self.total else 0.0


class JobError(Exception):
    """A background job's RuntimeError (e.g. ``NaipError``, ``StoreError``), passed on intact.

    Attributes:
        original: The exception the job raised; ``str()`` is its message.
    """

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


class ProgressJob:
    """A long function with ``progress``/``cancel`` keywords, run off the Qt main thread.

    Args:
        fn: The function; called as ``fn(*args, progress=..., cancel=..., **kwargs)``.
        *args: Positional arguments.
        **kwargs: Keyword arguments.
    """

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.cancel_event = threading.Event()
        self.worker: GeneratorWorker = thread_worker(self._run, start_thread=False, ignore_errors=True)()
        self.worker.aborted.connect(self.cancel_event.set)

    def cancel(self) -> None:
        """Ask the function to stop at its next check (the worker then returns or errors)."""
        self.cancel_event.set()

    def start(self) -> GeneratorWorker:
        """Start the worker; returns it (connect signals before calling this)."""
        self.worker.start()
        return self.worker

    def _run(self) -> Generator[Progress, None, Any]:
        reports: queue.Queue = queue.Queue()
        outcome: dict[str, Any] = {}

        def progress(done: int, total: int, info: dict | None = None) -> None:
            reports.put(Progress(int(done), int(total), dict(info or {})))

        def target() -> None:
            try:
                outcome["result"] = self.fn(
                    *self.args, progress=progress, cancel=self.cancel_event.is_set, **self.kwargs
                )
            except BaseException as exc:  # re-raised in the worker thread below
                outcome["error"] = exc
            finally:
                reports.put(None)

        thread = threading.Thread(target=target, name=f"dclabel-{getattr(self.fn, '__name__', 'job')}",
                                  daemon=True)
        thread.start()
        try:
            while True:
                item = reports.get()
                if item is None:
                    break
                latest = item
                while not reports.empty():  # coalesce bursts: the GUI only needs the newest
                    nxt = reports.get_nowait()
                    if nxt is None:
                        reports.put(None)
                        break
                    latest = nxt
                yield latest
        finally:  # also on abort (GeneratorExit): stop the function and wait for it
            if thread.is_alive():
                self.cancel_event.set()
            thread.join()
        if "error" in outcome:
            error = outcome["error"]
            if isinstance(error, RuntimeError):
                # superqt's worker treats a RuntimeError as "the Qt object was deleted" and ends
                # silently, without errored/finished: wrap it so the panel hears about it.
                raise JobError(error) from error
            raise error
        return outcome.get("result")
