"""Chaos: the production daemon on the embedded broker through a fuzzed stream, a frozen broker, SIGKILLs.

    python bench/chaos.py --json                       # 10,000 messages, a 30 s freeze, 3 + 3 kills
    python bench/chaos.py --messages 1500 --rate 60 --freeze-s 12 --kills 1 --json  # the tests' quick run

One seeded stream goes to both topics: valid samples (scikit-learn's digits, some labeled
inline, the rest through feedback, some of it before its sample) and messages that break the
wire contract in every way the fuzzer knows (not JSON, JSON nested up to 100,000 deep in
``meta``, in unknown fields and in feedback, wrong lengths and types, huge numbers, bad labels,
bad base64, invalid UTF-8, null values, oversized ones, forged ``lifelong.*`` headers), plus
valid samples with random bytes flipped after their id. While it streams, the daemon runs as
in production (update rounds every second, memory snapshots every half second) and is:

- killed with SIGKILL while an update round runs (``lifelong_update_running`` is 1), and while
  a memory snapshot is being written (its draft directory exists), ``--kills`` times each,
  half before the freeze and half after, and restarted (``kills`` says how many landed);
- left with its broker frozen (SIGSTOP) for ``--freeze-s`` seconds: ``/healthz`` must answer 200
  all along and ``/readyz`` fall to 503, then come back.

Then it is stopped with SIGTERM (exit 0 expected) and a ``run --burst`` drains the rest. Every
record read must end either stored or dead-lettered, exactly once:

- ``lost``: records neither stored (samples: the store keeps each one's offset; feedback: its
  label is on its sample) nor dead-lettered;
- ``duplicated``: dead letters sent twice, records both stored and dead-lettered, and samples
  stored twice (the store's ``duplicates`` counter; every id in the stream is unique);
- ``crashes``: daemon exits that nobody asked for (not our SIGKILL, not 0 after SIGTERM);
- ``dead_letters_with_reason``: dead letters whose ``lifelong.reason`` is one of the daemon's
  reason codes (all of them, when the forged headers are kept out of ``lifelong.*``).

The script exits 1 when anything was lost or duplicated or the daemon crashed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KafkaTP

from lifelong.connectors.broker import EmbeddedBroker
from lifelong.connectors.kafka import ensure_topics
from lifelong.events import Reason

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package
from fuzz import MAX_MESSAGE_BYTES, Message, stream

FEATURES = 64
CLI = [sys.executable, "-m", "lifelong.daemon.cli"]

CONFIG = """
[kafka]
bootstrap_servers = "{bootstrap}"
samples_topic = "chaos.samples"
feedback_topic = "chaos.feedback"
dead_letter_topic = "chaos.dead"
models_topic = "chaos.models"
predictions_topic = "chaos.predictions"
topic_partitions = 2
[data]
features = {features}
max_classes = 10
max_message_bytes = {max_bytes}
[state]
dir = "{state}"
[memory]
capacity = 1000
snapshot_interval_s = 0.5
follow_interval_s = 0.2
[learner]
epochs = 2
device = "cpu"
model_options = {{ hidden = [64] }}
[schedule]
interval_s = 1
min_new_labels = 200
grace_s = 10
[http]
port = 0
admin_enabled = false
heartbeat_s = 1
heartbeat_stale_s = 15
"""


# -- the daemon ------------------------------------------------------------------------------------


class Daemon:
    """``lifelong run`` as a process, restarted after each kill."""

    def __init__(self, config: Path, state: Path, logs: Path) -> None:
        self.config = config
        self.state = state
        self.logs = logs
        self.process: subprocess.Popen[bytes] | None = None
        self.base = ""
        self.starts = 0
        self.crashes: list[str] = []

    def start(self) -> None:
        self.starts += 1
        log = self.logs / f"daemon-{self.starts}.log"
        with open(log, "wb") as stderr:
            self.process = subprocess.Popen([*CLI, "run", "--config", str(self.config)], stderr=stderr)
        self.base = ""
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.crashes.append(f"exited {self.process.returncode} at start: {log.read_text()[-2000:]}")
                return self.start() if len(self.crashes) < 5 else None
            try:
                beat = json.loads((self.state / "HEARTBEAT").read_text())
            except (OSError, ValueError):
                beat = {}
            if (
                beat.get("state") == "running"
                and beat.get("pid") == self.process.pid
                and beat.get("http_port")
            ):
                self.base = f"http://127.0.0.1:{beat['http_port']}"
                return None
            time.sleep(0.1)
        raise RuntimeError(f"the daemon did not start within 180 s: {log.read_text()[-2000:]}")

    def check(self) -> None:
        """Count an exit nobody asked for as a crash, and start again."""
        if self.process is not None and self.process.poll() is not None:
            log = self.logs / f"daemon-{self.starts}.log"
            self.crashes.append(f"exited {self.process.returncode}: {log.read_text()[-2000:]}")
            self.start()

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.start()

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=120)

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()
        except OSError as error:
            return 0, str(error)

    def metric(self, name: str) -> float | None:
        status, text = self.get("/metrics")
        if status != 200:
            return None
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None


def wait(condition: Any, timeout_s: float, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval_s)
    return False


# -- the run ---------------------------------------------------------------------------------------


class Producer:
    """Sends the stream on a thread at ``rate`` messages a second; pausable; records each offset."""

    def __init__(self, bootstrap: str, messages: list[Message], rate: float) -> None:
        self.messages = messages
        self.rate = rate
        # Each record's key (unique) -> the message and where it landed (offset -1 when a retried
        # send was deduplicated by the broker: kafka-python then never learns the offset).
        self.sent: dict[bytes, tuple[Message, tuple[str, int, int]]] = {}
        self.running = threading.Event()
        self.running.set()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap, linger_ms=5, acks="all", delivery_timeout_ms=600_000
        )
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def progress(self) -> float:
        return len(self.sent) / len(self.messages)

    def _run(self) -> None:
        try:
            self._send_all()
        except BaseException as error:
            self.error = error
            self.done.set()
            raise

    def _send_all(self) -> None:
        pending = []
        started = time.monotonic()
        for n, message in enumerate(self.messages):
            self.running.wait()
            delay = started + n / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            topic = "chaos.feedback" if message.feedback else "chaos.samples"
            key = f"k{n}".encode()  # a null value (a tombstone) needs a key
            future = self._producer.send(topic, message.value, key=key, headers=message.headers)
            pending.append((future, key, message))
            if len(pending) >= 200:
                self._settle(pending)
        self._settle(pending)
        self._producer.close()
        self.done.set()

    def _settle(self, pending: list[tuple[Any, bytes, Message]]) -> None:
        for future, key, message in pending:
            meta = future.get(timeout=600)
            self.sent[key] = (message, (meta.topic, meta.partition, meta.offset))
        pending.clear()


def kill_in_round(daemon: Daemon) -> bool:
    """SIGKILL while an update round runs; whether one was caught running."""
    if not wait(lambda: daemon.metric("lifelong_update_running") == 1, 60):
        return False
    daemon.kill()
    return True


def kill_in_snapshot(daemon: Daemon) -> bool:
    """SIGKILL while a memory snapshot's draft directory exists; whether one was caught."""
    snapshots = daemon.state / "memory" / "snapshots"

    def drafting() -> bool:
        try:
            return any(e.name.endswith(".tmp") for e in os.scandir(snapshots))
        except OSError:
            return False

    if not wait(drafting, 60, interval_s=0.0005):
        return False
    daemon.kill()
    return True


