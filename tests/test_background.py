"""Background job processes: forked from a niced server that has torch and Lightning imported."""

from __future__ import annotations

import multiprocessing as mp
import os
import sys

import pytest

from loop import background


def _report(q) -> None:
    q.put({"preloaded": sorted(m for m in ("torch", "lightning", "model.train") if m in sys.modules),
           "nice": os.getpriority(os.PRIO_PROCESS, 0)})


@pytest.mark.skipif("forkserver" not in mp.get_all_start_methods(), reason="no forkserver on this platform")
def test_children_start_with_the_heavy_modules_imported_and_a_lower_priority():
    ctx = background.context()
    assert ctx.get_start_method() == "forkserver"
    q = ctx.Queue()
    p = ctx.Process(target=_report, args=(q,))
    p.start()
    got = q.get(timeout=120)
    p.join(30)
    assert p.exitcode == 0
    assert got["preloaded"] == ["lightning", "model.train", "torch"]  # and loop.ranking, model.detect, ...
    assert got["nice"] >= 10  # the window's process wins any contention for the CPU


def test_run_job_sends_progress_then_the_result_or_the_error():
    ctx = background.context()
    events, stop = ctx.Queue(), ctx.Event()
    p = ctx.Process(target=background.run_job, args=(_count, (3,), {}, events, stop, 1))
    p.start()
    got = [events.get(timeout=120) for _ in range(4)]
    p.join(30)
    assert got == [("progress", 1, 3, {}), ("progress", 2, 3, {}), ("progress", 3, 3, {}), ("result", 6)]

    p = ctx.Process(target=background.run_job, args=(_count, (-1,), {}, events, stop, 1))
    p.start()
    kind, exc = events.get(timeout=120)
    p.join(30)
    assert kind == "error" and isinstance(exc, ValueError) and "negative" in str(exc)


def _count(n: int, progress, cancel) -> int:
    if n < 0:
        raise ValueError(f"negative count {n}")
    for i in range(n):
        progress(i + 1, n)
    return sum(range(n + 1))


def test_background_processes_print_warnings_on_one_line(monkeypatch):
    import warnings

    from loop.background import one_line_warnings

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # restored afterwards
    one_line_warnings()
    text = warnings.formatwarning("checkpoint v3 is damaged; using v2", RuntimeWarning, "/x/registry.py", 200,
                                  "warnings.warn(...)")
    assert text == "dclabel: RuntimeWarning: checkpoint v3 is damaged; using v2\n"
    assert warnings.formatwarning("a note", UserWarning, "f.py", 1) == "dclabel: warning: a note\n"
