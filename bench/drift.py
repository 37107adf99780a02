"""The daemon on drifting tabular streams with delayed labels, against River in the same run.

    python bench/drift.py --json                  # every stream, seeds 0 and 1 (about 5 minutes on 2 cores)
    python bench/drift.py --streams sine,stagger --seeds 0 --json
    python bench/drift.py --quick --json          # tiny streams, for the test

Each stream goes through the daemon's own path, in process: samples are
produced **unlabeled** onto an in-memory bus (the same seams as Kafka), and
each sample's label arrives as a feedback event ``--delay`` samples later
(default 500). The daemon runs with ``[monitor] publish_predictions = true``:
it predicts every sample on arrival with the version serving then, and the
harness scores each published prediction against the sample's label
(prequential: test, then train). Rounds come from the daemon's own triggers:
the interval schedule (every second, once ``--round`` labels wait) and drift
alarms (``[schedule] on_drift``, with its default cooldown). Every other
setting is the daemon's default except the stream's shape (``[data] features``,
``max_classes``); ``LIFELONG_*`` environment variables still apply on top, to
compare settings. The harness waits until ``daemon.readiness()`` (what
``/readyz`` answers) says ready, then produces.

Results do not depend on the machine's speed: the producer is paced as the
demo paces it. After each chunk of ``--chunk`` samples (and the labels due by
then) it waits until the daemon has handled every event sent (predictions
published, drift signals fed), until no drift-triggered round is due or
running, until fewer than a round's labels wait or a scheduled round that
began after all of it has ended (the daemon may defer a round: its labels
then wait), and until the online heads have taken in every label stored, so
rounds and heads learn at the same point of the stream on any machine. It
waits on those signals, never on fixed sleeps. (Wall-clock settings such as
``drift_cooldown_s`` and ``alarm_hold_s`` still count seconds.)

The baselines, in the same run on the same stream and the same delay: River's
``forest.ARFClassifier``, ``tree.HoeffdingAdaptiveTreeClassifier`` and
``preprocessing.StandardScaler() | linear_model.LogisticRegression()``
(one-vs-rest for more than two classes). Each predicts a sample on arrival
(``predict_one``) and learns it (``learn_one``) when its label arrives,
``--delay`` samples later, and knows what the daemon knows when it predicts:
the samples of a chunk are predicted before the labels produced with them are
learned (the daemon receives them together, so its effective delay is
``--delay`` to ``--delay + --chunk - 1``, and so is River's).
``--per-sample-baselines`` lets River learn every label before the next sample
instead (it then knows up to ``--chunk - 1`` more labels than the daemon).

Streams (River's generators, seeded; a few features of the synthetic ones are
multiplied by 1e3-1e5 to mimic raw units, the same values for River and the
daemon): ``hyperplane`` (gradual drift of two weights at every sample),
``sine`` (abrupt: four segments with SINE1, SINE2, reversed SINE1, reversed
SINE2, plus two noise features), ``stagger`` (abrupt, categorical codes: its
three concepts in turn), ``led`` (ten classes, 24 binary features: 0, 3 and 6
digit segments swapped with irrelevant features in turn), and River's bundled
``phishing`` and ``bananas``, whole (no known drift points; the same data for
every seed, which then seeds only River's models). The drift points are in the
JSON.

Reported per stream and model, as mean/min/max over the seeds:

* ``accuracy``: prequential accuracy over every sample; a sample with no
  prediction (nothing serving yet) counts as wrong. ``accuracy_predicted``:
  over the samples the model predicted; ``accuracy_where_lifelong_predicted``:
  over the samples the daemon predicted (quality apart from coverage).
* ``after_drift``: for each abrupt change, accuracy on the samples from the
  change to the next change (or the end), and ``recovery``: the samples from
  the change until the accuracy over the last 200 samples is back within 0.05
  of the model's accuracy on the 1,000 samples before the change (at least
  200; null when it never is before the next change).
* ``coverage``: the share of samples predicted (all of them were produced
  after ``/readyz``); for the daemon also ``coverage_after_first_version``.
* the daemon's versions promoted, rejected and rolled back, and the gate's
  reason for each version (``runs[].versions``; ``rejection_reasons`` counts
  the reasons with their numbers masked).
* ``wins``: the daemon's mean accuracy is at least the best River model's,
  overall and after every abrupt change.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from drift_scoring import BEFORE, TOLERANCE, WINDOW, reason_kind, score, spread, summarize, table, wins
from drift_streams import BASELINES, STREAMS, Stream, make_stream, run_river

from lifelong.config import Settings, load_settings
from lifelong.connectors.memory import MemoryBus
from lifelong.daemon.app import Daemon
from lifelong.daemon.ingest import Handoff
from lifelong.daemon.wiring import build_daemon, memory_connectors
from lifelong.events import encode_feedback, encode_sample
from lifelong.memory.samples import Stored

log = logging.getLogger("bench.drift")

SETTLE_TIMEOUT_S = 900.0  # one chunk; only a stuck daemon takes this long


# -- the daemon -------------------------------------------------------------------------------------


def produce_all(bus: MemoryBus, records: Iterable[tuple[str, str, bytes]]) -> int:
    """Append every (topic, key, value) under the bus's lock: its reader wakes to the whole chunk."""
    with bus.appended:
        count = 0
        for topic, key, value in records:
            bus.produce(topic, value, key=key.encode())
            count += 1
    return count


