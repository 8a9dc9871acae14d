"""Your model, your data: a :class:`~esper.tolaria.tasks.Task` from a model factory and your own datasets.

:func:`define_task` is the builder: a function that makes the model, the
training data (a ``Dataset``, a ``DataLoader``, an ``(x, y)`` pair of arrays
or tensors), optionally validation and test data, the slot map, and the
objective. Tolaria then trains it exactly as it trains its built-in tasks:
gradient isolation, gates, the governor, checkpoint/resume and reports.

Put a function that returns ``define_task(...)`` in an importable module and
name it as the job's task, ``esper train --task my_package.my_module:make_task``
(a Tolaria service runs the same name when its machine has the module).

What Tolaria does with the data, and why:

- Every split is loaded into memory once, as tensors. Tolaria draws the
  batches itself (the job's ``batch_size``, an order from the run's seed), so
  a resumed run continues bit for bit; a ``DataLoader`` therefore contributes
  its ``dataset`` (its batching, shuffling and workers are not used), and data
  augmentation that happens inside a dataset's ``__getitem__`` is applied once.
  Data that does not fit in memory is not supported yet.
- Validation, when not given, is carved from the training data with
  ``split_seed`` (fixed: runs with different seeds see the same validation
  set); so is the test split. Decisions read validation only; test numbers
  are for the report.
- ``objective="classification"`` (default): logits (N, classes), integer
  labels, cross-entropy, accuracy. ``"regression"``: any output shape, float
  targets, mean squared error, and R² as the score every decision reads.
- The factory is called again on ``--resume`` and must give the same data.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from esper.tolaria.objective import CLASSIFICATION, Metric, Objective, ObjectiveName, Regression
from esper.tolaria.precision import Autocast
from esper.tolaria.tasks import Split, Task

DataSource = Dataset | DataLoader | tuple[Any, Any] | Split


def define_task(
    *,
    model: Callable[[], nn.Module],
    train: DataSource,
    slots: Mapping[str, str],
    val: DataSource | None = None,
    test: DataSource | None = None,
    objective: ObjectiveName | Objective = "classification",
    layouts: Mapping[str, str] | None = None,
    metrics: Mapping[str, Metric] | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    name: str | None = None,
) -> Task:
    """A Tolaria task over your model and data (see the module docstring).

    ``model``: a no-argument factory returning a fresh ``nn.Module`` (Tolaria
    seeds torch before calling it). ``slots``: ``{"s1": "dotted.module.name"}``;
    ``layouts`` declares layouts where inference could be wrong
    (``{"s1": "sequence"}``). ``metrics``: ``{"name": fn(outputs, targets) -> float}``
    computed on the whole test split for the report. The model is built once
    here and run on two samples, so a wrong slot name or output shape fails now
    with the field named, not an hour into a run.
    """
    if not callable(model):
        raise ValueError(f"field 'model': must be a function that returns an nn.Module (value {model!r})")
    regression = objective == "regression" or isinstance(objective, Regression)
    if isinstance(objective, str) and objective not in ("classification", "regression"):
        raise ValueError(f"field 'objective': must be 'classification' or 'regression' (value {objective!r})")
    x, y = _tensors(train, "train", regression)
    if test is None:
        (x, y), test_xy = _carve(x, y, test_fraction, split_seed + 1, "test_fraction")
    else:
        test_xy = _tensors(test, "test", regression)
    if val is None:
        (x, y), val_xy = _carve(x, y, val_fraction, split_seed, "val_fraction")
    else:
        val_xy = _tensors(val, "val", regression)
    if isinstance(objective, Objective):
        chosen = objective
    else:
        chosen = Regression.fitted(y) if regression else CLASSIFICATION
    labels = torch.cat([y, val_xy[1], test_xy[1]])
    num_classes = 0 if regression else int(labels.max()) + 1
    task = Task(
        name=name or getattr(model, "__name__", "custom"),
        train=Split(x, y),
        val=Split(*val_xy),
        test=Split(*test_xy),
        num_classes=num_classes,
        build_host=model,
        slots=dict(slots),
        layouts=dict(layouts or {}),
        objective=chosen,
        metrics=dict(metrics or {}),
    )
    _check(task)
    return task


def _tensors(source: DataSource, field: str, regression: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``source`` as two tensors (x (N, ...), y (N, ...)), inputs float32 unless integer (token ids)."""
    if isinstance(source, DataLoader):
        source = source.dataset  # Tolaria batches and orders the data itself (exact resume)
    if isinstance(source, Split):
        x, y = source.x, source.y
    elif isinstance(source, TensorDataset) and len(source.tensors) == 2:
        x, y = source.tensors
    elif isinstance(source, tuple) and len(source) == 2:
        x, y = (_as_tensor(part, f"{field}[{i}]") for i, part in enumerate(source))
    elif isinstance(source, IterableDataset):
        x, y = _stack(list(source), field)
    elif isinstance(source, Dataset) and hasattr(source, "__len__"):
        x, y = _stack([source[i] for i in range(len(source))], field)
    else:
        raise ValueError(
            f"field {field!r}: expected a Dataset, DataLoader or (x, y) pair (value of type {type(source).__name__})"
        )
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"field {field!r}: needs as many targets as inputs, at least one (got {len(x)} and {len(y)})")
    if x.is_floating_point():
        x = x.float()
    if regression:
        y = y.float()
    elif y.is_floating_point() and not bool((y == y.round()).all()):
        raise ValueError(f"field {field!r}: classification needs integer labels (got {y.dtype} with fractions)")
    else:
        y = y.long()
        if y.dim() != 1 or int(y.min()) < 0:
            raise ValueError(f"field {field!r}: labels must be (N,) integers >= 0 (got shape {tuple(y.shape)})")
    return x.contiguous(), y.contiguous()


