"""The learner built on avalanche-lib: each update round is one Avalanche training experience.

The strategy is Avalanche's ``SupervisedTemplate`` with plugins: :class:`MemoryReplay`
draws replay from the FAISS rehearsal memory, and any plugin named in
``[learner.plugins]`` (online EWC by default) joins it. The output layer is sized
by ``max_classes``; classes not seen yet are masked out of the loss and the
predictions.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lifelong.errors import RoundAbandoned
from lifelong.labeled import Labeled
from lifelong.learners.base import Checkpoint, ReplaySource, RoundReport, as_inputs
from lifelong.learners.plugins import MemoryReplay, build_plugin, plugin_state, restore_plugin
from lifelong.learners.scaling import Scaling

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="JAXopt is no longer maintained", category=DeprecationWarning)
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets

    # Avalanche builds its own tensor datasets with this (icarl.py, ctrl.py) and exports it.
    from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset as tensor_dataset
    from avalanche.core import SupervisedPlugin
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.templates import SupervisedTemplate

log = logging.getLogger(__name__)

LOSSES = ("asymmetric", "cross_entropy")


def pick_device(requested: str = "auto") -> torch.device:
    """CUDA when available and not overridden, else CPU; ``cuda`` without a GPU is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"learner.device is {requested!r} but torch sees no CUDA device")
    return device