def daemon_settings(stream: Stream, state_dir: Path, round_labels: int) -> Settings:
    """Defaults, the stream's shape, rounds once ``round_labels`` wait; ``LIFELONG_*`` variables on top."""
    environ = {
        "LIFELONG_DATA__FEATURES": str(stream.x.shape[1]),
        "LIFELONG_DATA__MAX_CLASSES": str(stream.classes),
        "LIFELONG_SCHEDULE__INTERVAL_S": "1",
        "LIFELONG_SCHEDULE__MIN_NEW_LABELS": str(round_labels),
    }
    environ |= {k: v for k, v in os.environ.items() if k.startswith("LIFELONG_")}
    environ |= {
        "LIFELONG_STATE__DIR": str(state_dir),
        "LIFELONG_MONITOR__PUBLISH_PREDICTIONS": "true",
        "LIFELONG_HTTP__ENABLED": "false",
    }
    return load_settings(None, environ=environ)


class Pacer:
    """Watches a daemon through its seams, so the producer can wait until it has caught up.

    ``observed``: events the daemon has stored and watched (predicted, scored, fed to the
    drift signals). ``drift_due``/``drift_done``: drift alarms that made a round due, and the
    latest of them whose round has run. ``attempted``: ``observed`` when the latest finished
    scheduled round began. Every scheduled round passes :meth:`_scheduled`.
    """

    def __init__(self, daemon: Daemon, round_labels: int, produced: Callable[[], int]) -> None:
        control, schedule = daemon.control, daemon.schedule
        if control is None or schedule is None:
            raise RuntimeError("the daemon has no update rounds ([learner] enabled = false?)")
        self.daemon = daemon
        self.control = control
        self.round_labels = round_labels
        self.produced = produced
        self.observed = 0
        self.drift_due = 0
        self.drift_done = 0
        self.attempted = 0
        self.drift_rounds_at: list[int] = []
        self.changed = threading.Condition()
        self.error: BaseException | None = None
        # Counted once observed (predicted, scored, drift fed), on the watchers' thread.
        handoff = daemon.ingestor.on_stored
        assert isinstance(handoff, Handoff)
        self._watch = handoff.observe
        handoff.observe = self._observe
        self._drift = control.drift
        control.drift = self._drift_alarm  # type: ignore[method-assign]
        self._run = schedule.run
        schedule.run = self._scheduled  # read when the schedule starts and at each trigger_now

    def _observe(self, stored: Stored) -> None:
        try:
            if self._watch is not None:
                self._watch(stored)
        finally:
            with self.changed:
                self.observed += sum(stored.events.values())
                self.changed.notify_all()

    def _drift_alarm(self, signals: list[str]) -> bool:
        due = self._drift(signals)
        if due:
            with self.changed:
                self.drift_due += 1
                self.drift_rounds_at.append(self.produced())
        return due

    def _scheduled(self, trigger: str) -> object:
        seen, observed = self.drift_due, self.observed
        try:
            return self._run(trigger)
        finally:
            with self.changed:
                if trigger == "drift":
                    self.drift_done = max(self.drift_done, seen)
                self.attempted = max(self.attempted, observed)
                self.changed.notify_all()

    def caught_up(self, sent: int) -> bool:
        control = self.control
        return (
            self.observed >= sent
            and self.drift_done >= self.drift_due
            and not control.running
            # A round is due: wait for it, or for one that saw every event and left labels waiting.
            and (not control.due("interval") or self.attempted >= sent)
            # The online heads have taken in every label stored (they follow on their own thread).
            and (self.daemon.online is None or not self.daemon.online.behind())
        )

    def settle(self, sent: int, alive: Callable[[], bool]) -> None:
        """Return once the daemon has handled ``sent`` events and trained what a round would."""
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        failed = self.control.counts.get("failed", 0)
        while not self.caught_up(sent):
            if self.error is not None or not alive():
                raise RuntimeError(f"the daemon stopped: {self.error!r}")
            if self.control.counts.get("failed", 0) > failed:
                raise RuntimeError("an update round failed; see the log")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the daemon did not catch up in {SETTLE_TIMEOUT_S:.0f}s: "
                    f"observed {self.observed}/{sent}, "
                    f"drift rounds {self.drift_done}/{self.drift_due}, running {self.control.running}, "
                    f"pending {self.control.updater.pending()}, last round saw {self.attempted}"
                )
            with self.changed:
                self.changed.wait(0.02)


