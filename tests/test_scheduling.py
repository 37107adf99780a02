"""Scheduling (daemon/scheduling.py): interval and on-demand runs, one at a time; a bad cron names its key."""

from __future__ import annotations

import threading
import time
from functools import partial

import pytest

from lifelong.daemon.scheduling import Schedule, cron_trigger
from lifelong.errors import ConfigError
from tests import waiting


class Recorder:
    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.calls: list[str] = []
        self.running = 0
        self.most = 0
        self._lock = threading.Lock()

    def __call__(self, trigger: str) -> None:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(self.seconds)
        with self._lock:
            self.running -= 1
            self.calls.append(trigger)


wait_for = partial(waiting.wait_for, timeout_s=10.0, interval_s=0.02)


def test_interval_runs_repeat_and_a_trigger_runs_at_once() -> None:
    run = Recorder()
    schedule = Schedule(interval_s=0.2, cron="", run=run)
    schedule.start()
    try:
        wait_for(lambda: run.calls.count("interval") >= 2)
        schedule.trigger_now("drift")
        wait_for(lambda: "drift" in run.calls)
        assert schedule.next_run() is not None
    finally:
        schedule.shutdown()


def test_rounds_never_overlap() -> None:
    run = Recorder(seconds=0.3)
    schedule = Schedule(interval_s=0.05, cron="", run=run)
    schedule.start()
    try:
        for _ in range(5):
            schedule.trigger_now("drift")
            time.sleep(0.05)
        wait_for(lambda: len(run.calls) >= 3)
    finally:
        schedule.shutdown()
    assert run.most == 1


def test_no_interval_and_no_cron_runs_only_on_demand() -> None:
    run = Recorder()
    schedule = Schedule(interval_s=0, cron="", run=run)
    schedule.start()
    try:
        assert schedule.next_run() is None
        schedule.trigger_now("drift")
        wait_for(lambda: run.calls == ["drift"])
    finally:
        schedule.shutdown()


def test_cron_expressions_are_checked_at_start() -> None:
    assert cron_trigger("*/15 * * * *") is not None
    with pytest.raises(ConfigError, match=r"schedule\.cron"):
        Schedule(interval_s=0, cron="every tuesday", run=Recorder())
