"""Avalanche plugins by name, the replay plugin that draws from the rehearsal memory, and plugin state.

``[learner.plugins]`` names Avalanche plugins with their keyword arguments::

    [learner.plugins.ewc]      # online EWC: one importance matrix carried across rounds with decay
    ewc_lambda = 1.0
    decay_factor = 0.9
    [learner.plugins.lwf]
    alpha = 1.0

EWC and LwF carry their state across restarts (it is saved beside the weights);
the other plugins start afresh when the daemon restarts.
"""

from __future__ import annotations

import copy
import importlib
import logging
import warnings
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lifelong.errors import ConfigError
from lifelong.learners.base import ReplaySource, as_inputs

with warnings.catch_warnings():
    # GEM's solver package imports jaxopt, which announces its own retirement on import.
    warnings.filterwarnings("ignore", message="JAXopt is no longer maintained", category=DeprecationWarning)
    from avalanche.core import SupervisedPlugin
    from avalanche.training import plugins as avalanche_plugins
    from avalanche.training.utils import ParamData

log = logging.getLogger(__name__)


class RoundTraining(Protocol):
    """What the replay plugin uses of the strategy training a round
    (:class:`~lifelong.learners.avalanche.RoundStrategy`)."""

    loss: torch.Tensor
    device: torch.device
    optimizer: torch.optim.Optimizer
    model: nn.Module

    def forward_inputs(self, x: torch.Tensor) -> torch.Tensor: ...


# name -> (Avalanche plugin class, default keyword arguments)
PLUGINS: dict[str, tuple[str, dict[str, Any]]] = {
    "ewc": ("EWCPlugin", {"ewc_lambda": 1.0, "mode": "online", "decay_factor": 0.9}),
    "lwf": ("LwFPlugin", {"alpha": 1.0, "temperature": 2.0}),
    "si": ("SynapticIntelligencePlugin", {"si_lambda": 1.0}),
    "mas": ("MASPlugin", {"lambda_reg": 1.0, "alpha": 0.5}),
    "rwalk": ("RWalkPlugin", {}),
    "gem": ("GEMPlugin", {"patterns_per_experience": 64, "memory_strength": 0.5}),
    "agem": ("AGEMPlugin", {"patterns_per_experience": 64, "sample_size": 64}),
    "lfl": ("LFLPlugin", {"lambda_e": 1.0}),
}


def build_plugin(name: str, options: dict[str, Any]) -> SupervisedPlugin:
    """The Avalanche plugin ``name`` (a :data:`PLUGINS` key or ``package.module:Class``) with ``options``."""
    if name in PLUGINS:
        class_name, defaults = PLUGINS[name]
        factory: Callable[..., Any] = getattr(avalanche_plugins, class_name)
        arguments = {**defaults, **options}
        if name == "ewc" and arguments.get("mode") == "separate" and "decay_factor" not in options:
            arguments.pop("decay_factor")  # Avalanche allows a decay in online mode only
    else:
        module_name, _, attribute = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError, ValueError):
            raise ConfigError(
                f"learner.plugins.{name}: not one of {sorted(PLUGINS)} "
                "nor an importable 'package.module:Class'"
            ) from None
        arguments = dict(options)
    try:
        plugin = factory(**arguments)
    except (TypeError, ValueError, AssertionError) as error:
        raise ConfigError(
            f"learner.plugins.{name}: {error or 'invalid options'} (options {arguments})"
        ) from None
    if not isinstance(plugin, SupervisedPlugin):
        raise ConfigError(
            f"learner.plugins.{name}: {type(plugin).__name__} is not an Avalanche SupervisedPlugin"
        )
    return plugin