@dataclass
class DaemonRun:
    """What one stream through the daemon produced."""

    predicted: np.ndarray[Any, Any]
    seconds: float
    ready_s: float
    versions: list[dict[str, Any]]
    drift_rounds_at: list[int]
    alarms: dict[str, int]
    rollbacks: dict[str, int]
    members: dict[str, float]  # each served member's own prequential accuracy on the samples it predicted


def run_daemon(stream: Stream, *, delay: int, round_labels: int, chunk: int) -> DaemonRun:
    """Stream samples unlabeled and their labels ``delay`` samples later; collect the predictions."""
    started = time.monotonic()
    n = len(stream.y)
    ids = [f"{stream.name}-{i}" for i in range(n)]
    with tempfile.TemporaryDirectory(prefix="lifelong-drift-") as directory, ExitStack() as stack:
        settings = daemon_settings(stream, Path(directory) / "state", round_labels)
        kafka = settings.kafka
        bus = MemoryBus()
        daemon = build_daemon(settings, stack, connectors=memory_connectors(settings, bus))
        produced = 0
        pacer = Pacer(daemon, round_labels, lambda: produced)

        def run() -> None:
            try:
                daemon.run()
            except BaseException as error:
                pacer.error = error
                raise

        thread = threading.Thread(target=run, name="lifelong-daemon", daemon=True)
        thread.start()
        while not daemon.readiness()[0]:  # what /readyz answers
            if not thread.is_alive():
                raise RuntimeError(f"the daemon stopped before it was ready: {pacer.error!r}")
            with pacer.changed:
                pacer.changed.wait(0.02)
        ready_s = time.monotonic() - started
        sent = 0
        timeline: list[tuple[float, int]] = [(time.time(), 0)]
        for start in range(0, n, chunk):
            end = min(start + chunk, n)
            records = [
                (kafka.samples_topic, ids[i], encode_sample(ids[i], stream.x[i], None))
                for i in range(start, end)
            ]
            records += [
                (kafka.feedback_topic, ids[j], encode_feedback(ids[j], int(stream.y[j])))
                for j in range(max(0, start - delay), max(0, end - delay))
            ]
            sent += produce_all(bus, records)
            produced = end
            timeline.append((time.time(), end))
            pacer.settle(sent, thread.is_alive)
        versions = daemon.versions()["versions"]
        control = pacer.control
        rollbacks = dict(control.rollbacks)
        members = {
            name: right / max(scored, 1) for name, (right, scored) in control.live.member_totals.items()
        }
        registry = daemon.metrics.registry if daemon.metrics is not None else None
        alarms = {
            signal: int(
                (registry.get_sample_value("lifelong_drift_alarms_total", {"signal": signal}) or 0)
                if registry is not None
                else 0
            )
            for signal in ("novelty", "label_shift", "accuracy")
        }
        daemon.stop()
        thread.join(timeout=120)
        predicted = np.full(n, -1, dtype=np.int64)
        index = {id: i for i, id in enumerate(ids)}
        for record in bus.records(kafka.predictions_topic):
            body = json.loads(record.value or b"{}")
            i = index.get(body.get("id"))
            if i is not None and predicted[i] < 0:  # the first prediction of a sample is its score
                predicted[i] = int(body["y"])
    times = [t for t, _ in timeline]
    for version in versions:
        # The stream position when the version was recorded: it predicts the samples after it.
        k = max(0, int(np.searchsorted(times, version["created_at"], side="right")) - 1)
        version["at"] = timeline[k][1]
    return DaemonRun(
        predicted=predicted,
        seconds=time.monotonic() - started,
        ready_s=ready_s,
        versions=versions,
        drift_rounds_at=pacer.drift_rounds_at,
        alarms=alarms,
        rollbacks=rollbacks,
        members=members,
    )


