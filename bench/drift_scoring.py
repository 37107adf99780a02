"""Scoring for bench/drift.py: prequential accuracy, accuracy and recovery after each change, spreads."""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np
from drift_streams import Stream

WINDOW = 200  # the rolling accuracy that must recover after a change ...
BEFORE = 1000  # ... to within TOLERANCE of its level on this many samples before it
TOLERANCE = 0.05


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, min and max over seeds (null entries, e.g. a change never recovered from, are left out)."""
    found = [v for v in values if v is not None]
    out: dict[str, Any] = {"values": [None if v is None else round(v, 4) for v in values]}
    if found:
        out |= {"mean": round(statistics.fmean(found), 4), "min": round(min(found), 4)}
        out["max"] = round(max(found), 4)
    else:
        out |= {"mean": None, "min": None, "max": None}
    if len(found) < len(values):
        out["null"] = len(values) - len(found)
    return out


def recovery(right: np.ndarray[Any, Any], at: int, start: int, end: int) -> int | None:
    """Samples after the change at ``at`` until the last WINDOW's accuracy is back near its level before.

    The level: accuracy on the BEFORE samples before ``at`` (from ``start``, the previous change,
    at most). None when the rolling accuracy never gets within TOLERANCE of it before ``end``.
    """
    reference = right[max(start, at - BEFORE) : at]
    if len(reference) < WINDOW or end - at < WINDOW:
        return None
    level = float(reference.mean())
    total = np.concatenate([[0], np.cumsum(right[at:end], dtype=np.int64)])
    rolling = (total[WINDOW:] - total[:-WINDOW]) / WINDOW  # rolling[k]: samples at+k .. at+k+WINDOW-1
    back = np.flatnonzero(rolling >= level - TOLERANCE)
    return None if not len(back) else int(back[0]) + WINDOW


def score(
    predicted: np.ndarray[Any, Any], stream: Stream, *, daemon: np.ndarray[Any, Any] | None = None
) -> dict[str, Any]:
    """One model's prequential figures on one seed's stream (``daemon``: the daemon's predictions)."""
    right = predicted == stream.y
    covered = predicted >= 0
    served = covered if daemon is None else daemon >= 0
    changes = stream.abrupt
    bounds = [0, *changes, len(right)]
    after = []
    for k, at in enumerate(changes):
        end = bounds[k + 2]
        after.append(
            {
                "accuracy": float(right[at:end].mean()),
                "recovery": recovery(right, at, bounds[k], end),
            }
        )
    return {
        "accuracy": float(right.mean()),
        "accuracy_predicted": float(right[covered].mean()) if covered.any() else None,
        # On the samples the daemon predicted: quality apart from coverage.
        "accuracy_where_lifelong_predicted": float(right[served].mean()) if served.any() else None,
        "coverage": float(covered.mean()),
        "after_drift": after,
    }


def summarize(runs: list[dict[str, Any]], stream: Stream) -> dict[str, Any]:
    """Seeds folded into spreads."""
    out: dict[str, Any] = {
        key: spread([r[key] for r in runs])
        for key in ("accuracy", "accuracy_predicted", "accuracy_where_lifelong_predicted", "coverage")
    }
    out["after_drift"] = [
        {
            "at": at,
            "accuracy": spread([r["after_drift"][k]["accuracy"] for r in runs]),
            "recovery": spread([r["after_drift"][k]["recovery"] for r in runs]),
        }
        for k, at in enumerate(stream.abrupt)
    ]
    return out


def wins(lifelong: dict[str, Any], baselines: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Whether the daemon's mean accuracy is at least every baseline's, overall and after each change."""
    best = max(baselines, key=lambda name: baselines[name]["accuracy"]["mean"])
    overall = lifelong["accuracy"]["mean"] >= max(b["accuracy"]["mean"] for b in baselines.values())
    after = [
        drift["accuracy"]["mean"] >= max(b["after_drift"][k]["accuracy"]["mean"] for b in baselines.values())
        for k, drift in enumerate(lifelong["after_drift"])
    ]
    return {"wins": overall and all(after), "best_baseline": best, "overall": overall, "after_drift": after}


def table(result: dict[str, Any]) -> str:
    """The headline figures, one line per stream (means over seeds)."""

    def mean(spread_: dict[str, Any]) -> str:
        value = spread_["mean"]
        return "  -  " if value is None else f"{value:.3f}"

    lines = [
        f"{'stream':<11} {'lifelong':>8} {'best river':>22} {'coverage':>8}  post-change (lifelong/best)"
    ]
    for name, s in result["streams"].items():
        best = s["baselines"][s["best_baseline"]]
        post = " ".join(
            f"{mean(d['accuracy'])}/{mean(best['after_drift'][k]['accuracy'])}"
            for k, d in enumerate(s["lifelong"]["after_drift"])
        )
        lines.append(
            f"{name:<11} {mean(s['lifelong']['accuracy']):>8} "
            f"{s['best_baseline'] + ' ' + mean(best['accuracy']):>22} {mean(s['lifelong']['coverage']):>8}  "
            f"{post or ('(gradual)' if s['drifts'] else '(none known)')}{'  WINS' if s['wins'] else ''}"
        )
    return "\n".join(lines)


def reason_kind(reason: str | None) -> str:
    """A gate reason with its numbers masked, so reasons of one kind count together."""
    return re.sub(r"\d+(\.\d+)?", "#", reason or "(none)")
