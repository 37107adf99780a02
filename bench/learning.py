"""How well the learner learns without forgetting, against naive, Avalanche Replay and joint training.

    python bench/learning.py --scenario split-fashion-mnist --memory 500 --json

The stream arrives task by task in rounds of ``--round`` samples, each sample
seen once as it arrives. ``lifelong`` runs exactly what the daemon runs: the
online heads are scored on each label and then learn it (in batches of 100),
the rehearsal memory takes each round's samples, a candidate trains from the
champion on them with replay from the memory and the configured plugins, and
the evaluation gate promotes it or not; what is evaluated is what the daemon
serves, the members' weighted vote (each member's own accuracy is reported too).
The baselines run the same model, optimizer, rounds and batches: ``naive`` (no
replay, no plugins), Avalanche's own strategies with a memory of the same size
(``Replay`` with a class-balanced buffer, ``ER_ACE``, ``DER``, ``GDumb``),
``lda_rff`` (the forgetting-free baseline: streaming LDA on 2,048 random
Fourier features of the inputs, each sample once) and ``joint`` (every task's
data shuffled into one i.i.d. stream: the upper bound).

``permuted-fashion-mnist`` uses 20,000 training images per permutation unless
``--per-task`` says otherwise. Accuracies are fractions; ``accuracy_matrix[i][j]`` is the accuracy on task j's
test set after task i, of what is served. A PNG heat map of it
is written to ``--plot``.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lifelong.benchmarks import SCENARIOS, Scenario, forgetting, scenario
from lifelong.config import LearnerSettings, ScheduleSettings
from lifelong.labeled import Labeled
from lifelong.learners.avalanche import AvalancheLearner
from lifelong.learners.base import Learner, as_inputs, class_probabilities, most_likely
from lifelong.learners.configured import build_gate, build_heads
from lifelong.learners.ensemble import Hedge, Probes
from lifelong.learners.heads import Heads
from lifelong.learners.models import build_model
from lifelong.learners.trainer import Trainer
from lifelong.memory.rehearsal import RehearsalMemory


def learner(settings: LearnerSettings, sc: Scenario, **overrides: Any) -> AvalancheLearner:
    options = settings.learner_options() | overrides
    model = build_model(
        settings.model, features=sc.features, classes=sc.classes, options=settings.model_options
    )
    return AvalancheLearner(model=model, classes=sc.classes, **options)


def evaluate(model: Learner, sc: Scenario) -> list[float]:
    return [float((model.predict(t.test_x) == t.test_y).mean()) for t in sc.tasks]


def heads_for(settings: LearnerSettings, sc: Scenario, **overrides: Any) -> Heads:
    return build_heads(settings, features=sc.features, classes=sc.classes, **overrides)


def evaluate_members(
    sc: Scenario, heads: Heads, hedge: Hedge, network: Learner | None
) -> dict[str, list[float]]:
    """Each member's accuracy per task's test set, and the served vote's (``served``)."""
    out: dict[str, list[float]] = collections.defaultdict(list)
    for task in sc.tasks:
        beliefs = heads.probabilities(task.test_x)
        if network is not None:
            beliefs["network"] = class_probabilities(network, task.test_x)
        for name, given in beliefs.items():
            out[name].append(float((most_likely(given) == task.test_y).mean()))
        served = hedge.combine(beliefs, classes=sc.classes)
        out["served"].append(float((served == task.test_y).mean()))
    return dict(out)


def chunks(task: Any, size: int) -> list[Labeled]:
    return [
        Labeled(ids=task.ids[i : i + size], x=task.x[i : i + size], y=task.y[i : i + size])
        for i in range(0, len(task.ids), size)
    ]


