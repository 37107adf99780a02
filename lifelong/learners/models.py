"""Model factories: built-ins for tabular features and small images, or any ``package.module:callable``.

A factory takes ``(features, classes, **options)`` and returns an ``nn.Module``
mapping a batch of flat feature vectors (n x features) to logits (n x classes).
The output layer is sized by ``[data] max_classes`` from the start; classes not
seen yet are masked out of the loss and the predictions by the learner, so the
shapes never change and every saved version loads into the same module.
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from lifelong.errors import ConfigError, StateError

Factory = Callable[..., nn.Module]


def mlp(
    features: int, classes: int, *, hidden: Sequence[int] = (400, 400), dropout: float = 0.0
) -> nn.Module:
    """A ReLU multilayer perceptron for tabular features."""
    layers: list[nn.Module] = []
    width = features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = size
    return Classifier(nn.Sequential(*layers), nn.Linear(width, classes))


def cnn(
    features: int, classes: int, *, channels: int | None = None, width: int = 32, hidden: int = 256
) -> nn.Module:
    """A two-block convolutional network for small square images given as flat vectors.

    ``channels`` defaults to 1 when ``features`` is a square (28x28 = 784), else 3 when
    ``features / 3`` is one (32x32x3 = 3072).
    """
    channels = channels or _channels(features)
    side = math.isqrt(features // channels)
    if side * side * channels != features:
        raise ValueError(
            f"cnn needs features = channels x side x side, got {features} with {channels} channels"
        )
    pooled = side // 4
    body = nn.Sequential(
        nn.Unflatten(1, (channels, side, side)),
        nn.Conv2d(channels, width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * pooled * pooled, hidden),
        nn.ReLU(),
    )
    return Classifier(body, nn.Linear(hidden, classes))


class Classifier(nn.Module):
    """A feature extractor (``body``) and a linear output layer (``head``), the split to freeze by."""

    def __init__(self, body: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))  # type: ignore[no-any-return]


BUILT_IN: dict[str, Factory] = {"mlp": mlp, "cnn": cnn}


def _channels(features: int) -> int:
    if math.isqrt(features) ** 2 == features:
        return 1
    if features % 3 == 0 and math.isqrt(features // 3) ** 2 == features // 3:
        return 3
    raise ValueError(f"cnn cannot tell the image shape of {features} features: pass channels")


def resolve(spec: str) -> Factory:
    """The factory a config names: a built-in (``mlp``, ``cnn``) or ``package.module:callable``."""
    if spec in BUILT_IN:
        return BUILT_IN[spec]
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigError(
            f"learner.model: {spec!r} is neither {sorted(BUILT_IN)} nor 'package.module:callable'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"learner.model: cannot import {module_name!r} ({error})") from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ConfigError(f"learner.model: {module_name!r} has no callable {attribute!r}")
    return factory  # type: ignore[no-any-return]


def build_model(
    spec: str,
    *,
    features: int,
    classes: int,
    options: dict[str, Any] | None = None,
    init_weights: Path | None = None,
    freeze: Sequence[str] = (),
) -> nn.Module:
    """Build the model a config names; warm-start it from safetensors weights and freeze parameters by prefix.

    ``init_weights`` may hold only part of the model (a pretrained backbone): the tensors
    whose names and shapes match are loaded, the rest keep their fresh initialisation.
    """
    try:
        model = resolve(spec)(features, classes, **(options or {}))
    except (TypeError, ValueError) as error:
        raise ConfigError(f"learner.model: {spec!r} could not be built ({error})") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"learner.model: {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    if init_weights is not None:
        warm_start(model, init_weights)
    if freeze:
        names = [name for name, _ in model.named_parameters()]
        for prefix in freeze:
            if not any(name.startswith(prefix) for name in names):
                raise ConfigError(
                    f"learner.freeze: no parameter starts with {prefix!r}; the model has {names}"
                )
        for name, parameter in model.named_parameters():
            if any(name.startswith(prefix) for prefix in freeze):
                parameter.requires_grad_(False)
    return model


def warm_start(model: nn.Module, path: Path) -> list[str]:
    """Load the matching tensors of a safetensors file into ``model``; return the names loaded.

    The file is read once while it is unchanged (every round builds a learner: none re-reads it).
    """
    try:
        status = Path(path).stat()
        saved = _read_weights(str(path), status.st_mtime_ns, status.st_size)
    except (OSError, ValueError) as error:  # safetensors raises its own subclass of Exception on a bad header
        raise StateError(f"learner.init_weights: cannot read {path} as safetensors ({error})") from None
    except Exception as error:
        raise StateError(f"learner.init_weights: {path} is not a valid safetensors file ({error})") from None
    own = model.state_dict()
    matched = {k: v for k, v in saved.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise StateError(
            f"learner.init_weights: no tensor in {path} matches the model by name and shape; "
            f"the model has {sorted(own)[:8]}..."
        )
    model.load_state_dict(matched, strict=False)  # copies: the cached tensors stay as read
    return sorted(matched)


@functools.lru_cache(maxsize=4)
def _read_weights(path: str, mtime_ns: int, size: int) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, cached by path, modification time and size."""
    return load_file(path)
