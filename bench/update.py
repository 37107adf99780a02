"""One update round's wall time against a plain PyTorch loop doing identical work.

    python bench/update.py --json

The round is the daemon's: ``AvalancheLearner.update`` (an Avalanche training
experience with the memory-replay and online-EWC plugins, the asymmetric loss)
on ``--samples`` new samples with replay from a rehearsal memory. The plain loop
runs the same model from the same weights with the same optimizer, batches,
replay draws, EWC penalty and EWC importance pass, written directly in PyTorch.
Both are timed after a warm-up round (so EWC has importances to apply); each
figure is the median of ``--repeats`` runs. ``ratio`` = round / plain.

The online heads learn every label on a thread of their own, neither in the
round nor on the consumer thread: ``heads_seconds`` is what that thread spends
scoring, then learning, the same new samples (after the warm-up ones), with the
default heads; ``heads_per_round`` = that / round.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lifelong.benchmarks import DatasetMissingError, digits, fashion_mnist
from lifelong.config import LearnerSettings
from lifelong.labeled import Labeled
from lifelong.learners.avalanche import AvalancheLearner
from lifelong.learners.base import as_inputs
from lifelong.learners.configured import build_heads
from lifelong.learners.models import build_model
from lifelong.learning.online import STEPS
from lifelong.memory.rehearsal import RehearsalMemory


def data() -> tuple[str, np.ndarray[Any, Any], np.ndarray[Any, Any], str]:
    try:
        x, y, _, _ = fashion_mnist()
        return "fashion-mnist", x, y, "cnn"
    except DatasetMissingError:
        x, y, _, _ = digits()
        return "digits", x, y, "mlp"


def plain_round(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    new: Labeled,
    memory: RehearsalMemory,
    settings: LearnerSettings,
    seen: torch.Tensor,
    ewc: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None,
    device: torch.device,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The same work as one update round, written as a plain loop; returns the EWC state it leaves."""
    lam = float(settings.plugins.get("ewc", {}).get("ewc_lambda", 1.0))
    decay = float(settings.plugins.get("ewc", {}).get("decay_factor", 0.9))
    x, y = as_inputs(new.x), torch.from_numpy(new.y)
    present = torch.zeros(len(seen), dtype=torch.bool)
    present[y] = True
    low = torch.finfo(torch.float32).min
    model.train()
    for _ in range(settings.epochs):
        order = torch.randperm(len(y))
        for start in range(0, len(y), settings.batch_size):
            rows = order[start : start + settings.batch_size]
            xb, yb = x[rows].to(device), y[rows].to(device)
            optimizer.zero_grad()
            loss = F.cross_entropy(model(xb).masked_fill(~present.to(device), low), yb)
            drawn = memory.sample(settings.replay_batch_size + settings.replay_batch_size // 4, balanced=True)
            keep = slice(0, settings.replay_batch_size)
            rx, ry = as_inputs(drawn.x[keep]).to(device), torch.from_numpy(drawn.y[keep]).to(device)
            loss = loss + F.cross_entropy(model(rx).masked_fill(~seen.to(device), low), ry)
            if ewc is not None:
                importance, anchor = ewc
                penalty = sum(
                    (importance[n] * (p - anchor[n]).pow(2)).sum() for n, p in model.named_parameters()
                )
                loss = loss + lam * penalty
            loss.backward()
            optimizer.step()
    # EWC's importance pass over the round's data, as the plugin does after the experience.
    model.eval()
    fisher = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    batches = 0
    for start in range(0, len(y), settings.batch_size):
        xb, yb = (
            x[start : start + settings.batch_size].to(device),
            y[start : start + settings.batch_size].to(device),
        )
        optimizer.zero_grad()
        F.cross_entropy(model(xb).masked_fill(~present.to(device), low), yb).backward()
        for n, p in model.named_parameters():
            if p.grad is not None:
                fisher[n] += p.grad.detach().pow(2)
        batches += 1
    importance = {n: f / batches for n, f in fisher.items()}
    if ewc is not None:
        importance = {n: decay * ewc[0][n] + f for n, f in importance.items()}
    return importance, {n: p.detach().clone() for n, p in model.named_parameters()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=2000, help="new samples in the round")
    parser.add_argument("--memory", type=int, default=500, help="rehearsal memory capacity")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    args = parser.parse_args(argv)

    name, x, y, model_name = data()
    settings = LearnerSettings(model=model_name)
    rng = np.random.default_rng(0)
    rows = rng.permutation(len(y))
    warm = rows[: args.samples]
    timed = rows[args.samples : 2 * args.samples]
    features = x.shape[1]
    round_seconds, plain_seconds = [], []
    with tempfile.TemporaryDirectory() as directory:
        memory = RehearsalMemory(
            Path(directory), features=features, capacity=args.memory, policy="class_balanced", dtype=x.dtype
        )
        memory.add(
            [f"m{r}" for r in rows[-args.memory * 4 :]],
            x[rows[-args.memory * 4 :]],
            y[rows[-args.memory * 4 :]],
        )
        first = Labeled(ids=[f"w{r}" for r in warm], x=x[warm], y=y[warm])
        second = Labeled(ids=[f"t{r}" for r in timed], x=x[timed], y=y[timed])
        for _ in range(args.repeats):
            torch.manual_seed(0)
            model = build_model(model_name, features=features, classes=10)
            initial = copy.deepcopy(model.state_dict())
            learner = AvalancheLearner(model=model, classes=10, **settings.learner_options())
            learner.update(first, memory)
            started = time.perf_counter()
            learner.update(second, memory)
            _sync(learner.device)
            round_seconds.append(time.perf_counter() - started)

            plain = build_model(model_name, features=features, classes=10)
            plain.load_state_dict(initial)
            plain.to(learner.device)
            optimizer: torch.optim.Optimizer = (
                torch.optim.Adam(plain.parameters(), lr=settings.lr)
                if settings.optimizer == "adam"
                else torch.optim.SGD(plain.parameters(), lr=settings.lr, momentum=settings.momentum)
            )
            seen = torch.zeros(10, dtype=torch.bool)
            seen[torch.from_numpy(np.unique(y))] = True
            state = plain_round(plain, optimizer, first, memory, settings, seen, None, learner.device)
            started = time.perf_counter()
            plain_round(plain, optimizer, second, memory, settings, seen, state, learner.device)
            _sync(learner.device)
            plain_seconds.append(time.perf_counter() - started)
        memory.close()
        heads_seconds = [heads_learning(settings, first, second, classes=10) for _ in range(args.repeats)]
    round_s, plain_s = statistics.median(round_seconds), statistics.median(plain_seconds)
    result: dict[str, Any] = {
        "dataset": name,
        "model": model_name,
        "samples": args.samples,
        "epochs": settings.epochs,
        "round_seconds": round_s,
        "plain_torch_seconds": plain_s,
        "ratio": round_s / plain_s,
        # The online heads (the defaults: lda_features "auto") learning the same samples on their own
        # thread, neither in the round nor on the consumer thread: what that thread spends on them.
        "heads_seconds": statistics.median(heads_seconds),
        "heads_per_round": statistics.median(heads_seconds) / round_s,
        "device": str(learner.device),
    }
    if learner.device.type == "cuda":
        result["samples_per_s"] = args.samples * settings.epochs / round_s
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


def heads_learning(settings: LearnerSettings, first: Labeled, second: Labeled, *, classes: int) -> float:
    """Seconds the online heads take to score, then learn, ``second`` after ``first`` (as the daemon's
    follower takes a backlog: in STEPS batches, each predicted before it is learned)."""
    heads = build_heads(settings, features=first.x.shape[1], classes=classes)
    heads.learn(first.x, first.y)
    heads.predictor()
    started = time.perf_counter()
    for part in np.array_split(np.arange(len(second)), STEPS):
        heads.predictor().predict(second.x[part])
        heads.learn(second.x[part], second.y[part])
    heads.predictor()  # what serving takes after the last batch
    return time.perf_counter() - started


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    sys.exit(main())
