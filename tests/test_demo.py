"""`lifelong demo` end to end on the embedded broker (scikit-learn's digits, to stay quick)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lifelong.daemon.cli import main

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_the_demo_learns_without_forgetting_rolls_back_and_writes_its_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], clean_env: None
) -> None:
    report = tmp_path / "report"
    code = main(
        [
            "demo",
            "--dataset",
            "split-digits",
            "--state-dir",
            str(tmp_path / "state"),
            "--report-dir",
            str(report),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "POST /rollback" in out and "final_avg_accuracy" in out
    summary = json.loads((report / "summary.json").read_text())
    assert summary["dataset"] == "split-digits"
    assert summary["rollback_demonstrated"] is True
    assert summary["rollback"]["to"] == summary["rollback"]["from"] - 1
    assert summary["versions_promoted"] >= 5  # one per task at least
    assert summary["dead_letters"] == 4
    matrix = summary["accuracy_matrix"]
    assert len(matrix) == 5 and all(len(row) == 5 for row in matrix)
    # Replay and EWC against plain fine-tuning on the same stream: it keeps the old tasks.
    assert summary["final_avg_accuracy"] > summary["naive_final_avg_accuracy"] + 0.3
    assert summary["forgetting"] < summary["naive_forgetting"]
    for name in ("index.html", "accuracy_matrix.png", "task_accuracy.png", "live_accuracy.png", "memory.png"):
        assert (report / name).stat().st_size > 1000, name
    page = (report / "index.html").read_text()
    assert "live_accuracy.png" in page and str(summary["final_avg_accuracy"]) in page
