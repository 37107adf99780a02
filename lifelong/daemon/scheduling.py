"""When update rounds run: APScheduler 3.x jobs on an interval and/or a cron expression, plus on demand.

The only module that imports APScheduler. Every job runs on one worker thread,
so two rounds never run at once, and a trigger that fires while a round runs
coalesces into one run after it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from lifelong.errors import ConfigError

log = logging.getLogger(__name__)


def cron_trigger(expression: str) -> CronTrigger:
    """A trigger from a crontab expression; a bad one fails naming ``schedule.cron``."""
    try:
        return CronTrigger.from_crontab(expression)
    except ValueError as error:
        raise ConfigError(f"schedule.cron: {error} (got {expression!r})") from None


class Schedule:
    """Calls ``run(trigger)`` on the configured schedule, and at once on :meth:`trigger_now`.

    Example::

        schedule = Schedule(interval_s=300, cron="", run=lambda trigger: print(trigger))
        schedule.start()
        schedule.trigger_now("drift")
        schedule.shutdown()
    """

    def __init__(self, *, interval_s: float, cron: str, run: Callable[[str], object]) -> None:
        if interval_s < 0:
            raise ValueError(f"interval_s must be >= 0, got {interval_s!r}")
        self.interval_s = interval_s
        self.cron = cron
        self.run = run
        self._cron_trigger = cron_trigger(cron) if cron else None
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            daemon=True,
        )

    def start(self) -> None:
        """Add the jobs and start the scheduler thread."""
        if self.interval_s > 0:
            self._scheduler.add_job(
                self.run, IntervalTrigger(seconds=self.interval_s), args=["interval"], id="interval"
            )
        if self._cron_trigger is not None:
            self._scheduler.add_job(self.run, self._cron_trigger, args=["cron"], id="cron")
        self._scheduler.start()

    def trigger_now(self, trigger: str) -> None:
        """Run once as soon as the worker is free (a pending one of the same trigger is replaced)."""
        if not self._scheduler.running:
            return
        self._scheduler.add_job(
            self.run,
            "date",
            run_date=datetime.now().astimezone() + timedelta(milliseconds=1),
            args=[trigger],
            id=f"now-{trigger}",
            replace_existing=True,
        )

    def next_run(self) -> datetime | None:
        """When the next scheduled round is due."""
        times = [job.next_run_time for job in self._scheduler.get_jobs() if job.next_run_time is not None]
        return min(times, default=None)

    def shutdown(self) -> None:
        """Stop scheduling; a round in progress is not waited for (the caller decides how long)."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
