"""Blueprints: at least six, exact parameter counts before building, identity at init, clear errors."""

from __future__ import annotations

import pytest
import torch

from esper.kasmina import get_blueprint, list_blueprints
from esper.kasmina.blueprints import LAYER_KIND_RANK

REQUIRED = {"conv_light", "conv_heavy", "depthwise", "se_attention", "norm", "bottleneck", "mlp", "lowrank"}

SHAPES = {"conv1d": (8, 19), "conv2d": (6, 5, 7), "linear": (12,), "sequence": (7, 16)}

CONFIGS: dict[str, list[dict[str, int | float]]] = {
    "conv_light": [{}, {"kernel_size": 5}, {"kernel_size": 1}],
    "conv_heavy": [{}, {"expansion": 0.5}, {"kernel_size": 5, "expansion": 3}],
    "depthwise": [{}, {"kernel_size": 3}],
    "se_attention": [{}, {"reduction": 1}, {"reduction": 4}],
    "bottleneck": [{}, {"reduction": 4, "kernel_size": 5}],
    "mlp": [{}, {"expansion": 0.25}, {"expansion": 4}],
    "lowrank": [{}, {"rank": 1}, {"rank": 7}],
    "norm": [{}],
}


def _cases() -> list[tuple[str, str, dict[str, int | float]]]:
    cases = []
    for name, configs in CONFIGS.items():
        for kind in get_blueprint(name).layer_kinds:
            for config in configs:
                cases.append((name, kind, config))
    return cases


def test_the_catalogue_has_the_required_blueprints() -> None:
    assert REQUIRED <= set(list_blueprints())
    assert len(list_blueprints()) >= 6


@pytest.mark.parametrize(("name", "kind", "config"), _cases())
def test_param_count_is_exact_before_building(name: str, kind: str, config: dict[str, int | float]) -> None:
    spec = get_blueprint(name)
    shape = SHAPES[kind]
    predicted = spec.param_count(shape, config, layer_kind=kind)
    module = spec.build(shape, config, layer_kind=kind)
    assert predicted == sum(p.numel() for p in module.parameters())
    assert predicted > 0


@pytest.mark.parametrize(("name", "kind", "config"), _cases())
def test_a_fresh_seed_is_the_identity_and_keeps_the_shape(name: str, kind: str, config: dict[str, int | float]) -> None:
    module = get_blueprint(name).build(SHAPES[kind], config, layer_kind=kind)
    x = torch.randn(3, *SHAPES[kind])
    assert torch.equal(module(x), x)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))
    y = module(x)
    assert y.shape == x.shape
    assert not torch.allclose(y, x), "a trained seed must be able to change the features"


def test_list_blueprints_filters_by_shape_and_kind() -> None:
    assert set(list_blueprints((12,))) == {"mlp", "lowrank", "norm"}
    conv = {"conv_light", "conv_heavy", "depthwise", "se_attention", "bottleneck", "norm"}
    assert set(list_blueprints((6, 5, 7))) == conv
    assert set(list_blueprints((7, 16), layer_kind="sequence")) == {"mlp", "lowrank", "norm", "attention"}
    assert "mlp" not in list_blueprints((8, 19), layer_kind="conv1d")
    assert list_blueprints((2, 3, 4, 5)) == []
    assert set(LAYER_KIND_RANK) == set(SHAPES)


def test_unknown_blueprint_lists_the_known_names() -> None:
    with pytest.raises(ValueError, match=r"unknown blueprint 'conv_giant' \(known: attention, bottleneck, conv_heavy"):
        get_blueprint("conv_giant")


@pytest.mark.parametrize(
    ("name", "shape", "config", "message"),
    [
        ("conv_light", (8, 19), {"kernel_size": 4}, "kernel_size=4 must be a positive odd integer"),
        ("conv_light", (8, 19), {"kernal_size": 3}, "unknown config key 'kernal_size'"),
        ("conv_light", (8, 19), {"kernel_size": "3"}, "kernel_size='3' must be int"),
        ("conv_light", (12,), {}, r"input_shape \(12,\) \(rank 1\) fits none"),
        ("conv_heavy", (8, 19), {"expansion": -1.0}, "expansion=-1.0 must be > 0"),
        ("se_attention", (8, 19), {"reduction": 16}, "reduction=16 exceeds the 8 channels"),
        ("bottleneck", (8, 19), {"reduction": 0}, "reduction=0 must be >= 1"),
        ("norm", (6, 19), {"groups": 4}, "groups=4 must divide the 6 channels"),
        ("lowrank", (12,), {"rank": 13}, r"rank=13 must be an integer in \[1, 12\]"),
        ("lowrank", (12,), {"rank": 2.5}, "rank=2.5 must be int"),
        ("mlp", (6, 5, 7), {}, "fits none"),
        ("mlp", (0,), {}, "must be positive sizes"),
    ],
)
def test_config_or_shape_that_does_not_fit_is_a_clear_error(name, shape, config, message) -> None:
    spec = get_blueprint(name)
    with pytest.raises(ValueError, match=message):
        spec.param_count(shape, config)
    with pytest.raises(ValueError, match=message):
        spec.build(shape, config)


def test_layer_kind_must_match_the_shape_rank() -> None:
    with pytest.raises(ValueError, match="rank 2, linear features have rank 1"):
        get_blueprint("mlp").build((7, 16), layer_kind="linear")
    with pytest.raises(ValueError, match="not layer_kind 'sequence'"):
        get_blueprint("conv_light").build((7, 16), layer_kind="sequence")
