"""GUI-free functions the ProcessJob tests run in a child process (importable without Qt)."""

from __future__ import annotations

import os
import time

from model.errors import Cancelled, LabelError


def count_up(n: int, progress=None, cancel=None) -> dict:
    for i in range(n):
        progress(i + 1, n, {"pid": os.getpid()})
    return {"n": n, "pid": os.getpid()}


def fail(progress=None, cancel=None) -> None:
    raise LabelError("no reviewed chips in project X: review some chips first.")


def wait_for_cancel(progress=None, cancel=None) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        progress(0, 1, {})
        if cancel():
            raise Cancelled("stopped")
        time.sleep(0.05)
    raise AssertionError("cancel never arrived")


def crash(progress=None, cancel=None) -> None:
    os._exit(3)