def freeze(broker: EmbeddedBroker, daemon: Daemon, seconds: float, producer: Producer) -> dict[str, Any]:
    """SIGSTOP the broker for ``seconds``: liveness must hold, readiness must fall and come back."""
    assert broker.pid is not None
    producer.running.clear()
    os.kill(broker.pid, signal.SIGSTOP)
    started = time.monotonic()
    fell_after = None
    health: Counter[int] = Counter()
    try:
        while time.monotonic() - started < seconds:
            health[daemon.get("/healthz")[0]] += 1
            if fell_after is None and daemon.get("/readyz")[0] == 503:
                fell_after = time.monotonic() - started
            time.sleep(0.25)
    finally:
        os.kill(broker.pid, signal.SIGCONT)
        producer.running.set()
    thawed = time.monotonic()
    ready = wait(lambda: daemon.get("/readyz")[0] == 200, 120, interval_s=0.25)
    return {
        "seconds": seconds,
        "readiness_fell_after_s": None if fell_after is None else round(fell_after, 2),
        "ready_again_after_s": round(time.monotonic() - thawed, 2) if ready else None,
        "health_answers": {str(k): v for k, v in sorted(health.items())},
        "health_failures": sum(v for k, v in health.items() if k != 200),
    }


def read_dead_letters(bootstrap: str) -> list[tuple[bytes | None, list[tuple[str, bytes]]]]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    partitions = [KafkaTP("chaos.dead", p) for p in sorted(consumer.partitions_for_topic("chaos.dead") or ())]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    ends = consumer.end_offsets(partitions)
    found: list[tuple[bytes | None, list[tuple[str, bytes]]]] = []
    deadline = time.monotonic() + 120
    while any(consumer.position(tp) < ends[tp] for tp in partitions) and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            found += [(r.key, list(r.headers)) for r in records]
    consumer.close()
    return found


