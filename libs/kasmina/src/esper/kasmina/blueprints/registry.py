"""The blueprint registry: named recipes that build a seed from a slot's feature shape.

A blueprint knows which layer kinds it serves, its default configuration, and
its exact parameter count for a shape and config before anything is built.
Shapes are per sample: ``(C, L)`` for conv1d, ``(C, H, W)`` for conv2d, ``(D,)``
for linear and ``(T, D)`` for sequence features.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from torch import nn

ConfigValue = int | float | str | bool
Config = Mapping[str, ConfigValue]

#: layer kind -> rank of its per-sample feature shape.
LAYER_KIND_RANK: dict[str, int] = {"linear": 1, "conv1d": 2, "sequence": 2, "conv2d": 3}


@runtime_checkable
class Blueprint(Protocol):
    name: str
    layer_kinds: tuple[str, ...]
    default_config: dict[str, ConfigValue]

    def param_count(
        self, input_shape: tuple[int, ...], config: Config | None = None, *, layer_kind: str | None = None
    ) -> int: ...

    def build(
        self, input_shape: tuple[int, ...], config: Config | None = None, *, layer_kind: str | None = None
    ) -> nn.Module: ...


@dataclass(frozen=True)
class Resolved:
    """A shape and config checked against a blueprint: what its recipes read."""

    kind: str
    shape: tuple[int, ...]
    config: dict[str, ConfigValue]

    @property
    def channels(self) -> int:
        """C for conv kinds (first dimension), D for linear and sequence kinds (last dimension)."""
        return self.shape[0] if self.kind.startswith("conv") else self.shape[-1]

    @property
    def spatial_dims(self) -> int:
        return len(self.shape) - 1 if self.kind.startswith("conv") else 0


Check = Callable[[Resolved], None]
Count = Callable[[Resolved], int]
Make = Callable[[Resolved], nn.Module]


@dataclass(frozen=True)
class BlueprintSpec:
    """A blueprint made of three functions over a :class:`Resolved` shape and config."""

    name: str
    layer_kinds: tuple[str, ...]
    default_config: dict[str, ConfigValue]
    count: Count
    make: Make
    check: Check = field(default=lambda r: None)
    description: str = ""

    def fits(self, input_shape: tuple[int, ...], layer_kind: str | None = None) -> bool:
        """Whether this blueprint serves features of this shape (and kind, if given)."""
        try:
            self.resolve(input_shape, None, layer_kind=layer_kind)
        except ValueError:
            return False
        return True

    def resolve(
        self, input_shape: tuple[int, ...], config: Config | None, *, layer_kind: str | None = None
    ) -> Resolved:
        """Check shape, kind and config; raise ValueError naming the field and value that do not fit."""
        shape = tuple(int(s) for s in input_shape)
        if not shape or any(s < 1 for s in shape):
            raise ValueError(f"blueprint {self.name!r}: input_shape {input_shape!r} must be positive sizes")
        if layer_kind is None:
            kinds = [k for k in self.layer_kinds if LAYER_KIND_RANK[k] == len(shape)]
            if not kinds:
                raise ValueError(
                    f"blueprint {self.name!r} serves {', '.join(self.layer_kinds)} features; "
                    f"input_shape {shape!r} (rank {len(shape)}) fits none of them"
                )
            layer_kind = kinds[0]
        if layer_kind not in self.layer_kinds:
            raise ValueError(
                f"blueprint {self.name!r} serves {', '.join(self.layer_kinds)} features, not layer_kind {layer_kind!r}"
            )
        if LAYER_KIND_RANK[layer_kind] != len(shape):
            raise ValueError(
                f"blueprint {self.name!r}: input_shape {shape!r} has rank {len(shape)}, "
                f"{layer_kind} features have rank {LAYER_KIND_RANK[layer_kind]}"
            )
        resolved = Resolved(layer_kind, shape, _merge_config(self.name, self.default_config, config))
        self.check(resolved)
        return resolved

    def param_count(
        self, input_shape: tuple[int, ...], config: Config | None = None, *, layer_kind: str | None = None
    ) -> int:
        """Exact number of parameters :meth:`build` would create, computed without building."""
        return self.count(self.resolve(input_shape, config, layer_kind=layer_kind))

    def build(
        self, input_shape: tuple[int, ...], config: Config | None = None, *, layer_kind: str | None = None
    ) -> nn.Module:
        """A fresh seed module (float32, CPU) mapping (N, *input_shape) to the same shape, identity at init."""
        return self.make(self.resolve(input_shape, config, layer_kind=layer_kind))


def _merge_config(name: str, defaults: Mapping[str, ConfigValue], config: Config | None) -> dict[str, ConfigValue]:
    merged = dict(defaults)
    for key, value in (config or {}).items():
        if key not in defaults:
            known = ", ".join(sorted(defaults)) or "none"
            raise ValueError(f"blueprint {name!r}: unknown config key {key!r} (known: {known})")
        default = defaults[key]
        if isinstance(default, bool) or isinstance(value, bool):
            ok = isinstance(value, bool) and isinstance(default, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int)
        elif isinstance(default, float):
            ok = isinstance(value, int | float)
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise ValueError(
                f"blueprint {name!r}: config {key}={value!r} must be {type(default).__name__} "
                f"like its default {default!r}"
            )
        merged[key] = float(value) if isinstance(default, float) else value
    return merged


def require(condition: bool, blueprint: str, message: str) -> None:
    """Raise the ValueError a config that does not fit the shape gets."""
    if not condition:
        raise ValueError(f"blueprint {blueprint!r}: {message}")


_REGISTRY: dict[str, BlueprintSpec] = {}


def register(spec: BlueprintSpec) -> BlueprintSpec:
    """Add a blueprint to the registry; a name can be registered once."""
    if spec.name in _REGISTRY:
        raise ValueError(f"blueprint {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def get_blueprint(name: str) -> BlueprintSpec:
    """The blueprint called ``name``; ValueError listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown blueprint {name!r} (known: {', '.join(sorted(_REGISTRY))})") from None


def list_blueprints(input_shape: tuple[int, ...] | None = None, layer_kind: str | None = None) -> list[str]:
    """Names of registered blueprints, sorted; only those that fit ``input_shape`` (and ``layer_kind``) if given."""
    if layer_kind is not None and layer_kind not in LAYER_KIND_RANK:
        raise ValueError(f"unknown layer_kind {layer_kind!r} (known: {', '.join(LAYER_KIND_RANK)})")
    names = sorted(_REGISTRY)
    if input_shape is None:
        return [n for n in names if layer_kind is None or layer_kind in _REGISTRY[n].layer_kinds]
    return [n for n in names if _REGISTRY[n].fits(tuple(input_shape), layer_kind)]
