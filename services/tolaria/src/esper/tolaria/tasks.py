"""Tasks: a dataset, its splits, and the host network that learns it.

Every split is fixed by ``split_seed`` (not the run's ``--seed``), so runs with
different seeds see the same validation set. The validation split is carved
from the training data; it is what every decision reads. The test split is
only ever evaluated for the report.

Tasks: ``mnist1d`` (generated locally), ``digits`` (scikit-learn's bundled
8x8 digits), ``cifar10`` (the python pickle batches in a local folder; never
downloaded), and any ``package.module:function`` that returns a :class:`Task`
(a user's own model and data: :func:`esper.tolaria.usertask.define_task`).
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from esper.kasmina.hosts import ConvHost1D
from esper.leyline import BUILTIN_TASKS
from esper.tolaria.objective import CLASSIFICATION, Metric, Objective

#: The built-in tasks (Leyline names them, so the control API can check a job without importing Tolaria).
TASKS = BUILTIN_TASKS

#: Validation share per task where 10% is wrong. MNIST-1D has only 4,000 training rows, and every
#: row moved to validation is one the host cannot learn from; 200 rows still resolve a one-sample
#: (0.5%) change, and seed contributions are measured on the same rows with and without the seed.
VAL_FRACTIONS = {"mnist1d": 0.05}


@dataclass(frozen=True, slots=True)
class Split:
    """Inputs ``x`` (N, ...) and targets ``y``: float32 inputs and int64 labels (N,) for the built-in tasks."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device) -> Split:
        """This split with both tensors on ``device`` (the split itself when they are there already)."""
        if self.x.device == device and self.y.device == device:
            return self
        return Split(self.x.to(device), self.y.to(device))


@dataclass(frozen=True, slots=True)
class Task:
    """A dataset split three ways plus the host that learns it.

    ``build_host`` makes a fresh host (call after seeding torch); ``slots`` maps
    slot ids to dotted submodule names of that host, ``layouts`` declares some
    slots' feature layouts. ``objective`` is the loss and score (classification
    unless the task says otherwise); ``metrics`` are the task's own numbers,
    computed on the test split for the report.
    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    build_host: Callable[[], nn.Module]
    slots: dict[str, str]
    layouts: dict[str, str] = field(default_factory=dict)
    objective: Objective = CLASSIFICATION
    metrics: dict[str, Metric] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per-sample input shape."""
        return tuple(self.train.x.shape[1:])

    def to(self, device: torch.device) -> Task:
        """This task with its three splits on ``device`` (a run keeps its data where it trains); the task
        itself when they are there already."""
        train, val, test = self.train.to(device), self.val.to(device), self.test.to(device)
        if train is self.train and val is self.val and test is self.test:
            return self
        return replace(self, train=train, val=val, test=test)


class ConvHost2D(nn.Module):
    """A small 2-D CNN host for 32x32 RGB images (CIFAR-10).

    conv1 (3->C) act1 pool, conv2 (C->2C) act2 pool, conv3 (2C->2C) act3, global
    average pool, linear to classes. Input (N, 3, 32, 32) -> logits (N, classes).
    """

    DEFAULT_SLOTS: ClassVar[dict[str, str]] = {"s1": "act1", "s2": "act2", "s3": "act3"}

    def __init__(self, channels: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"field 'channels': must be >= 1 (value {channels!r})")
        wide = 2 * channels
        self.conv1 = nn.Conv2d(3, channels, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, wide, 3, padding=1)
        self.act2 = nn.ReLU()
        self.conv3 = nn.Conv2d(wide, wide, 3, padding=1)
        self.act3 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(wide, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act1(self.conv1(x)))
        x = self.pool(self.act2(self.conv2(x)))
        x = self.act3(self.conv3(x))
        return self.head(x.mean(dim=(2, 3)))