class MemoryReplay(SupervisedPlugin):  # type: ignore[misc]
    """Adds the loss of a replay batch from the rehearsal memory to every training step.

    The batch is drawn class-balanced (by default) from a :class:`ReplaySource`,
    ids for which ``exclude`` holds are dropped (the gate's held-out slice), and
    its loss spans every class seen so far, while the new data's loss spans only
    the classes it holds (the asymmetric loss of ER-ACE), so learning new classes
    does not push the old ones' logits down.
    """

    def __init__(
        self,
        *,
        batch_size: int,
        balanced: bool = True,
        exclude: Callable[[str], bool] | None = None,
        review_steps: int = 0,
        review_lr_scale: float = 0.1,
        inputs: Callable[[np.ndarray[Any, Any]], torch.Tensor] = as_inputs,
    ):
        super().__init__()
        self.batch_size = batch_size
        self.balanced = balanced
        self.exclude = exclude
        self.review_steps = review_steps
        self.review_lr_scale = review_lr_scale
        self.inputs = inputs  # the learner's input scaling: replay is read exactly as new data is
        self.source: ReplaySource | None = None
        self.mask: torch.Tensor | None = None
        self.replayed = 0

    def before_backward(self, strategy: RoundTraining, **kwargs: Any) -> None:
        loss = self._replay_loss(strategy, self.batch_size)
        if loss is not None:
            strategy.loss += loss

    def after_training_exp(self, strategy: RoundTraining, **kwargs: Any) -> None:
        """Review: a few class-balanced steps on the memory alone at a lower learning rate.

        The memory holds the round's classes in proportion, so this evens out the bias
        toward the newest classes that training on them leaves in the output layer.
        """
        if not self.review_steps or self.source is None:
            return
        optimizer = strategy.optimizer
        rates = [group["lr"] for group in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["lr"] *= self.review_lr_scale
        strategy.model.train()
        try:
            for _ in range(self.review_steps):
                loss = self._replay_loss(strategy, 2 * self.batch_size)
                if loss is None:
                    break
                optimizer.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
        finally:
            for group, rate in zip(optimizer.param_groups, rates, strict=True):
                group["lr"] = rate

    def _replay_loss(self, strategy: RoundTraining, n: int) -> torch.Tensor | None:
        if self.source is None or self.mask is None or n <= 0:
            return None
        drawn = self.source.sample(n + n // 4, balanced=self.balanced)
        keep = np.ones(len(drawn.ids), dtype=bool)
        if self.exclude is not None:
            keep = np.fromiter((not self.exclude(id) for id in drawn.ids), dtype=bool, count=len(drawn.ids))
        rows = np.flatnonzero(keep)[:n]
        if not len(rows):
            return None
        x = self.inputs(drawn.x[rows]).to(strategy.device, non_blocking=True)
        y = torch.from_numpy(np.asarray(drawn.y)[rows]).to(strategy.device, non_blocking=True)
        # The memory may hold classes this model never trained on (after a rollback or a
        # rejected round): they become seen here rather than targets with a masked logit.
        self.mask[y] = True
        logits = strategy.forward_inputs(x).float()
        self.replayed += len(rows)
        return F.cross_entropy(logits.masked_fill(~self.mask, torch.finfo(logits.dtype).min), y)


# -- state that must survive a restart ---------------------------------------------------------------


def plugin_state(plugin: SupervisedPlugin, rounds: int) -> dict[str, torch.Tensor]:
    """The tensors a plugin needs to continue after a restart (EWC's importances and anchor)."""
    if isinstance(plugin, avalanche_plugins.EWCPlugin) and rounds > 0:
        last = rounds - 1
        state = {f"importance.{k}": p.data for k, p in plugin.importances.get(last, {}).items()}
        state.update({f"anchor.{k}": p.data for k, p in plugin.saved_params.get(last, {}).items()})
        return state
    return {}


def restore_plugin(
    plugin: SupervisedPlugin,
    state: dict[str, torch.Tensor],
    *,
    rounds: int,
    model: nn.Module,
    classes: list[int],
) -> None:
    """Put back what :func:`plugin_state` saved; LwF's teacher is the restored model itself."""
    if rounds == 0:
        return
    last = rounds - 1
    device = next(model.parameters()).device
    if isinstance(plugin, avalanche_plugins.EWCPlugin):
        # In the model's parameter order: Avalanche zips these against named_parameters().
        # ParamData keeps init_tensor where it is, so move it to the model's device first.
        names = [name for name, _ in model.named_parameters()]
        for prefix, target in (("importance.", plugin.importances), ("anchor.", plugin.saved_params)):
            target[last] = {
                name: ParamData(
                    prefix + name, tensor.shape, init_tensor=tensor.to(device).clone(), device=device
                )
                for name in names
                if (tensor := state.get(prefix + name)) is not None
            }
    elif isinstance(plugin, avalanche_plugins.LwFPlugin):
        plugin.lwf.prev_model = copy.deepcopy(model).eval()
        plugin.lwf.expcount = rounds
        plugin.lwf.prev_classes_by_task[0] = set(classes)
    else:
        log.warning("%s starts afresh: its state is not carried across restarts", type(plugin).__name__)