def _as_tensor(part: Any, field: str) -> torch.Tensor:
    try:
        return part if isinstance(part, torch.Tensor) else torch.as_tensor(np.asarray(part))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"field {field!r}: cannot be made a tensor ({exc})") from None


def _stack(items: list[Any], field: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not items or not all(isinstance(item, tuple | list) and len(item) == 2 for item in items):
        raise ValueError(f"field {field!r}: every item must be an (input, target) pair")
    xs = [_as_tensor(item[0], f"{field}.input") for item in items]
    ys = [_as_tensor(item[1], f"{field}.target") for item in items]
    return torch.stack(xs), torch.stack(ys)


def _carve(
    x: torch.Tensor, y: torch.Tensor, fraction: float, seed: int, field: str
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """(rest, carved), ``fraction`` of the rows carved in an order fixed by ``seed`` (as :func:`tasks.carve`)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"field {field!r}: must be in (0, 1) (value {fraction!r})")
    if len(y) < 2:
        raise ValueError(f"field {field!r}: {len(y)} training rows cannot be split")
    order = torch.as_tensor(np.random.default_rng(seed).permutation(len(y)))
    n = min(len(y) - 1, max(1, round(len(y) * fraction)))
    carved, rest = order[:n], order[n:]
    return (x[rest], y[rest]), (x[carved], y[carved])


@torch.no_grad()
def _check(task: Task) -> None:
    host = task.build_host()
    if not isinstance(host, nn.Module):
        raise ValueError(f"field 'model': the factory returned {type(host).__name__}, not an nn.Module")
    modules = {name for name, _ in host.named_modules() if name}
    missing = {sid: m for sid, m in task.slots.items() if m not in modules}
    if missing:
        raise ValueError(f"field 'slots': no such modules {missing} (modules: {', '.join(sorted(modules))})")
    host.eval()
    out = host(task.train.x[:2])
    if not isinstance(out, torch.Tensor) or out.shape[0] != min(2, len(task.train)):
        raise ValueError("field 'model': the model must return one tensor (N, ...) for a batch of N inputs")
    if task.objective.name == "classification" and (out.dim() != 2 or out.shape[1] < task.num_classes):
        raise ValueError(
            f"field 'model': classification needs logits (N, classes) with classes >= {task.num_classes} "
            f"(the labels' largest value + 1); the model returns {tuple(out.shape)}"
        )
    if task.objective.name == "regression" and out[0].numel() != task.train.y[0].numel():
        raise ValueError(
            f"field 'model': outputs {tuple(out.shape[1:])} per sample, targets {tuple(task.train.y.shape[1:])}"
        )


def load_object(reference: str, field: str = "task") -> Any:
    """The object ``package.module:name`` names; ValueError naming ``field`` when it cannot be imported."""
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"field {field!r}: expected 'package.module:function' (value {reference!r})")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"field {field!r}: cannot import {module_name!r} ({exc}); install the package that provides it "
            f"where the run trains (value {reference!r})"
        ) from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"field {field!r}: {module_name!r} has no {attribute!r} (value {reference!r})") from None


def load_reference(
    reference: str,
    *,
    data_dir: str | None = None,
    max_train_samples: int | None = None,
    host_channels: int | None = None,
) -> Task:
    """The task ``package.module:function`` returns (the job's other fields applied).

    The function is called with ``data_dir=`` when the job sets one (it must
    then accept that keyword); ``max_train_samples`` keeps the first N training
    rows. ``host_channels`` resizes only the built-in tasks' hosts.
    """
    factory = load_object(reference)
    if not callable(factory):
        raise ValueError(f"field 'task': {reference!r} is a {type(factory).__name__}, not a function")
    if host_channels is not None:
        raise ValueError(f"field 'host_channels': only built-in tasks have a host to resize (value {host_channels!r})")
    kwargs: dict[str, Any] = {}
    if data_dir is not None:
        if "data_dir" not in inspect.signature(factory).parameters:
            raise ValueError(f"field 'data_dir': {reference!r} takes no data_dir argument (value {data_dir!r})")
        kwargs["data_dir"] = data_dir
    task = factory(**kwargs)
    if not isinstance(task, Task):
        raise ValueError(f"field 'task': {reference!r} returned {type(task).__name__}, not a Task (use define_task)")
    if max_train_samples is not None:
        task = _trimmed(task, max_train_samples)
    return task


def _trimmed(task: Task, rows: int) -> Task:
    return dataclasses.replace(task, train=Split(task.train.x[:rows], task.train.y[:rows]))


@torch.no_grad()
def test_metrics(
    model: nn.Module, task: Task, batch_size: int = 1000, autocast: Autocast = nullcontext
) -> dict[str, float]:
    """The task's own ``metrics`` on its whole test split (eval mode, restored afterwards), the forward
    passes under ``autocast`` (the run's precision)."""
    if not task.metrics:
        return {}
    was_training = model.training
    model.eval()
    try:
        with autocast():
            batches = [model(task.test.x[i : i + batch_size]) for i in range(0, len(task.test), batch_size)]
        outputs = torch.cat(batches)
    finally:
        model.train(was_training)
    # on the CPU, and never bfloat16: a task's metric may well be numpy or scikit-learn code
    outputs, targets = outputs.detach().cpu(), task.test.y.cpu()
    if outputs.dtype == torch.bfloat16:
        outputs = outputs.float()
    return {name: float(metric(outputs, targets)) for name, metric in task.metrics.items()}


__all__ = ["DataSource", "define_task", "load_object", "load_reference", "test_metrics"]