def run_lifelong(
    sc: Scenario, settings: LearnerSettings, memory_size: int, round_size: int
) -> dict[str, Any]:
    heads, hedge = heads_for(settings, sc), Hedge(half_life=settings.ensemble_half_life)

    def served(network: Learner, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """The vote with ``network`` among the members, as the daemon serves it (the gate judges it)."""
        beliefs = heads.probabilities(x) | {"network": class_probabilities(network, x)}
        return hedge.combine(beliefs, classes=sc.classes)

    trainer = Trainer(
        build=lambda: learner(settings, sc, exclude_from_replay=trainer.held_out),
        gate=build_gate(settings),
        holdout=settings.holdout,
        served=served,
    )
    dtype = sc.tasks[0].x.dtype
    recent: collections.deque[tuple[str, np.ndarray[Any, Any], int]] = collections.deque(
        maxlen=settings.recent
    )
    matrix, decisions = [], collections.Counter()
    probes = Probes(classes=sc.classes, features=sc.features, window=hedge.window)
    members: dict[str, list[list[float]]] = collections.defaultdict(list)
    with tempfile.TemporaryDirectory() as directory:
        memory = RehearsalMemory(
            Path(directory), features=sc.features, capacity=memory_size, policy="class_balanced", dtype=dtype
        )
        waiting: list[Labeled] = []  # the labels of rounds the gate could not judge yet (deferred)
        for task in sc.tasks:
            for chunk in chunks(task, round_size):
                # As the daemon's heads follow the labels: each member is scored on them, then the
                # heads learn them (the gate's held-out samples too), then a round may run.
                for part in chunks(chunk, 100):
                    predicted = heads.predict(part.x)
                    if trainer.champion is not None:
                        predicted["network"] = trainer.champion.predict(part.x)
                    hedge.score_predictions(predicted, part.y)
                    probes.observe(part.x, part.y, held=np.array([trainer.held_out(i) for i in part.ids]))
                    if (probe := probes.probes()) is not None:  # as the daemon scores
                        px, py, weights = probe
                        predicted = heads.predict(px)
                        if trainer.champion is not None:
                            predicted["network"] = trainer.champion.predict(px)
                        hedge.score_predictions(predicted, py, weights=weights * len(part.y))
                    heads.learn(part.x, part.y)
                memory.add(chunk.ids, chunk.x, chunk.y)
                new = _joined([*waiting, chunk])
                _, held = trainer.split(chunk)
                recent.extend(zip(held.ids, held.x, held.y.tolist(), strict=True))
                slice_ = memory.select(trainer.held_out)
                result = trainer.round(
                    new,
                    replay=memory,
                    recent=_labeled(recent, sc.features, dtype),
                    remembered=slice_,
                )
                if not result.verdict.judged:
                    decisions["deferred"] += 1
                    waiting = [new]
                    continue
                waiting = []
                decisions["promoted" if result.verdict.promote else "rejected"] += 1
                if result.verdict.promote:
                    trainer.promote(result.candidate)
            for name, row in evaluate_members(sc, heads, hedge, trainer.champion).items():
                members[name].append(row)
            matrix.append(members["served"][-1])
        memory.close()
    weights = hedge.weights([*heads.names, "network"])
    return {"matrix": matrix, "versions": dict(decisions), "members": dict(members), "weights": weights}


def run_lda_rff(sc: Scenario, settings: LearnerSettings, round_size: int) -> dict[str, Any]:
    """The forgetting-free baseline: streaming LDA on 2,048 random Fourier features, every sample once."""
    heads = heads_for(settings, sc, heads=[0], linear=[], restarting_head=False, lda_features=2048)
    matrix = []
    for task in sc.tasks:
        for new in chunks(task, round_size):
            heads.learn(new.x, new.y)
        matrix.append([float((heads.predict(t.test_x)["lda"] == t.test_y).mean()) for t in sc.tasks])
    return {"matrix": matrix}


def _joined(parts: list[Labeled]) -> Labeled:
    if len(parts) == 1:
        return parts[0]
    return Labeled(
        ids=[id for p in parts for id in p.ids],
        x=np.concatenate([p.x for p in parts]),
        y=np.concatenate([p.y for p in parts]),
    )


def _labeled(rows: Any, features: int, dtype: Any) -> Labeled:
    rows = list(rows)
    if not rows:
        return Labeled(ids=[], x=np.zeros((0, features), dtype), y=np.zeros(0, np.int64))
    ids, x, y = zip(*rows, strict=True)
    return Labeled(ids=list(ids), x=np.stack(x), y=np.asarray(y, np.int64))


def run_naive(sc: Scenario, settings: LearnerSettings, round_size: int) -> dict[str, Any]:
    model = learner(settings, sc, plugins={}, loss="cross_entropy")
    matrix = []
    for task in sc.tasks:
        for new in chunks(task, round_size):
            model.update(new)
        matrix.append(evaluate(model, sc))
    return {"matrix": matrix}


def run_joint(sc: Scenario, settings: LearnerSettings, round_size: int) -> dict[str, Any]:
    model = learner(settings, sc, plugins={}, loss="cross_entropy")
    ids = [id for t in sc.tasks for id in t.ids]
    x = np.concatenate([t.x for t in sc.tasks])
    y = np.concatenate([t.y for t in sc.tasks])
    order = np.random.default_rng(0).permutation(len(ids))
    for start in range(0, len(order), round_size):
        rows = order[start : start + round_size]
        model.update(Labeled(ids=[ids[r] for r in rows], x=x[rows], y=y[rows]))
    final = evaluate(model, sc)
    return {"matrix": [final]}


AVALANCHE = ("avalanche_replay", "avalanche_er_ace", "avalanche_der", "avalanche_gdumb")


def run_avalanche(
    name: str, sc: Scenario, settings: LearnerSettings, memory_size: int, round_size: int
) -> dict[str, Any]:
    """One of Avalanche's own strategies (:data:`AVALANCHE`) with the same model, optimizer and batches."""
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets

    # Avalanche builds its own tensor datasets with this (icarl.py, ctrl.py) and exports it.
    from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset as tensor_dataset
    from avalanche.training import DER, ER_ACE, GDumb, Naive
    from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
    from avalanche.training.storage_policy import ClassBalancedBuffer

    shell = learner(settings, sc, plugins={}, loss="cross_entropy")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No loggers specified")
        evaluator = EvaluationPlugin()
    common: dict[str, Any] = {
        "model": shell.model,
        "optimizer": shell._optimizer,
        "criterion": torch.nn.CrossEntropyLoss(),
        "train_mb_size": settings.batch_size,
        "train_epochs": settings.epochs,
        "eval_mb_size": 256,
        "device": shell.device,
        "evaluator": evaluator,
        "eval_every": -1,
    }
    if name == "avalanche_replay":
        # Avalanche's Replay strategy is Naive + ReplayPlugin; built so, its buffer can be class-balanced.
        replay = ReplayPlugin(
            mem_size=memory_size,
            batch_size_mem=settings.replay_batch_size,
            storage_policy=ClassBalancedBuffer(max_size=memory_size, adaptive_size=True),
        )
        strategy = Naive(plugins=[replay], **common)
    elif name == "avalanche_er_ace":
        strategy = ER_ACE(mem_size=memory_size, batch_size_mem=settings.replay_batch_size, **common)
    elif name == "avalanche_der":
        strategy = DER(mem_size=memory_size, batch_size_mem=settings.replay_batch_size, **common)
    elif name == "avalanche_gdumb":
        strategy = GDumb(mem_size=memory_size, **common)
    else:
        raise ValueError(f"no Avalanche strategy {name!r}; choose from {AVALANCHE}")
    # One benchmark, a round per experience: strategies that count experiences (ER_ACE replays
    # only from the second on) see the rounds as the stream they are.
    rounds = [(number, new) for number, task in enumerate(sc.tasks) for new in chunks(task, round_size)]
    stream = benchmark_from_datasets(
        train=[tensor_dataset(as_inputs(new.x), torch.from_numpy(new.y), task_labels=0) for _, new in rounds]
    ).train_stream
    matrix = []
    for k, ((number, new), experience) in enumerate(zip(rounds, stream, strict=True)):
        shell._seen[torch.from_numpy(new.y)] = True
        strategy.train(experience)
        if k + 1 == len(rounds) or rounds[k + 1][0] != number:  # the task's last round
            shell.model = strategy.model  # GDumb trains a fresh copy of the initial model each round
            matrix.append(evaluate(shell, sc))
    return {"matrix": matrix}


def heat_map(matrix: list[list[float]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1 + 0.6 * m.shape[1], 1 + 0.5 * m.shape[0]))
    image = ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
    for (i, j), value in np.ndenumerate(m):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color="w" if value < 0.6 else "k")
    ax.set_xlabel("evaluated on task")
    ax.set_ylabel("after training task")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenario", choices=SCENARIOS, default="split-digits")
    parser.add_argument("--memory", type=int, default=500, help="rehearsal memory capacity (samples)")
    parser.add_argument(
        "--round", type=int, default=None, help="samples per update round (default: schedule.min_new_labels)"
    )
    parser.add_argument(
        "--per-task",
        type=int,
        default=None,
        help="at most this many training samples per task (default: all; 20,000 for permuted-fashion-mnist)",
    )
    parser.add_argument(
        "--baselines",
        default="naive,avalanche_replay,avalanche_er_ace,avalanche_der,avalanche_gdumb,lda_rff,joint",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=JSON", help="override a [learner] key"
    )
    parser.add_argument(
        "--plot", type=Path, default=None, help="PNG heat map (default: <scenario>-matrix.png)"
    )
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    args = parser.parse_args(argv)

    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    settings = LearnerSettings(**overrides)
    torch.manual_seed(settings.seed)
    sc = scenario(args.scenario, per_task=args.per_task, seed=settings.seed)
    if "model" not in overrides:  # the scenario's built-in: a CNN for images, an MLP for the rest
        settings = settings.model_copy(update={"model": sc.model})
    round_size = args.round or ScheduleSettings().min_new_labels
    started = time.perf_counter()
    ours = run_lifelong(sc, settings, args.memory, round_size)
    seconds = {"lifelong": time.perf_counter() - started}
    runs: dict[str, dict[str, Any]] = {}
    for name in filter(None, args.baselines.split(",")):
        started = time.perf_counter()
        torch.manual_seed(settings.seed)
        if name == "naive":
            runs[name] = run_naive(sc, settings, round_size)
        elif name in AVALANCHE:
            runs[name] = run_avalanche(name, sc, settings, args.memory, round_size)
        elif name == "joint":
            runs[name] = run_joint(sc, settings, round_size)
        elif name == "lda_rff":
            runs[name] = run_lda_rff(sc, settings, round_size)
        else:
            parser.error(f"unknown baseline {name!r}")
        seconds[name] = time.perf_counter() - started
    final = float(np.mean(ours["matrix"][-1]))
    baselines = {name: float(np.mean(run["matrix"][-1])) for name, run in runs.items()}
    result: dict[str, Any] = {
        "scenario": args.scenario,
        "memory": args.memory,
        "round_size": round_size,
        "samples": sum(len(t.ids) for t in sc.tasks),
        "final_avg_accuracy": final,
        "avg_forgetting": forgetting(ours["matrix"]),
        "accuracy_matrix": ours["matrix"],
        "versions": ours["versions"],
        # Each member's final average accuracy, and its weight in the vote at the end of the stream.
        "members": {name: float(np.mean(rows[-1])) for name, rows in ours["members"].items()},
        "member_forgetting": {name: forgetting(rows) for name, rows in ours["members"].items()},
        "member_weights": ours["weights"],
        "baselines": baselines,
        "baseline_forgetting": {n: forgetting(r["matrix"]) for n, r in runs.items() if n != "joint"},
        "ratio_to_joint": final / baselines["joint"] if baselines.get("joint") else None,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "device": str(torch.device("cuda" if torch.cuda.is_available() else "cpu")),
    }
    plot = args.plot or Path(f"{args.scenario}-matrix.png")
    heat_map(ours["matrix"], f"{args.scenario}, memory {args.memory}: final {final:.3f}", plot)
    result["plot"] = str(plot)
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