# -- figures ----------------------------------------------------------------------------------------


def daemon_figures(runs: list[DaemonRun], scores: list[dict[str, Any]], stream: Stream) -> dict[str, Any]:
    out = summarize(scores, stream)
    after_first = []
    for run in runs:
        first = min((v["at"] for v in run.versions if v["decision"] == "promoted"), default=None)
        covered = run.predicted[first:] >= 0 if first is not None else np.zeros(0, dtype=bool)
        after_first.append(float(covered.mean()) if len(covered) else None)
    out["coverage_after_first_version"] = spread(after_first)
    counts: dict[str, list[float | None]] = {"promoted": [], "rejected": [], "rolled_back": []}
    reasons: Counter[str] = Counter()
    for run in runs:
        decisions = Counter(v["decision"] for v in run.versions)
        counts["promoted"].append(decisions["promoted"])
        counts["rejected"].append(decisions["rejected"])
        counts["rolled_back"].append(sum(v["status"] == "rolled_back" for v in run.versions))
        reasons.update(reason_kind(v["reason"]) for v in run.versions if v["decision"] == "rejected")
    out["versions"] = {key: spread(values) for key, values in counts.items()}
    names = sorted({name for run in runs for name in run.members})
    out["members"] = {name: spread([run.members.get(name) for run in runs]) for name in names}
    out["rejection_reasons"] = dict(reasons.most_common())
    out["runs"] = [
        {
            "seconds": round(run.seconds, 1),
            "ready_s": round(run.ready_s, 2),
            "first_prediction_at": int(np.argmax(run.predicted >= 0)) if (run.predicted >= 0).any() else None,
            "drift_rounds_at": run.drift_rounds_at,
            "drift_alarms": run.alarms,
            "rollbacks": run.rollbacks,
            "versions": [
                {
                    "version": v["version"],
                    "at": v["at"],
                    "decision": v["decision"],
                    "status": v["status"],
                    "reason": v["reason"],
                    "rolled_back": (v.get("rolled_back") or {}).get("reason"),
                }
                for v in run.versions
            ],
        }
        for run in runs
    ]
    return out