def account(
    producer: Producer, state: Path, letters: list[tuple[bytes | None, list[tuple[str, bytes]]]]
) -> dict[str, Any]:
    """Every record produced ends stored or dead-lettered, once (records are known by their unique key)."""
    db = sqlite3.connect(f"file:{state / 'samples.sqlite'}?mode=ro", uri=True)
    stored = {
        id: (y, (t, p, o))
        for id, y, t, p, o in db.execute("SELECT id, y, topic, partition, offset FROM samples")
    }
    counters = dict(db.execute("SELECT name, value FROM counters"))
    db.close()
    reasons = {r.value for r in Reason}
    dead: Counter[bytes | None] = Counter()
    moved = 0  # dead letters whose source headers name another record than the key's
    by_reason: Counter[str] = Counter()
    with_reason = forged = 0
    for key, headers in letters:
        ours = dict((k, v) for k, v in headers if k.startswith("lifelong."))
        reason = ours.get("lifelong.reason", b"").decode("utf-8", "replace")
        by_reason[reason] += 1
        with_reason += reason in reasons
        forged += any(v == b"forged" for v in ours.values())
        dead[key] += 1
        sent = producer.sent.get(key or b"")
        if sent is not None and sent[1][2] >= 0:
            source = (
                ours.get("lifelong.source.topic", b"").decode(),
                int(ours.get("lifelong.source.partition", b"-1")),
                int(ours.get("lifelong.source.offset", b"-1")),
            )
            moved += source != sent[1]
    lost: list[str] = []
    duplicated = 0
    misjudged: Counter[str] = Counter()
    for key, (message, source) in producer.sent.items():
        if message.feedback:
            done = message.expect == "stored" and stored.get(message.id or "", (None,))[0] == message.label
        else:
            found = stored.get(message.id or "")
            done = found is not None and (source[2] < 0 or found[1] == source)
        outcome = "stored" if done else "rejected" if dead[key] else None
        if outcome is None:
            lost.append(key.decode())
            continue
        duplicated += (dead[key] > 1) + (done and dead[key] > 0)
        if message.expect != "either" and outcome != message.expect:
            misjudged[f"{message.expect}->{outcome}"] += 1
    known = {m.id for m, _ in producer.sent.values() if m.id is not None and not m.feedback}
    duplicated += int(counters.get("duplicates", 0))
    return {
        "lost": len(lost),
        "lost_examples": lost[:5],
        "duplicated": duplicated,
        "dead_letters": len(letters),
        "dead_letters_with_reason": with_reason,
        "dead_letters_by_reason": dict(sorted(by_reason.items())),
        "dead_letters_naming_another_source": moved,
        "forged_reason_headers": forged,
        "misjudged": dict(misjudged),
        "stored_unexpected": len(set(stored) - known),
        "samples_stored": len(stored),
        "offsets_unknown": sum(1 for _, source in producer.sent.values() if source[2] < 0),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000, help="messages in the fuzzed stream")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rate", type=float, default=150.0, help="messages produced per second")
    parser.add_argument("--freeze-s", type=float, default=30.0, help="how long the broker is frozen")
    parser.add_argument(
        "--kills", type=int, default=3, help="SIGKILLs during rounds, and again during snapshots"
    )
    parser.add_argument("--keep", type=Path, default=None, help="keep the state and logs in this directory")
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    args = parser.parse_args()
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))

    started = time.monotonic()
    messages = stream(args.messages, args.seed)
    with tempfile.TemporaryDirectory(prefix="lifelong-chaos-") as scratch, EmbeddedBroker() as broker:
        root = args.keep or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        state = root / "state"
        config = root / "chaos.toml"
        config.write_text(
            CONFIG.format(
                bootstrap=broker.bootstrap_servers,
                features=FEATURES,
                max_bytes=MAX_MESSAGE_BYTES,
                state=state,
            )
        )
        options = {"bootstrap_servers": broker.bootstrap_servers}
        ensure_topics(
            client_options=options,
            topics=["chaos.samples", "chaos.feedback", "chaos.dead", "chaos.models", "chaos.predictions"],
            partitions=2,
        )
        daemon = Daemon(config, state, root)
        daemon.start()
        producer = Producer(broker.bootstrap_servers, messages, args.rate)
        producer.start()
        kills = {"during_round": 0, "during_snapshot": 0, "attempts": 0}

        # Kills alternate between a round and a snapshot, half before the freeze and half after.
        plan = ["round", "snapshot"] * args.kills
        kill = {"round": kill_in_round, "snapshot": kill_in_snapshot}
        say(f"streaming {len(messages)} messages; SIGKILLs during rounds and snapshots")
        for kind in plan[: len(plan) // 2]:
            kills["attempts"] += 1
            kills[f"during_{kind}"] += kill[kind](daemon)
            daemon.check()
        wait(lambda: producer.progress() >= 0.5 or producer.done.is_set(), 600)
        say(f"freezing the broker for {args.freeze_s:g} s")
        frozen = freeze(broker, daemon, args.freeze_s, producer)
        daemon.check()
        for kind in plan[len(plan) // 2 :]:
            kills["attempts"] += 1
            kills[f"during_{kind}"] += kill[kind](daemon)
            daemon.check()
        while not producer.done.wait(1.0):
            daemon.check()
        daemon.check()
        if producer.error is not None:
            raise RuntimeError(f"the producer failed: {producer.error!r}") from producer.error
        say("stream sent; SIGTERM, then a burst to drain")
        sigterm = daemon.stop()
        burst = subprocess.run(
            [*CLI, "run", "--burst", "--config", str(config)], capture_output=True, text=True, timeout=1200
        )
        versions = subprocess.run(
            [*CLI, "versions", "--json", "--config", str(config)], capture_output=True, text=True, timeout=120
        )
        crashes = list(daemon.crashes)
        if sigterm != 0:
            crashes.append(f"SIGTERM exit {sigterm}")
        if burst.returncode != 0:
            crashes.append(f"burst exit {burst.returncode}: {burst.stderr[-2000:]}")
        if versions.returncode != 0:
            crashes.append(f"versions exit {versions.returncode}: {versions.stderr[-2000:]}")
        result: dict[str, Any] = account(producer, state, read_dead_letters(broker.bootstrap_servers))
        result = {
            "lost": result.pop("lost"),
            "duplicated": result.pop("duplicated"),
            "crashes": len(crashes),
            **result,
            "seed": args.seed,
            "messages": {
                "sent": len(producer.sent),
                "samples": sum(1 for m in messages if not m.feedback),
                "feedback": sum(1 for m in messages if m.feedback),
                "intended_bad": sum(1 for m in messages if m.expect == "rejected"),
                "mutated": sum(1 for m in messages if m.expect == "either"),
            },
            "kills": kills,
            "freeze": frozen,
            "sigterm_exit": sigterm,
            "daemon_starts": daemon.starts,
            "versions": len(json.loads(versions.stdout or "[]")),
            "crash_details": crashes[:3],
            "wall_s": round(time.monotonic() - started, 1),
        }
    print(json.dumps(result, indent=None if args.json else 2))
    ok = not (result["lost"] or result["duplicated"] or result["crashes"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
