"""Task variants for Simic's episodes: generated, so training and held-out evaluation never share one.

A :class:`Variant` names a family and a generation seed; everything else about
the data (noise, shifts, template scale, split) is drawn from that seed, so a
variant is reproducible from its id alone. Training variants take seeds from
:data:`TRAIN_SEEDS`, held-out variants from :data:`HELDOUT_SEEDS`: the ranges
are disjoint, so a policy is never evaluated on a variant it trained on.

Families:

* ``mnist1d``: MNIST-1D generated with ``mnist1d.data.make_dataset`` (never
  ``get_dataset``, which downloads) with the seed, correlated and i.i.d. noise,
  translation, shear and template scale drawn per variant; ConvHost1D host of
  6 or 8 channels.
* ``digits``: scikit-learn's bundled 8x8 digits with a per-variant split,
  pixel shift and additive noise; ConvHost1D over the 64 pixels.
* ``mnist1d-noisy``: an ``mnist1d`` variant whose training labels (and so the
  validation rows carved from them) are wrong for a fraction drawn per variant
  in [0, 0.5] (each wrong label another class, uniformly); the test labels stay
  right. Capacity that memorizes the wrong labels could make growing hurt here
  (measured in ``libs/simic/README.md``: on these hosts it did not, they
  underfit even so). Not in the default :data:`FAMILIES`, which keep
  the variants (and the measurements) of earlier policies; name it to use it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from esper.kasmina.hosts import ConvHost1D
from esper.tolaria.tasks import Split, Task, carve

FAMILIES = ("mnist1d", "digits")
#: every family a :class:`Variant` may name (:data:`FAMILIES` is what ``variant`` alternates by default)
ALL_FAMILIES = (*FAMILIES, "mnist1d-noisy")
#: the largest share of wrong training labels an ``mnist1d-noisy`` variant draws
MAX_LABEL_NOISE = 0.5
TRAIN_SEEDS = range(1_000, 100_000)
HELDOUT_SEEDS = range(900_000, 1_000_000)
SPLITS = ("train", "heldout")


@dataclass(frozen=True, slots=True)
class Variant:
    """One generated task: ``family`` and the ``seed`` every property of its data is drawn from."""

    family: str
    seed: int
    samples: int = 2_000

    def __post_init__(self) -> None:
        if self.family not in ALL_FAMILIES:
            raise ValueError(
                f"field 'family': unknown variant family {self.family!r} (known: {', '.join(ALL_FAMILIES)})"
            )

    @property
    def variant_id(self) -> str:
        return f"{self.family}-{self.seed}"

    @property
    def split(self) -> str:
        return "heldout" if self.seed in HELDOUT_SEEDS else "train"


def variant(split: str, index: int, *, samples: int = 2_000, families: tuple[str, ...] = FAMILIES) -> Variant:
    """The ``index``-th variant of ``split`` (``families`` alternate)."""
    if split not in SPLITS:
        raise ValueError(f"field 'split': must be one of {', '.join(SPLITS)} (value {split!r})")
    seeds = TRAIN_SEEDS if split == "train" else HELDOUT_SEEDS
    if not 0 <= index < len(seeds):
        raise ValueError(f"field 'index': must be in [0, {len(seeds)}) (value {index!r})")
    return Variant(families[index % len(families)], seeds[index], samples)


def _mnist1d(v: Variant) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    from mnist1d.data import get_dataset_args, make_dataset

    rng = np.random.default_rng(v.seed)
    args = get_dataset_args()
    args.num_samples = v.samples
    args.seed = v.seed
    args.corr_noise_scale = float(rng.uniform(0.15, 0.4))
    args.iid_noise_scale = float(rng.uniform(0.01, 0.05))
    args.max_translation = int(rng.integers(32, 57))
    args.shear_scale = float(rng.uniform(0.5, 1.0))
    args.scale_coeff = float(rng.uniform(0.3, 0.6))
    data = make_dataset(args)
    channels = int(rng.choice([6, 8]))
    return data["x"], data["y"], data["x_test"], data["y_test"], channels


def label_noise(v: Variant) -> float:
    """The share of ``v``'s training labels that are wrong (0 but for ``mnist1d-noisy``)."""
    if v.family != "mnist1d-noisy":
        return 0.0
    return float(np.random.default_rng([v.seed, 1]).uniform(0.0, MAX_LABEL_NOISE))


def _mislabel(y: np.ndarray, share: float, seed: int) -> np.ndarray:
    """``y`` with ``round(share * len(y))`` labels, chosen at random, moved to another class uniformly."""
    rng = np.random.default_rng([seed, 2])
    y = y.copy()
    wrong = rng.choice(len(y), size=round(share * len(y)), replace=False)
    y[wrong] = (y[wrong] + rng.integers(1, 10, size=len(wrong))) % 10
    return y


def _noisy(v: Variant) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    x, y, x_test, y_test, channels = _mnist1d(v)
    return x, _mislabel(y, label_noise(v), v.seed), x_test, y_test, channels


def _digits(v: Variant) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(v.seed)
    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0
    images = np.roll(images, shift=(int(rng.integers(-1, 2)), int(rng.integers(-1, 2))), axis=(1, 2))
    x = images.reshape(len(images), -1) + rng.normal(0.0, rng.uniform(0.0, 0.15), (len(images), 64)).astype(np.float32)
    rest, test = carve(x, digits.target, 0.2, v.seed)
    return rest.x.numpy(), rest.y.numpy(), test.x.numpy(), test.y.numpy(), 8


@functools.lru_cache(maxsize=16)
def _generated(v: Variant) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    return {"mnist1d": _mnist1d, "digits": _digits, "mnist1d-noisy": _noisy}[v.family](v)


def load_variant(v: Variant, *, max_train_samples: int | None = None, val_fraction: float = 0.1) -> Task:
    """The Tolaria :class:`Task` of variant ``v`` (validation carved from its training rows)."""
    x, y, x_test, y_test, channels = _generated(v)
    length = x.shape[1]
    train, val = carve(x, y, val_fraction, v.seed)
    if max_train_samples is not None:
        train = Split(train.x[:max_train_samples], train.y[:max_train_samples])

    def build_host() -> nn.Module:
        return ConvHost1D(channels=channels, num_classes=10, length=length)

    test = Split(torch.as_tensor(x_test, dtype=torch.float32), torch.as_tensor(y_test, dtype=torch.int64))
    return Task(
        name=v.variant_id,
        train=train,
        val=val,
        test=test,
        num_classes=10,
        build_host=build_host,
        slots=dict(ConvHost1D.DEFAULT_SLOTS),
    )