def carve(x: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> tuple[Split, Split]:
    """Split (x, y) into (rest, carved) with ``fraction`` of the rows carved, fixed by ``seed``."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"field 'val_fraction': must be in (0, 1) (value {fraction!r})")
    order = np.random.default_rng(seed).permutation(len(y))
    n_carved = max(1, round(len(y) * fraction))
    carved, rest = order[:n_carved], order[n_carved:]
    return _split(x[rest], y[rest]), _split(x[carved], y[carved])


def _split(x: np.ndarray, y: np.ndarray) -> Split:
    return Split(torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64))


def _mnist1d() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    # copies: callers own their arrays, the cached originals stay as generated
    x, y, x_test, y_test = _mnist1d_generated()
    return x.copy(), y.copy(), x_test.copy(), y_test.copy()


@functools.cache
def _mnist1d_generated() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Generated once per process (seconds on a busy CPU); a service runs many jobs on the same data."""
    from mnist1d.data import get_dataset_args, make_dataset

    # make_dataset generates locally from its own fixed seed; get_dataset() would download.
    data = make_dataset(get_dataset_args())
    return data["x"], data["y"], data["x_test"], data["y_test"]


def _digits(split_seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.data.astype(np.float32) / 16.0
    rest, test = carve(x, digits.target, 0.2, split_seed + 1)
    return rest.x.numpy(), rest.y.numpy(), test.x.numpy(), test.y.numpy()


def _cifar10(data_dir: str | Path | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if data_dir is None:
        raise FileNotFoundError("field 'data_dir': cifar10 needs --data-dir with the python batches (value None)")
    root = Path(data_dir)
    for candidate in (root, root / "cifar-10-batches-py"):
        if (candidate / "test_batch").is_file():
            root = candidate
            break
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"field 'data_dir': CIFAR-10 python batches not found in {str(root)!r} (missing {', '.join(missing)}); "
            "unpack cifar-10-python.tar.gz there - Esper never downloads data"
        )

    def load(name: str) -> tuple[np.ndarray, np.ndarray]:
        with open(root / name, "rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
        x = np.asarray(batch[b"data"], dtype=np.float32).reshape(-1, 3, 32, 32) / 255.0
        return x, np.asarray(batch[b"labels"], dtype=np.int64)

    parts = [load(n) for n in names[:-1]]
    x_test, y_test = load("test_batch")
    mean = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.array([0.2470, 0.2435, 0.2616], dtype=np.float32).reshape(1, 3, 1, 1)
    x = np.concatenate([p[0] for p in parts])
    return (x - mean) / std, np.concatenate([p[1] for p in parts]), (x_test - mean) / std, y_test


def load_task(
    name: str = "mnist1d",
    *,
    data_dir: str | Path | None = None,
    val_fraction: float | None = None,
    split_seed: int = 0,
    max_train_samples: int | None = None,
    host_channels: int | None = None,
) -> Task:
    """Load task ``name`` with a validation split carved from its training data.

    ``val_fraction`` defaults to the task's own (:data:`VAL_FRACTIONS`, else 10%).
    ``max_train_samples`` keeps the first N training rows (tests); ``host_channels``
    overrides the width of the task's default host. A ``package.module:function``
    name is loaded from that module (:func:`esper.tolaria.usertask.load_reference`).
    """
    if ":" in name:
        from esper.tolaria.usertask import load_reference

        return load_reference(name, data_dir=data_dir, max_train_samples=max_train_samples, host_channels=host_channels)
    if val_fraction is None:
        val_fraction = VAL_FRACTIONS.get(name, 0.1)
    if name == "mnist1d":
        x, y, x_test, y_test = _mnist1d()
        channels = host_channels or 8

        def build_host() -> nn.Module:
            return ConvHost1D(channels=channels, num_classes=10, length=40)

        slots = dict(ConvHost1D.DEFAULT_SLOTS)
    elif name == "digits":
        x, y, x_test, y_test = _digits(split_seed)
        channels = host_channels or 8

        def build_host() -> nn.Module:
            return ConvHost1D(channels=channels, num_classes=10, length=64)

        slots = dict(ConvHost1D.DEFAULT_SLOTS)
    elif name == "cifar10":
        x, y, x_test, y_test = _cifar10(data_dir)
        channels = host_channels or 16

        def build_host() -> nn.Module:
            return ConvHost2D(channels=channels, num_classes=10)

        slots = dict(ConvHost2D.DEFAULT_SLOTS)
    else:
        raise ValueError(f"field 'task': unknown task {name!r} (known: {', '.join(TASKS)})")
    if max_train_samples is not None and max_train_samples < 2:
        raise ValueError(f"field 'max_train_samples': must be >= 2 (value {max_train_samples!r})")
    train, val = carve(np.asarray(x), np.asarray(y), val_fraction, split_seed)
    if max_train_samples is not None:
        train = Split(train.x[:max_train_samples], train.y[:max_train_samples])
    return Task(
        name=name,
        train=train,
        val=val,
        test=_split(np.asarray(x_test), np.asarray(y_test)),
        num_classes=10,
        build_host=build_host,
        slots=slots,
    )
