"""End to end on the embedded broker: `lifelong run --burst`, dead letters, exactly once across kill -9."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from lifelong.connectors.headers import REASON, source_of
from lifelong.daemon.app import read_heartbeat
from lifelong.events import encode_feedback, encode_sample
from tests.kafka_setup import CLI
from tests.streams import FEATURES, MAX_CLASSES, expected_reasons, stream
from tests.waiting import wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def expected_labels(events) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """The first label a sample has (inline, else the first feedback); later different ones are held."""
    inline: dict[str, int] = {}
    feedback: dict[str, int] = {}
    for kind, key, value in events:
        if key.startswith(b"bad"):
            continue
        body = json.loads(value)
        if kind == "feedback":
            feedback.setdefault(body["id"], body["y"])
        elif body["y"] is not None:
            inline[body["id"]] = body["y"]
    return {f"s{i}": inline.get(f"s{i}", feedback.get(f"s{i}")) for i in range(1000)}  # type: ignore[misc]


def without_topic(offsets: dict[str, int]) -> dict[str, int]:
    return {
        f"{name.split('.')[0]}:{part.rsplit(':', 1)[1]}": value
        for name, value in offsets.items()
        for part in [name]
    }


def test_burst_stores_everything_once_and_dead_letters_the_rest(setup) -> None:  # type: ignore[no-untyped-def]
    run = setup("clean")
    events = list(stream(seed=1))
    run.produce(events)

    done = run.run("run", "--burst")
    assert done.returncode == 0, done.stderr
    assert "stopped after" in done.stderr
    status = run.status()
    assert (status["samples"], status["labeled"], status["waiting"]) == (1000, 1000, 0)
    assert status["dead_letters"] == 200
    assert status["dead_letters_by_reason"] == expected_reasons(seed=1)
    assert sum(status["offsets"].values()) == len(events)
    labels = expected_labels(events)
    assert run.labels() == labels
    counts: dict[str, int] = {}
    for y in labels.values():
        counts[str(y)] = counts.get(str(y), 0) + 1
    assert status["memory"] == {
        "size": 1000,
        "capacity": 10000,
        "policy": "class_balanced",
        "classes": counts,
    }

    committed = run.committed()
    assert {f"{tp.topic}:{tp.partition}": offset for tp, offset in committed.items()} == status["offsets"]

    letters = run.dead_letters()
    assert len(letters) == 200
    headers = [dict(letter.headers) for letter in letters]
    assert all(h[REASON].decode() in expected_reasons(seed=1) for h in headers)
    sources = {source_of(letter.headers) for letter in letters}
    assert len(sources) == 200 and all(s is not None and s[0] in (run.samples, run.feedback) for s in sources)

    # The burst ended with an update round: the first version, trained on what was labeled.
    assert "promoted=1 rejected=0" in done.stderr
    versions = json.loads(run.run("versions", "--json").stdout)
    assert [v["status"] for v in versions] == ["champion"]
    assert 800 < versions[0]["lineage"]["samples"] < 1000  # the held-out share is never trained on
    assert versions[0]["lineage"]["offsets"] == {key: [0, end] for key, end in status["offsets"].items()}

    again = run.run("run", "--burst")
    assert again.returncode == 0, again.stderr
    assert run.status() == status
    assert len(json.loads(run.run("versions", "--json").stdout)) == 1  # no new labels, no new round
    assert len(run.dead_letters()) == 200

    forget = run.run("forget", "s1", "s2", "nobody")
    assert forget.returncode == 0, forget.stderr
    assert json.loads(forget.stdout) == {"forgotten": ["s1", "s2"], "not_found": ["nobody"]}
    after = run.status()
    assert (after["samples"], after["memory"]["size"]) == (998, 998)
    assert "s1" not in run.labels()


def test_burst_dead_letters_deeply_nested_messages_and_reads_on(setup) -> None:  # type: ignore[no-untyped-def]
    run = setup("deep")
    zeros = ",".join(["0"] * FEATURES).encode()
    deep_sample = b'{"id": "deep", "x": [%s], "meta": {"a": %s}}' % (zeros, b"[" * 2000 + b"]" * 2000)
    deep_feedback = b'{"id": "g1", "y": 0, "extra": %s}' % (b'{"a": ' * 2000 + b"1" + b"}" * 2000)
    good = [("samples", f"g{i}".encode(), encode_sample(f"g{i}", [0.5] * FEATURES, i)) for i in range(4)]
    run.produce(
        [
            *good[:2],
            ("samples", b"deep", deep_sample),
            *good[2:],
            ("feedback", b"g1", encode_feedback("g1", MAX_CLASSES - 1)),
            ("feedback", b"g1", deep_feedback),
            ("feedback", b"g2", encode_feedback("g2", MAX_CLASSES - 1)),
        ]
    )
    # Room for the deep messages, so that depth and not size rejects them.
    env = {**os.environ, "LIFELONG_DATA__MAX_MESSAGE_BYTES": str(1 << 16)}

    done = run.run("run", "--burst", env=env)
    assert done.returncode == 0, done.stderr
    status = run.status()
    assert (status["samples"], status["dead_letters_by_reason"]) == (4, {"too_deep": 2})
    # Feedback changing an inline label waits for corroboration ([data] relabels = "hold").
    assert run.labels() == {"g0": 0, "g1": 1, "g2": 2, "g3": 3}
    letters = run.dead_letters()
    assert sorted(letter.value for letter in letters) == sorted([deep_sample, deep_feedback])
    assert [dict(letter.headers)[REASON] for letter in letters] == [b"too_deep", b"too_deep"]
    assert {source_of(letter.headers)[0] for letter in letters} == {run.samples, run.feedback}  # type: ignore[index]


def wait_running(daemon: subprocess.Popen[bytes], heartbeat: Path, log: Path) -> None:
    """Until the heartbeat says this daemon process is running (its consumer loop started)."""

    def running() -> bool:
        beat = read_heartbeat(heartbeat) or {}
        return daemon.poll() is None and beat.get("pid") == daemon.pid and beat.get("state") == "running"

    wait_for(running, timeout_s=120, what=lambda: f"exit {daemon.poll()}: {log.read_text()[-2000:]}")


def test_kill_9_three_times_changes_nothing(setup) -> None:  # type: ignore[no-untyped-def]
    events = list(stream(seed=2))
    reference = setup("reference")
    reference.produce(events)
    assert reference.run("run", "--burst").returncode == 0
    expected = reference.status()

    killed = setup("killed")
    rng = random.Random(7)
    env = {**os.environ, "LIFELONG_KAFKA__MAX_POLL_RECORDS": "25"}
    stored_at_kill = []
    cut = len(events) // 3
    thirds = [
        events[:cut],
        events[cut : 2 * cut],
        events[2 * cut :],
    ]  # in order: feedback order decides labels
    for attempt, chunk in enumerate(thirds):
        log = killed.state.parent / f"killed-{attempt}.log"
        with open(log, "w") as stderr:
            daemon = subprocess.Popen([*CLI, "run", "--config", str(killed.config)], env=env, stderr=stderr)
        # Start-up (importing torch and Avalanche) takes seconds on a busy machine: produce and kill
        # only once this process's heartbeat says it is running, so each kill lands mid-stream.
        wait_running(daemon, killed.state / "HEARTBEAT", log)
        producer = threading.Thread(target=killed.produce, args=(chunk, 25, 0.1))
        producer.start()
        time.sleep(rng.uniform(1.5, 3.0))
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
        producer.join()
        if killed.state.exists():
            stored_at_kill.append(killed.status()["samples"])
    # The kills must have landed mid-stream for this test to mean anything.
    assert any(0 < count < 1000 for count in stored_at_kill), stored_at_kill
    final = killed.run("run", "--burst", env=env)
    assert final.returncode == 0, final.stderr

    status = killed.status()
    for key in ("samples", "labeled", "waiting", "dead_letters", "dead_letters_by_reason", "memory"):
        assert status[key] == expected[key], key
    assert without_topic(status["offsets"]) == without_topic(expected["offsets"])
    assert killed.labels() == reference.labels()
    assert len(killed.dead_letters()) == 200
