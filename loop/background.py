"""Child processes for training, export and ranking, forked from a warm server at a lower CPU priority.

A retraining round or an export runs in its own OS process so that neither its CPU work nor its
pure-Python stretches can stall the GUI. Started with ``spawn``, each such process first imports
torch, Lightning and the model code: 3-5 s of CPU on a 2-core machine, competing with the window's
software rendering exactly when the user has just pressed a button. Where the platform has it
(Linux, macOS), :func:`context` uses multiprocessing's ``forkserver`` instead, with those modules
preloaded: a server process imports them once, at :func:`warm_up` (the app calls it when a project
opens), and every later child is a fork of it that starts in about 10 ms. The server never runs a
torch operation, so its children start with no thread pools to inherit; they set their own thread
count. The server and hence its children run at :data:`model.runtime.CHILD_NICENESS`, and they
ignore Ctrl+C: the parent cancels its jobs (a terminal signals the whole process group).

Children forked from the server see the environment of the moment the server started, not later
changes made by the parent; nothing of dclabel's training or detection reads the environment.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import pickle
import signal
import threading
import warnings
from collections.abc import Callable
from typing import Any

from model.runtime import lower_priority

#: Imported once by the fork server, so that children start with them in memory.
PRELOAD = ("torch", "lightning", "model.train", "model.detect", "loop.ranking", "loop.retrain_worker",
           "loop.background")

_lock = threading.Lock()
_niced_server: int | None = None


def context() -> mp.context.BaseContext:
    """The multiprocessing context of background jobs: a warm ``forkserver`` (or ``spawn`` elsewhere).

    Starts the server at a lower priority if it is not running yet (see :func:`warm_up`).
    """
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    warm_up()
    return mp.get_context("forkserver")


def warm_up() -> None:
    """Start the fork server now, niced, so that it imports torch and the model code in the background.

    Returns at once (the imports happen in the server process). Idempotent; restarts a server that
    died. A no-op where ``forkserver`` is unavailable.
    """
    global _niced_server
    if "forkserver" not in mp.get_all_start_methods():
        return
    from multiprocessing import forkserver

    with _lock:
        forkserver.set_forkserver_preload(list(PRELOAD))
        with _sigint_ignored():  # inherited through exec: a Ctrl+C in the terminal goes to the parent
            forkserver.ensure_running()
        pid = getattr(forkserver._forkserver, "_forkserver_pid", None)  # no public accessor
        if pid is not None and pid != _niced_server:
            lower_priority(pid)  # its imports and every child it forks yield the CPU to the window
            _niced_server = pid


@contextlib.contextmanager
def _sigint_ignored():
    """Ignore SIGINT while starting the fork server (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def ignore_interrupts() -> None:
    """In a background child: leave Ctrl+C to the parent, which cancels the job cleanly.

    A terminal sends SIGINT to the whole process group; without this the child dies with a
    ``KeyboardInterrupt`` traceback while the parent is still cancelling it.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def one_line_warnings() -> None:
    """In a background process, print warnings as the command line does (``dclabel: warning: ...``),
    not with Python's file, line and source text."""
    def formatted(message, category, filename, lineno, line=None) -> str:
        kind = "warning" if category is UserWarning else category.__name__
        return f"dclabel: {kind}: {message}\n"

    warnings.formatwarning = formatted


def run_job(fn: Callable[..., Any], args: tuple, kwargs: dict, events: Any, stop: Any, threads: int) -> None:
    """Entry point of a background job's process: call ``fn`` and send its progress and outcome.

    ``fn`` is called as ``fn(*args, progress=..., cancel=stop.is_set, **kwargs)``. Puts
    ``("progress", done, total, info)`` tuples on ``events`` as it goes, then ``("result", value)``
    or ``("error", exception)`` (an unpicklable exception is sent as a RuntimeError with its type
    name and message).
    """
    import torch

    from model.runtime import tune_allocator

    ignore_interrupts()
    tune_allocator()
    torch.set_num_threads(threads)
    one_line_warnings()

    def progress(done: int, total: int, info: dict | None = None) -> None:
        events.put(("progress", int(done), int(total), dict(info or {})))

    try:
        result = fn(*args, progress=progress, cancel=stop.is_set, **kwargs)
    except BaseException as exc:  # sent back to the parent, raised there
        try:
            pickle.dumps(exc)
        except Exception:  # an unpicklable exception: keep its type name and message
            exc = RuntimeError(f"{type(exc).__name__}: {exc}")
        events.put(("error", exc))
    else:
        events.put(("result", result))
