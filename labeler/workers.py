"""Run a GUI-free long function as a napari ``thread_worker`` generator that yields its progress.

The learner's long functions report through ``progress(done, total, info)`` callbacks and stop on
a ``cancel`` callable. :func:`progress_worker` runs such a function in a helper thread and turns
its callbacks into ``yield``\\ s of the worker, so the GUI receives them on the main thread through
``worker.yielded`` and ``worker.quit()`` (or :meth:`ProgressJob.cancel`) stops the function at its
next check. Exceptions reach ``worker.errored``; the return value reaches ``worker.returned``.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from napari.qt.threading import GeneratorWorker, thread_worker

from loop import background
from model.runtime import lower_priority

log = logging.getLogger(__name__)


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

    def stop(self, wait_ms: int = 10_000) -> bool:
        """Cancel and wait up to ``wait_ms`` for the worker to end (on window close).

        Returns False, with a log line instead of superqt's RuntimeError, when it is still busy
        (a batch that outlasts the wait on a loaded machine): closing the window must not fail for
        it; the helper thread is a daemon and its late result goes to a closed panel.
        """
        self.cancel()
        self.worker.quit()
        try:
            self.worker.await_workers(wait_ms)
        except RuntimeError as exc:
            log.warning("%s still running after %d ms at close: %s", getattr(self.fn, "__name__", "job"), wait_ms, exc)
            return False
        return True

    def start(self) -> GeneratorWorker:
        """Start the worker; returns it (connect signals before calling this)."""
        self.worker.start()
        return self.worker

    def _call(self, progress: Callable[..., None]) -> Any:
        """Run the function (in the helper thread) and return its result."""
        return self.fn(*self.args, progress=progress, cancel=self.cancel_event.is_set, **self.kwargs)

    def _run(self) -> Generator[Progress, None, Any]:
        reports: queue.Queue = queue.Queue()
        outcome: dict[str, Any] = {}

        def progress(done: int, total: int, info: dict | None = None) -> None:
            reports.put(Progress(int(done), int(total), dict(info or {})))

        def target() -> None:
            try:
                outcome["result"] = self._call(progress)
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


class ProcessJob(ProgressJob):
    """A :class:`ProgressJob` whose function runs in a separate OS process (:mod:`loop.background`).

    For CPU-heavy jobs with long stretches of pure-Python work (vectorizing, writing GeoPackages):
    in a thread they would hold the GIL and stall the Qt event loop; in their own process they
    cannot. The process is forked from a warm server that has torch and the model code imported
    (started in about 10 ms), runs at a lower priority (nice 10) with ``threads`` torch threads
    (default: all CPUs but one, at least one), reports progress through a queue, stops at its next
    ``cancel`` check when asked, and sends its return value or exception back pickled. ``fn`` must
    be importable without Qt (GUI-free code).

    Args:
        fn: Module-level function called as ``fn(*args, progress=..., cancel=..., **kwargs)``.
        *args: Positional arguments (picklable).
        threads: Torch threads of the child process.
        **kwargs: Keyword arguments (picklable).
    """

    def __init__(self, fn: Callable[..., Any], *args: Any, threads: int | None = None, **kwargs: Any) -> None:
        super().__init__(fn, *args, **kwargs)
        self.threads = threads or max(1, (os.cpu_count() or 2) - 1)

    def _call(self, progress: Callable[..., None]) -> Any:
        ctx = background.context()
        events, stop = ctx.Queue(), ctx.Event()
        name = f"dclabel-{getattr(self.fn, '__name__', 'job')}"
        proc = ctx.Process(target=background.run_job, name=name, daemon=True,
                           args=(self.fn, self.args, self.kwargs, events, stop, self.threads))
        proc.start()
        lower_priority(proc.pid)  # forked from the niced server already; a spawned child before its imports
        try:
            while True:
                if self.cancel_event.is_set():
                    stop.set()
                try:
                    kind, *payload = events.get(timeout=0.1)
                except queue.Empty:
                    if proc.is_alive():
                        continue
                    try:  # the last message may still be in the pipe
                        kind, *payload = events.get(timeout=1.0)
                    except queue.Empty:
                        raise RuntimeError(f"the background process {name} ended (exit code {proc.exitcode}) "
                                           "without a result; see the terminal for its output.") from None
                if kind == "progress":
                    progress(*payload)
                elif kind == "error":
                    raise payload[0]
                else:
                    return payload[0]
        finally:
            if proc.is_alive():
                stop.set()
                proc.join(10)
            if proc.is_alive():
                proc.terminate()
            proc.join()
