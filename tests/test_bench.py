"""The learning benchmark runs end to end on the bundled digits and reports what the issue asks for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


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
    assert set(result["baselines"]) == {"naive", "avalanche_replay", "joint"}
    matrix = result["accuracy_matrix"]
    assert len(matrix) == 5 and all(len(row) == 5 for row in matrix)
    assert all(0.0 <= a <= 1.0 for row in matrix for a in row)
    # Class-incremental: naive fine-tuning forgets the earlier tasks; replay + EWC does not.
    assert result["final_avg_accuracy"] > result["baselines"]["naive"] + 0.3
    assert result["avg_forgetting"] < result["baseline_forgetting"]["naive"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