class MaskedCrossEntropy(nn.Module):
    """Cross-entropy over the classes in ``mask`` only (the others' logits are set to the minimum)."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.mask = torch.ones(classes, dtype=torch.bool)

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        mask = self.mask.to(logits.device)
        return F.cross_entropy(logits.masked_fill(~mask, torch.finfo(logits.dtype).min), y)


class RoundStrategy(SupervisedTemplate):  # type: ignore[misc]
    """Avalanche's supervised template, with forward passes under autocast on GPU."""

    def __init__(self, *, amp_dtype: torch.dtype | None = None, **kwargs: Any) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="No loggers specified")
            evaluator = EvaluationPlugin()  # no metrics: the daemon measures what it needs itself
        super().__init__(evaluator=evaluator, eval_every=-1, **kwargs)
        self.amp_dtype = amp_dtype

    def make_optimizer(self, **kwargs: Any) -> None:
        """Keep the optimizer as it is.

        Avalanche rebuilds the optimizer's parameter list (dropping its state) on the
        first experience of every strategy object, for models that grow. Ours never
        changes shape, and a restored learner must keep its momentum.
        """

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(self.device).type, dtype=self.amp_dtype)

    def forward(self) -> torch.Tensor:
        with self._autocast():
            return super().forward()  # type: ignore[no-any-return]

    def forward_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch outside the experience (replay), under the same autocast."""
        with self._autocast():
            return self.model(x)  # type: ignore[no-any-return]


class AvalancheLearner:
    """Replay + online EWC (or any Avalanche plugins) on a PyTorch model, one experience per round.

    Example::

        learner = AvalancheLearner(model=mlp(64, 10), classes=10)
        report = learner.update(Labeled(ids, x, y), replay=memory)
        labels = learner.predict(x_new)
        checkpoint = learner.checkpoint()        # weights, optimizer and EWC state
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        classes: int,
        optimizer: str = "adam",
        lr: float = 0.0005,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        batch_size: int = 32,
        replay_batch_size: int = 32,
        review_steps: int = 0,
        epochs: int = 2,
        loss: str = "asymmetric",
        plugins: Mapping[str, Mapping[str, Any]] | None = None,
        exclude_from_replay: Callable[[str], bool] | None = None,
        device: str = "auto",
        amp: bool = True,
        scaling: str = "auto",
        scaling_range: Sequence[float] = (0.0, 1.0),
        seed: int = 0,
    ) -> None:
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
        self.classes = classes
        self.optimizer = optimizer
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.replay_batch_size = replay_batch_size
        self.review_steps = review_steps
        self.epochs = epochs
        self.loss = loss
        self.plugins = {name: dict(options) for name, options in (plugins or {}).items()}
        self.seed = seed
        low, high = scaling_range
        self._scaling = Scaling(mode=scaling, low=low, high=high)
        self._device = pick_device(device)
        self.model = model.to(self._device)
        self._seen = torch.zeros(classes, dtype=torch.bool)
        self._rounds = 0
        self._generator = torch.Generator().manual_seed(seed)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self._optimizer: torch.optim.Optimizer = (
            torch.optim.SGD(trainable, lr=lr, momentum=momentum, weight_decay=weight_decay)
            if optimizer == "sgd"
            else torch.optim.Adam(trainable, lr=lr, weight_decay=weight_decay)
        )
        self._criterion = MaskedCrossEntropy(classes)
        self._replay = MemoryReplay(
            batch_size=replay_batch_size,
            exclude=exclude_from_replay,
            review_steps=review_steps,
            inputs=self._inputs,
        )
        self._extra: dict[str, SupervisedPlugin] = {
            name: build_plugin(name, options) for name, options in self.plugins.items()
        }
        amp_dtype = (
            torch.bfloat16 if amp and self._device.type == "cuda" and torch.cuda.is_bf16_supported() else None
        )
        self._strategy = RoundStrategy(
            model=self.model,
            optimizer=self._optimizer,
            criterion=self._criterion,
            train_mb_size=batch_size,
            train_epochs=epochs,
            eval_mb_size=max(256, batch_size),
            device=self._device,
            plugins=[self._replay, *self._extra.values()],
            amp_dtype=amp_dtype,
        )

    @property
    def device(self) -> torch.device:
        """Where the model trains and predicts."""
        return self._device

    @property
    def seen(self) -> list[int]:
        """The labels seen in training so far."""
        return [int(c) for c in torch.nonzero(self._seen).flatten()]

    @property
    def rounds(self) -> int:
        """Update rounds run since the model was created."""
        return self._rounds

    @property
    def scaling(self) -> Scaling:
        """How inputs are scaled before the model reads them (fitted on the samples trained on)."""
        return self._scaling

    def _inputs(self, x: np.ndarray[Any, Any]) -> torch.Tensor:
        return self._scaling(as_inputs(x))

    def outside(self, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """Which rows of ``x`` leave the range of inputs the model was fitted on (see :class:`Scaling`)."""
        return self._scaling.outside(as_inputs(x))

    @torch.no_grad()
    def logits(self, x: np.ndarray[Any, Any], *, batch: int = 1024) -> torch.Tensor:
        """Logits with unseen classes masked (on the CPU)."""
        self.model.eval()
        parts = []
        with self._strategy._autocast():
            for start in range(0, len(x), batch):
                part = self.model(self._inputs(x[start : start + batch]).to(self._device)).float().cpu()
                parts.append(part)
        logits = torch.cat(parts) if parts else torch.zeros(0, self.classes)
        if self._seen.any():
            logits = logits.masked_fill(~self._seen, torch.finfo(logits.dtype).min)
        return logits

    def predict(self, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """The most likely seen label of each row of ``x``."""
        return self.logits(x).argmax(1).numpy()

    def probabilities(self, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """Each row's probability of each class (0 for classes never trained on; float32)."""
        probabilities: np.ndarray[Any, Any] = torch.softmax(self.logits(x), dim=1).numpy()
        return probabilities

    def update(
        self, new: Labeled, replay: ReplaySource | None = None, *, stop: Callable[[], bool] | None = None
    ) -> RoundReport:
        """One training experience on ``new`` with replay from ``replay``; returns what it did.

        ``stop`` is asked before every step; when it answers True the round is abandoned with
        :class:`~lifelong.errors.RoundAbandoned` and this learner must be thrown away.
        """
        started = time.perf_counter()
        if not len(new):
            return RoundReport(
                samples=0, replayed=0, steps=0, seconds=0.0, loss=float("nan"), classes=self.seen
            )
        y = torch.from_numpy(np.asarray(new.y, dtype=np.int64))
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.classes):
            raise ValueError(f"labels must lie in [0, {self.classes}), got {int(y.min())}..{int(y.max())}")
        present = torch.zeros(self.classes, dtype=torch.bool)
        present[y] = True
        self._seen |= present
        self._criterion.mask = present if self.loss == "asymmetric" else self._seen.clone()
        self._replay.source, self._replay.mask = replay, self._seen.to(self._device)
        self._replay.replayed = 0
        inputs = as_inputs(new.x)
        self._scaling.resolve(np.asarray(new.x).dtype)
        self._scaling.fit(inputs)  # before training: the round learns in the scale it will serve in
        dataset = tensor_dataset(self._scaling(inputs), y, task_labels=0)
        experience = benchmark_from_datasets(train=[dataset]).train_stream[0]
        losses: list[torch.Tensor] = []
        with _recording(self._strategy, losses, stop), _seeded(self.seed + self._rounds):
            self._strategy.train(experience, num_workers=0)
        self._rounds += 1
        if self._replay.mask is not None:
            self._seen |= self._replay.mask.cpu()  # classes first met in replay
        self._replay.source = None
        self.model.eval()
        return RoundReport(
            samples=len(new),
            replayed=self._replay.replayed,
            steps=len(losses),
            seconds=time.perf_counter() - started,
            loss=float(torch.stack(losses).float().mean()) if losses else float("nan"),
            classes=self.seen,
        )

    def checkpoint(self) -> Checkpoint:
        """Weights, optimizer state and plugin state (copied tensors), and the rest as JSON."""
        state: dict[str, torch.Tensor] = {}
        optimizer = self._optimizer.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for index, slots in optimizer["state"].items():
            for key, value in slots.items():
                if isinstance(value, torch.Tensor) and value.dim() > 0:
                    state[f"optimizer.{index}.{key}"] = value.detach().clone()
                else:
                    scalars.setdefault(str(index), {})[key] = float(value)
        for name, plugin in self._extra.items():
            state.update(
                {
                    f"plugin.{name}.{k}": v.detach().clone()
                    for k, v in plugin_state(plugin, self._rounds).items()
                }
            )
        # Copies: a learner restored from this checkpoint must share no tensor with this one.
        state.update(self._scaling.state())
        weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return Checkpoint(
            weights=weights | self._scaling.weights(),
            state=state,
            meta={
                "rounds": self._rounds,
                "seen": self.seen,
                "optimizer": {
                    "name": self.optimizer,
                    "param_groups": optimizer["param_groups"],
                    "scalars": scalars,
                },
                "plugins": sorted(self._extra),
                "scaling": self._scaling.meta(),
            },
        )

    def restore(self, checkpoint: Checkpoint) -> None:
        """Continue from ``checkpoint``: the model, optimizer and plugins as they were."""
        scaling = {k: v for k, v in checkpoint.weights.items() if k.startswith("scaling.")}
        self.model.load_state_dict({k: v for k, v in checkpoint.weights.items() if k not in scaling})
        meta = checkpoint.meta
        scaling |= {k: v for k, v in checkpoint.state.items() if k.startswith("scaling.")}
        self._scaling.restore(meta.get("scaling"), scaling)
        self._rounds = int(meta.get("rounds", 0))
        self._seen.zero_()
        self._seen[list(meta.get("seen", []))] = True
        saved = meta.get("optimizer", {})
        if saved.get("name", self.optimizer) != self.optimizer:
            log.warning(
                "the checkpoint's optimizer is %s, the configuration's %s: its state starts afresh",
                saved.get("name"),
                self.optimizer,
            )
        elif "param_groups" in saved:
            slots: dict[int, dict[str, Any]] = {}
            for key, tensor in checkpoint.state.items():
                if key.startswith("optimizer."):
                    _, index, name = key.split(".", 2)
                    slots.setdefault(int(index), {})[name] = tensor.to(self._device)
            for index, values in saved.get("scalars", {}).items():
                for name, value in values.items():
                    slots.setdefault(int(index), {})[name] = torch.tensor(value)
            self._optimizer.load_state_dict({"state": slots, "param_groups": saved["param_groups"]})
            for group in self._optimizer.param_groups:  # the configuration's settings, not the old ones
                group["lr"], group["weight_decay"] = self.lr, self.weight_decay
                if self.optimizer == "sgd":
                    group["momentum"] = self.momentum
        self._strategy.clock.train_exp_counter = self._rounds
        for name, plugin in self._extra.items():
            prefix = f"plugin.{name}."
            own = {k[len(prefix) :]: v for k, v in checkpoint.state.items() if k.startswith(prefix)}
            restore_plugin(plugin, own, rounds=self._rounds, model=self.model, classes=self.seen)
        self.model.eval()


@contextlib.contextmanager
def _recording(
    strategy: RoundStrategy, losses: list[torch.Tensor], stop: Callable[[], bool] | None
) -> Iterator[None]:
    """Collect each training step's loss, and check ``stop``, through a plugin for a round."""
    plugin = _LossRecorder(losses, stop)
    strategy.plugins.append(plugin)
    try:
        yield
    finally:
        strategy.plugins.remove(plugin)


class _LossRecorder(SupervisedPlugin):  # type: ignore[misc]
    def __init__(self, losses: list[torch.Tensor], stop: Callable[[], bool] | None) -> None:
        super().__init__()
        self.losses = losses
        self.stop = stop

    def before_training_iteration(self, strategy: RoundStrategy, **kwargs: Any) -> None:
        if self.stop is not None and self.stop():
            raise RoundAbandoned(f"update round abandoned after {len(self.losses)} steps")

    def after_backward(self, strategy: RoundStrategy, **kwargs: Any) -> None:
        self.losses.append(strategy.loss.detach())  # read once at the end: no device sync per step


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Deterministic shuffling inside a round without disturbing the caller's global RNG for long."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.random.set_rng_state(state)
