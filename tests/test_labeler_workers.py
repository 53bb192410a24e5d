"""ProcessJob: a background job in its own process reports progress, results, errors and cancels."""

from __future__ import annotations

import os
import threading

import jobfns
import pytest

from labeler.workers import ProcessJob
from model.errors import Cancelled, LabelError


def test_result_and_progress_come_back_from_another_process():
    seen = []
    job = ProcessJob(jobfns.count_up, 5, threads=1)
    result = job._call(lambda done, total, info: seen.append((done, total, info["pid"])))
    assert result["n"] == 5 and result["pid"] != os.getpid()
    assert [d for d, _, _ in seen] == [1, 2, 3, 4, 5] and {p for _, _, p in seen} == {result["pid"]}


def test_error_arrives_with_its_type_and_message():
    with pytest.raises(LabelError, match="no reviewed chips in project X"):
        ProcessJob(jobfns.fail, threads=1)._call(lambda *a: None)


def test_cancel_stops_the_child_at_its_next_check():
    job = ProcessJob(jobfns.wait_for_cancel, threads=1)
    started = threading.Event()
    timer = threading.Thread(target=lambda: (started.wait(30), job.cancel()))
    timer.start()
    with pytest.raises(Cancelled):
        job._call(lambda *a: started.set())
    timer.join()


def test_a_child_that_dies_is_reported_not_waited_for():
    with pytest.raises(RuntimeError, match="exit code 3"):
        ProcessJob(jobfns.crash, threads=1)._call(lambda *a: None)


def test_stop_at_close_does_not_raise_when_a_job_outlasts_the_wait(qtbot):
    from labeler.workers import ProgressJob

    release = threading.Event()
    entered = threading.Event()

    def stubborn(progress, cancel):  # a long batch that checks cancel only after it
        entered.set()
        progress(0, 1)
        release.wait(30)
        return "late"

    job = ProgressJob(stubborn)
    results = []
    job.worker.returned.connect(results.append)
    job.start()
    # is_running turns True before the worker's first abort check: quitting then would end it
    # before the function starts, so wait for the function itself.
    qtbot.waitUntil(entered.is_set, timeout=10_000)
    assert job.stop(wait_ms=100) is False  # superqt would raise RuntimeError here
    assert job.cancel_event.is_set()
    release.set()
    qtbot.waitUntil(lambda: not job.worker.is_running, timeout=10_000)
    assert job.stop(wait_ms=100) is True