def bench_stream(
    name: str,
    seeds: Sequence[int],
    *,
    delay: int,
    round_labels: int,
    chunk: int,
    quick: bool,
    baseline_chunk: int,
) -> dict[str, Any]:
    streams = [make_stream(name, seed, quick=quick) for seed in seeds]
    runs, lifelong_scores = [], []
    river_scores: dict[str, list[dict[str, Any]]] = {model: [] for model in BASELINES}
    river_seconds: dict[str, float] = dict.fromkeys(BASELINES, 0.0)
    for seed, stream in zip(seeds, streams, strict=True):
        run = run_daemon(stream, delay=delay, round_labels=round_labels, chunk=chunk)
        runs.append(run)
        lifelong_scores.append(score(run.predicted, stream))
        for model in BASELINES:
            predicted, seconds = run_river(model, stream, delay=delay, seed=seed, chunk=baseline_chunk)
            river_scores[model].append(score(predicted, stream, daemon=run.predicted))
            river_seconds[model] += seconds
        print(
            f"  {name} seed {seed}: {len(stream.y)} samples, daemon {run.seconds:.0f}s, accuracy "
            f"{lifelong_scores[-1]['accuracy']:.3f} (coverage {lifelong_scores[-1]['coverage']:.3f}); river "
            + ", ".join(f"{m} {river_scores[m][-1]['accuracy']:.3f}" for m in BASELINES),
            file=sys.stderr,
            flush=True,
        )
    first = streams[0]
    lifelong = daemon_figures(runs, lifelong_scores, first)
    baselines = {
        model: summarize(scores, first) | {"seconds": round(river_seconds[model], 1)}
        for model, scores in river_scores.items()
    }
    verdict = wins(lifelong, baselines)
    return {
        "samples": len(first.y),
        "features": int(first.x.shape[1]),
        "classes": first.classes,
        "scaled_features": {str(k): v for k, v in first.scaled.items()},
        "drifts": [{"at": d.at, "kind": d.kind, "detail": d.detail} for d in first.drifts],
        "seeds": list(seeds),
        "lifelong": lifelong,
        "baselines": baselines,
        "best_baseline": verdict.pop("best_baseline"),
        "wins": verdict.pop("wins"),
        "wins_detail": verdict,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--streams", default=",".join(STREAMS), help=f"comma-separated, of {', '.join(STREAMS)}"
    )
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1; --quick: 0)")
    parser.add_argument(
        "--delay", type=int, default=None, help="samples until a label arrives (500; --quick 100)"
    )
    parser.add_argument(
        "--round", type=int, default=None, help="labels that make a round due (500; --quick 200)"
    )
    parser.add_argument(
        "--chunk", type=int, default=100, help="samples produced before the daemon catches up"
    )
    parser.add_argument(
        "--per-sample-baselines",
        action="store_true",
        help="River learns every label before the next sample (default: per chunk, as the daemon sees them)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny streams, for a test")
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    parser.add_argument("--verbose", action="store_true", help="the daemon's INFO log on stderr")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr)
    if not args.verbose:  # "skipped: maximum number of running instances": the next interval will do
        logging.getLogger("apscheduler").setLevel(logging.ERROR)
    names = [s.strip() for s in args.streams.split(",") if s.strip()]
    unknown = sorted(set(names) - set(STREAMS))
    if unknown:
        parser.error(f"unknown stream(s) {', '.join(unknown)}; choose from {', '.join(STREAMS)}")
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1")).split(",")]
    delay = args.delay if args.delay is not None else (100 if args.quick else 500)
    round_labels = args.round if args.round is not None else (200 if args.quick else 500)
    if delay < 1 or round_labels < 1 or args.chunk < 1:
        parser.error("--delay, --round and --chunk must be positive")
    started = time.monotonic()
    result: dict[str, Any] = {
        "delay": delay,
        "round": round_labels,
        "chunk": args.chunk,
        "baselines_learn": "per sample" if args.per_sample_baselines else "per chunk",
        "seeds": seeds,
        "quick": args.quick,
        "baseline_models": BASELINES,
        "recovery": {"window": WINDOW, "before": BEFORE, "tolerance": TOLERANCE},
        "streams": {},
    }
    for name in names:
        result["streams"][name] = bench_stream(
            name,
            seeds,
            delay=delay,
            round_labels=round_labels,
            chunk=args.chunk,
            quick=args.quick,
            baseline_chunk=1 if args.per_sample_baselines else args.chunk,
        )
    result["wins_all"] = all(s["wins"] for s in result["streams"].values())
    result["seconds"] = round(time.monotonic() - started, 1)
    if not args.json:
        print(table(result))
    print(json.dumps(result, indent=None if args.json else 2, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
