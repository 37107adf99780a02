"""The controller's round rules, on a stand-in updater (the real one is in test_update.py)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from lifelong.daemon.control import Controller
from lifelong.errors import RoundDeferred
from lifelong.monitor.live import LiveAccuracy
from lifelong.monitor.metrics import Metrics


class Trained:
    """Just what the controller asks an updater before a round."""

    def __init__(self, cursor: int, waiting: int = 0) -> None:
        self.cursor = cursor
        self.waiting = waiting

    def pending(self) -> int:
        return self.waiting

    def load_champion(self) -> bool:
        return False

    def run_round(self, *, stop: object) -> None:
        raise RoundDeferred("update round deferred: too few held-out samples to judge")

    def state(self) -> tuple[None, None]:
        return None, None

    def take_fallbacks(self) -> list[object]:
        return []


def controller(cursor: int) -> Controller:
    return Controller(
        updater=Trained(cursor),  # type: ignore[arg-type]
        metrics=Metrics(registry=CollectorRegistry()),
        live=LiveAccuracy(),
        min_new_labels=1000,
        first_round_labels=100,
        drift_min_labels=50,
    )


def test_a_young_model_rounds_double_its_data_up_to_min_new_labels() -> None:
    needed = [controller(cursor).labels_needed("interval") for cursor in (0, 100, 300, 999, 1000, 50_000)]
    assert needed == [100, 100, 300, 999, 1000, 1000]
    assert controller(50_000).labels_needed("cron") == 1000
    assert controller(0).labels_needed("drift") == 50
    assert controller(50_000).labels_needed("burst") == 1


def test_after_a_deferred_round_the_next_waits_for_new_labels() -> None:
    control = controller(5000)
    updater: Trained = control.updater  # type: ignore[assignment]
    updater.waiting = 1200
    assert control.due("interval")
    assert control.run_round("interval") is None and control.counts["deferred"] == 1
    assert not control.due("interval") and not control.due("drift")
    updater.waiting = 1260
    assert control.due("drift") and not control.due("interval")
    updater.waiting = 2200
    assert control.due("interval")
    updater.cursor = 6000  # a round was recorded since: the deferral is over
    updater.waiting = 1000
    assert control.due("interval")
