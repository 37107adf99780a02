"""The learning benchmark runs end to end on the bundled digits and reports what the issue asks for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lifelong.benchmarks import forgetting

ROOT = Path(__file__).resolve().parent.parent


def test_forgetting_is_the_drop_from_each_earlier_tasks_best_before_the_end() -> None:
    matrix = [
        [0.9, 0.1, 0.0],
        [0.7, 0.8, 0.1],
        [0.6, 0.9, 0.9],
    ]
    # Task 0 fell from 0.9 to 0.6, task 1 rose to its best at the end (no forgetting: -0.1 counts).
    assert forgetting(matrix) == pytest.approx(((0.9 - 0.6) + (0.8 - 0.9)) / 2)
    assert forgetting(matrix[:1]) == 0.0


@pytest.mark.slow
def test_learning_bench_on_split_digits(tmp_path: Path) -> None:
    plot = tmp_path / "matrix.png"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "learning.py"),
            "--scenario",
            "split-digits",
            "--round",
            "100",
            "--json",
            "--plot",
            str(plot),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert {
        "scenario",
        "memory",
        "final_avg_accuracy",
        "avg_forgetting",
        "accuracy_matrix",
        "baselines",
    } <= set(result)
    assert set(result["baselines"]) == {
        "naive",
        "avalanche_replay",
        "avalanche_er_ace",
        "avalanche_der",
        "avalanche_gdumb",
        "lda_rff",
        "joint",
    }
    # Avalanche's replay strategies replay: each round is an experience of one stream (ER_ACE replays
    # only from the second experience on; GDumb's model is the one it retrained).
    baselines = result["baselines"]
    assert min(baselines["avalanche_er_ace"], baselines["avalanche_gdumb"]) > baselines["naive"] + 0.2
    # What is served is the members' vote; each member is reported, the forgetting-free head too.
    assert {"served", "network", "lda"} <= set(result["members"])
    assert result["members"]["served"] == result["final_avg_accuracy"]
    matrix = result["accuracy_matrix"]
    assert len(matrix) == 5 and all(len(row) == 5 for row in matrix)
    assert all(0.0 <= a <= 1.0 for row in matrix for a in row)
    # Class-incremental: naive fine-tuning forgets the earlier tasks; replay + EWC does not.
    assert result["final_avg_accuracy"] > result["baselines"]["naive"] + 0.3
    assert result["avg_forgetting"] < result["baseline_forgetting"]["naive"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_drift_bench_quick_scores_the_daemon_and_every_river_baseline() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "drift.py"), "--quick", "--streams", "sine,phishing", "--json"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["delay"] == 100 and result["seeds"] == [0]
    assert set(result["streams"]) == {"sine", "phishing"}
    assert [d["at"] for d in result["streams"]["sine"]["drifts"]] == [400, 800, 1200]
    for stream in result["streams"].values():
        assert {"seeds", "lifelong", "baselines", "drifts", "wins", "best_baseline"} <= set(stream)
        assert set(stream["baselines"]) == {"arf", "hat", "scaled_logreg"}
        assert isinstance(stream["wins"], bool) and stream["best_baseline"] in stream["baselines"]
        abrupt = [d["at"] for d in stream["drifts"] if d["kind"] == "abrupt"]
        for model in [stream["lifelong"], *stream["baselines"].values()]:
            assert 0.0 <= model["accuracy"]["mean"] <= 1.0
            assert 0.0 < model["coverage"]["mean"] <= 1.0
            assert [d["at"] for d in model["after_drift"]] == abrupt
            assert all(0.0 <= d["accuracy"]["mean"] <= 1.0 for d in model["after_drift"])
        lifelong = stream["lifelong"]
        assert lifelong["versions"]["promoted"]["mean"] >= 1
        versions = lifelong["runs"][0]["versions"]
        assert versions and all(v["reason"] and v["decision"] in ("promoted", "rejected") for v in versions)


def test_river_baselines_know_what_the_daemon_knows_when_it_predicts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from drift_streams import make_stream, run_river

    stream = make_stream("sine", 0, quick=True)
    # ARF predicts nothing before its first label: which samples it predicted shows when it learned.
    per_chunk, _ = run_river("arf", stream, delay=5, seed=0, chunk=10)
    per_sample, _ = run_river("arf", stream, delay=5, seed=0)
    assert (per_chunk[:10] == -1).all()  # the labels of samples 0-4 came with samples 5-9: learned after
    assert (per_chunk[10:] >= 0).all()
    assert (per_sample[:6] == -1).all() and (per_sample[6:] >= 0).all()  # label 0 learned before sample 6


def test_update_bench_times_the_round_plain_torch_and_the_online_heads() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "update.py"), "--samples", "200", "--repeats", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["samples"] == 200
    for key in ("round_seconds", "plain_torch_seconds", "heads_seconds"):
        assert result[key] > 0, key
    assert result["ratio"] == pytest.approx(result["round_seconds"] / result["plain_torch_seconds"])
    assert result["heads_per_round"] == pytest.approx(result["heads_seconds"] / result["round_seconds"])
