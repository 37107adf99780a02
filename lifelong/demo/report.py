"""The demo's report: PNG plots, an HTML page that shows them, and the summary numbers as JSON."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from lifelong.benchmarks import forgetting

SIGNALS = ("novelty", "label_shift", "accuracy")


@dataclass
class Timeline:
    """What the demo recorded as the stream went by (x axis: samples streamed)."""

    tasks: int
    # Each: streamed, version, live_accuracy, promoted, rejected, alarms {signal: count}, memory {class: n}.
    points: list[dict[str, Any]] = field(default_factory=list)
    # (streamed, version, accuracy on each task's probe set) whenever the serving version changed.
    evaluations: list[tuple[int, int, list[float]]] = field(default_factory=list)
    task_ends: list[int] = field(default_factory=list)


def write_report(
    directory: Path,
    *,
    dataset: str,
    matrix: list[list[float]],
    naive: list[list[float]],
    timeline: Timeline,
    versions: list[dict[str, Any]],
    rollback: dict[str, Any],
    dead_letters: int,
    memory: int,
    seconds: float,
) -> dict[str, Any]:
    """Write ``summary.json``, the plots and ``index.html`` into ``directory``; return the summary."""
    directory.mkdir(parents=True, exist_ok=True)
    last = timeline.points[-1] if timeline.points else {}
    statuses = [v["status"] for v in versions]
    summary: dict[str, Any] = {
        "dataset": dataset,
        "final_avg_accuracy": round(float(np.mean(matrix[-1])), 4) if matrix else None,
        "naive_final_avg_accuracy": round(float(np.mean(naive[-1])), 4) if naive else None,
        "forgetting": round(forgetting(matrix), 4),
        "naive_forgetting": round(forgetting(naive), 4),
        "versions_promoted": sum(s in ("promoted", "champion", "rolled_back") for s in statuses),
        "versions_rejected": statuses.count("rejected"),
        "drift_alarms": {s: int(last.get("alarms", {}).get(s, 0)) for s in SIGNALS},
        "live_accuracy": last.get("live_accuracy"),
        "dead_letters": dead_letters,
        "memory": memory,
        "rollback_demonstrated": rollback["after"] != rollback["before"] and rollback["after"] is not None,
        "rollback": {"from": rollback["before"], "to": rollback["after"]},
        "accuracy_matrix": [[round(a, 4) for a in row] for row in matrix],
        "naive_accuracy_matrix": [[round(a, 4) for a in row] for row in naive],
        "seconds": round(seconds, 1),
    }
    (directory / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plots = _plots(directory, matrix=matrix, naive=naive, timeline=timeline)
    (directory / "index.html").write_text(_page(summary, plots))
    return summary


def _plots(
    directory: Path, *, matrix: list[list[float]], naive: list[list[float]], timeline: Timeline
) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), layout="constrained")
    for ax, data, title in (
        (axes[0], matrix, "lifelong (replay + EWC)"),
        (axes[1], naive, "naive fine-tuning"),
    ):
        array = np.asarray(data) if data else np.zeros((1, timeline.tasks))
        image = ax.imshow(array, vmin=0, vmax=1, cmap="viridis")
        for (i, j), value in np.ndenumerate(array):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.6 else "black")
        ax.set(title=title, xlabel="test task", ylabel="after training task")
        ax.set_xticks(range(array.shape[1]))
        ax.set_yticks(range(array.shape[0]))
    fig.colorbar(image, ax=axes, shrink=0.8, label="accuracy")
    written.append(
        _save(
            fig,
            directory,
            "accuracy_matrix.png",
            "Accuracy matrix: each task's test accuracy after each task",
        )
    )

    fig, ax = plt.subplots(figsize=(10, 4.2), layout="constrained")
    if timeline.evaluations:
        xs = [e[0] for e in timeline.evaluations]
        for task in range(timeline.tasks):
            ax.step(xs, [e[2][task] for e in timeline.evaluations], where="post", label=f"task {task + 1}")
    ends = timeline.task_ends
    for task in range(timeline.tasks):
        ax.scatter(ends[: len(naive)], [r[task] for r in naive], marker="x", color=f"C{task}", s=25)
    for end in ends:
        ax.axvline(end, color="grey", lw=0.6, ls=":")
    ax.set(
        xlabel="samples streamed",
        ylabel="test accuracy",
        ylim=(0, 1.02),
        title="Accuracy on each task over the stream (x: naive fine-tuning at each task's end)",
    )
    ax.legend(loc="lower left", fontsize=8, ncol=timeline.tasks)
    written.append(_save(fig, directory, "task_accuracy.png", "Accuracy on each task as the stream goes by"))

    fig, ax = plt.subplots(figsize=(10, 4.2), layout="constrained")
    points = timeline.points
    xs = [p["streamed"] for p in points]
    ax.plot(
        xs,
        [np.nan if p["live_accuracy"] is None else p["live_accuracy"] for p in points],
        label="live accuracy",
    )
    for kind, color, marker in (("promoted", "green", "^"), ("rejected", "red", "v")):
        at = [p["streamed"] for prev, p in pairwise(points) if p[kind] > prev[kind]]
        ax.scatter(at, [1.01] * len(at), color=color, marker=marker, label=f"update {kind}", zorder=3)
    for n, signal in enumerate(SIGNALS):
        at = [p["streamed"] for prev, p in pairwise(points) if p["alarms"][signal] > prev["alarms"][signal]]
        for x in at:
            ax.axvline(x, color=f"C{n + 3}", lw=1, alpha=0.7)
        ax.plot([], [], color=f"C{n + 3}", label=f"drift alarm: {signal}")
    ax.set(
        xlabel="samples streamed",
        ylabel="prequential accuracy",
        ylim=(0, 1.05),
        title="Live accuracy (each sample predicted on arrival), updates and drift alarms",
    )
    ax.legend(loc="lower right", fontsize=8)
    written.append(_save(fig, directory, "live_accuracy.png", "Live accuracy with updates and drift alarms"))

    fig, ax = plt.subplots(figsize=(10, 4.2), layout="constrained")
    classes = sorted({int(c) for p in points for c in p["memory"]})
    if classes:
        counts = np.array([[p["memory"].get(c, p["memory"].get(str(c), 0)) for p in points] for c in classes])
        ax.stackplot(xs, counts, labels=[f"class {c}" for c in classes])
        ax.legend(loc="upper left", fontsize=8, ncol=5)
    ax.set(xlabel="samples streamed", ylabel="samples in memory", title="The rehearsal memory's class mix")
    written.append(_save(fig, directory, "memory.png", "The rehearsal memory's class mix over the stream"))
    plt.close("all")
    return written


def _save(fig: Any, directory: Path, name: str, caption: str) -> tuple[str, str]:
    fig.savefig(directory / name, dpi=110)
    return name, caption


def _page(summary: dict[str, Any], plots: list[tuple[str, str]]) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(json.dumps(v))}</td></tr>"
        for k, v in summary.items()
        if not k.endswith("matrix")
    )
    figures = "".join(
        f'<figure><img src="{name}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for name, caption in plots
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lifelong demo: {html.escape(summary["dataset"])}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; }}
th, td {{ text-align: left; padding: 3px 12px; border-bottom: 1px solid #ddd; }}
figure {{ margin: 2em 0; }} img {{ max-width: 100%; }} figcaption {{ color: #555; }}
.big {{ font-size: 1.4em; }}
</style></head><body>
<h1>lifelong demo: {html.escape(summary["dataset"])}</h1>
<p class="big">Final average accuracy <b>{summary["final_avg_accuracy"]}</b> with a {summary["memory"]}-sample
memory, against <b>{summary["naive_final_avg_accuracy"]}</b> for naive fine-tuning on the same stream.</p>
{figures}
<h2>Summary</h2><table>{rows}</table>
</body></html>
"""
