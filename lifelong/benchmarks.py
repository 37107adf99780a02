"""Continual-learning benchmark streams from data that ships with the machine (no downloads).

* ``split-digits``: scikit-learn's bundled 8x8 digits, five tasks of two classes (fast, for tests).
* ``split-fashion-mnist``: Fashion-MNIST (Debian's ``dataset-fashion-mnist``), five tasks of two classes.
* ``permuted-fashion-mnist``: Fashion-MNIST under ten fixed pixel permutations, all ten classes in each.
* ``rotated-fashion-mnist``: Fashion-MNIST rotated by ten fixed angles (0, 18, ..., 162 degrees).

Split streams are class-incremental (one output layer, every class seen so far
competes); permuted and rotated streams are domain-incremental.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from lifelong.errors import LifelongError

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
SCENARIOS = ("split-digits", "split-fashion-mnist", "permuted-fashion-mnist", "rotated-fashion-mnist")
# Ten permutations of all 60,000 images are 600,000 samples per pass; 20,000 per permutation keep
# the benchmark (and its joint-training upper bound) to minutes on a CPU.
PER_TASK = {"permuted-fashion-mnist": 20_000, "rotated-fashion-mnist": 20_000}


class DatasetMissingError(LifelongError, FileNotFoundError):
    """A benchmark's data is not installed; the message says how to install it."""


@dataclass(frozen=True)
class Task:
    """One experience of a stream: training samples in arrival order and a test set."""

    ids: list[str]
    x: np.ndarray[Any, Any]
    y: np.ndarray[Any, Any]
    test_x: np.ndarray[Any, Any]
    test_y: np.ndarray[Any, Any]


@dataclass(frozen=True)
class Scenario:
    """A named stream of tasks and the built-in model suited to it."""

    name: str
    features: int
    classes: int
    model: str
    tasks: list[Task]


def digits(seed: int = 0) -> Arrays:
    """scikit-learn's digits as float32 in [0, 1]: (x_train, y_train, x_test, y_test), a 75/25 split."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    cut = int(len(y) * 0.75)
    return Arrays(x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]])


def fashion_mnist(root: Path = FASHION_MNIST) -> Arrays:
    """Fashion-MNIST as uint8 (n x 784): (x_train, y_train, x_test, y_test)."""
    files = (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    )
    paths = [root / f"{name}.gz" for name in files]
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise DatasetMissingError(
            f"Fashion-MNIST is not installed ({missing[0]} is missing): run "
            "`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or use split-digits"
        )
    return Arrays(*(_idx(path) for path in paths))


def _idx(path: Path) -> np.ndarray[Any, Any]:
    with gzip.open(path) as file:
        raw = file.read()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    array = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims)
    return array.reshape(shape[0], -1) if dims > 1 else array.astype(np.int64)


class Arrays(NamedTuple):
    """A dataset's training and test arrays."""

    x: np.ndarray[Any, Any]
    y: np.ndarray[Any, Any]
    test_x: np.ndarray[Any, Any]
    test_y: np.ndarray[Any, Any]


def split(name: str, data: Arrays, *, tasks: int, per_task: int | None, seed: int) -> list[Task]:
    """Class-incremental: classes in label order, ``len(classes) / tasks`` per task, shuffled within."""
    x, y, tx, ty = data
    rng = np.random.default_rng(seed)
    groups = np.array_split(np.unique(y), tasks)
    out = []
    for number, labels in enumerate(groups):
        rows = rng.permutation(np.flatnonzero(np.isin(y, labels)))[:per_task]
        test = np.isin(ty, labels)
        out.append(Task([f"{name}-{number}-{r}" for r in rows], x[rows], y[rows], tx[test], ty[test]))
    return out


def permuted(name: str, data: Arrays, *, tasks: int, per_task: int | None, seed: int) -> list[Task]:
    """Domain-incremental: task 0 is the identity, each later task a fixed random pixel permutation."""
    x, y, tx, ty = data
    rng = np.random.default_rng(seed)
    out = []
    for number in range(tasks):
        perm = np.arange(x.shape[1]) if number == 0 else rng.permutation(x.shape[1])
        rows = rng.permutation(len(y))[:per_task]
        out.append(Task([f"{name}-{number}-{r}" for r in rows], x[rows][:, perm], y[rows], tx[:, perm], ty))
    return out


def rotated(name: str, data: Arrays, *, tasks: int, per_task: int | None, seed: int) -> list[Task]:
    """Domain-incremental: task k rotates every image by ``k * 180 / tasks`` degrees (bilinear)."""
    import torch
    from torchvision.transforms.functional import InterpolationMode, rotate  # type: ignore[import-untyped]

    x, y, tx, ty = data
    side = int(np.sqrt(x.shape[1]))
    rng = np.random.default_rng(seed)

    def turned(images: np.ndarray[Any, Any], angle: float) -> np.ndarray[Any, Any]:
        batch = torch.from_numpy(np.ascontiguousarray(images)).view(-1, 1, side, side)
        out: torch.Tensor = rotate(batch, angle, interpolation=InterpolationMode.BILINEAR)
        turned_images: np.ndarray[Any, Any] = out.reshape(len(images), -1).numpy()
        return turned_images

    out = []
    for number in range(tasks):
        angle = number * 180.0 / tasks
        rows = rng.permutation(len(y))[:per_task]
        out.append(
            Task(
                [f"{name}-{number}-{r}" for r in rows], turned(x[rows], angle), y[rows], turned(tx, angle), ty
            )
        )
    return out


def scenario(name: str, *, per_task: int | None = None, seed: int = 0) -> Scenario:
    """The stream ``name`` (one of :data:`SCENARIOS`), at most ``per_task`` training samples per task."""
    per_task = per_task or PER_TASK.get(name)
    if name == "split-digits":
        data = digits(seed)
        return Scenario(name, 64, 10, "mlp", split(name, data, tasks=5, per_task=per_task, seed=seed))
    if name == "split-fashion-mnist":
        data = fashion_mnist()
        return Scenario(name, 784, 10, "cnn", split(name, data, tasks=5, per_task=per_task, seed=seed))
    if name == "permuted-fashion-mnist":
        data = fashion_mnist()
        return Scenario(name, 784, 10, "mlp", permuted(name, data, tasks=10, per_task=per_task, seed=seed))
    if name == "rotated-fashion-mnist":
        data = fashion_mnist()
        return Scenario(name, 784, 10, "mlp", rotated(name, data, tasks=10, per_task=per_task, seed=seed))
    raise ValueError(f"unknown scenario {name!r}; choose from {SCENARIOS}")


def forgetting(matrix: list[list[float]]) -> float:
    """Average forgetting (Chaudhry et al., 2018): over every task but the last, its best accuracy
    before the final step minus its final accuracy (``matrix[i][j]``: task j's accuracy after task i)."""
    if len(matrix) < 2:
        return 0.0
    m = np.asarray(matrix, dtype=np.float64)
    return float(np.mean(m[:-1, : len(m) - 1].max(0) - m[-1, : len(m) - 1]))
