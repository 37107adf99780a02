"""The chaos run, small: a fuzzed stream, a frozen broker and SIGKILLs lose and duplicate nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_fuzzed_stream_a_frozen_broker_and_sigkills_lose_nothing(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "chaos.py"),
            *("--messages", "1500", "--rate", "60", "--freeze-s", "12", "--kills", "1", "--seed", "7"),
            *("--keep", str(tmp_path / "chaos"), "--json"),
        ],
        capture_output=True,
        text=True,
        timeout=850,
        check=False,
        cwd=ROOT,
    )
    assert done.stdout.strip(), done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert (result["lost"], result["duplicated"], result["crashes"]) == (0, 0, 0), result
    assert done.returncode == 0
    assert result["dead_letters"] == result["dead_letters_with_reason"] > 0
    assert result["dead_letters_by_reason"].get("too_deep", 0) > 0
    assert result["forged_reason_headers"] == 0 and result["misjudged"] == {}
    assert result["stored_unexpected"] == 0 and result["dead_letters_naming_another_source"] == 0
    assert result["kills"]["during_round"] + result["kills"]["during_snapshot"] >= 1
    freeze = result["freeze"]
    assert freeze["health_failures"] == 0 and freeze["readiness_fell_after_s"] is not None
    assert freeze["ready_again_after_s"] is not None
