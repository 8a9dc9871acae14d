import pickle

import numpy as np
import pytest
import torch

from esper.tolaria.tasks import carve, load_task


def test_mnist1d_carves_validation_from_train_with_a_fixed_seed():
    task = load_task("mnist1d")
    assert (len(task.train), len(task.val), len(task.test)) == (3800, 200, 1000)
    assert task.input_shape == (40,)
    again = load_task("mnist1d")
    assert torch.equal(task.val.x, again.val.x) and torch.equal(task.val.y, again.val.y)
    train_rows = {tuple(r) for r in task.train.x[:, :8].tolist()}
    assert not any(tuple(r) in train_rows for r in task.val.x[:, :8].tolist())


def test_split_seed_changes_the_validation_rows():
    x, y = np.arange(100).reshape(100, 1), np.arange(100)
    _, a = carve(x, y, 0.1, 0)
    _, b = carve(x, y, 0.1, 1)
    assert len(a) == 10 and not torch.equal(a.y, b.y)


def test_digits_loads_locally_with_a_host_that_fits():
    task = load_task("digits")
    assert task.input_shape == (64,)
    assert len(task.train) + len(task.val) + len(task.test) == 1797
    host = task.build_host()
    assert host(task.val.x[:3]).shape == (3, 10)


def test_cifar10_without_its_folder_names_the_path(tmp_path):
    missing = tmp_path / "no-cifar"
    with pytest.raises(FileNotFoundError, match="no-cifar"):
        load_task("cifar10", data_dir=missing)
    with pytest.raises(FileNotFoundError, match="data_dir"):
        load_task("cifar10")


def test_cifar10_reads_the_python_batches(tmp_path):
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, 20))}
        (tmp_path / name).write_bytes(pickle.dumps(batch))
    task = load_task("cifar10", data_dir=tmp_path)
    assert (len(task.train), len(task.val), len(task.test)) == (90, 10, 20)
    assert task.input_shape == (3, 32, 32)
    assert task.build_host()(task.val.x).shape == (10, 10)


def test_unknown_task_and_bad_options_name_the_field():
    with pytest.raises(ValueError, match=r"'task'.*imagenet"):
        load_task("imagenet")
    with pytest.raises(ValueError, match="max_train_samples"):
        load_task("digits", max_train_samples=1)
    with pytest.raises(ValueError, match="val_fraction"):
        load_task("digits", val_fraction=1.5)
