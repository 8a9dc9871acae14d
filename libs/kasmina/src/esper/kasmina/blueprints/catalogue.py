"""The blueprint options a host offers at its slots: each blueprint with the configuration it is built with.

Tolaria prices every option at every slot (``esper.kasmina.graph``) and
publishes the ones that fit in the run's ``ModelGraph``; a policy chooses
among them. The order is the order options are listed in the graph. The conv
options are the configurations the growth benchmark measured on MNIST-1D.
"""

from __future__ import annotations

from typing import NamedTuple

from esper.kasmina.blueprints.registry import ConfigValue, get_blueprint


class Option(NamedTuple):
    """A blueprint name and the configuration it is built with (merged over the blueprint's defaults)."""

    blueprint: str
    config: dict[str, ConfigValue]


#: The default catalogue: conv blueprints for (C, L) and (C, H, W) features, dense ones for (D,) and (T, D),
#: self-attention for (T, D).
CATALOGUE: tuple[Option, ...] = (
    Option("conv_heavy", {"kernel_size": 3, "expansion": 3.5}),
    Option("bottleneck", {"kernel_size": 3, "reduction": 2}),
    Option("conv_light", {"kernel_size": 3}),
    Option("depthwise", {"kernel_size": 5}),
    Option("se_attention", {"reduction": 2}),
    Option("mlp", {"expansion": 2.0}),
    Option("lowrank", {"rank": 4}),
    Option("norm", {"groups": 1}),
    Option("attention", {"heads": 1}),
)


def priced_options(
    shape: tuple[int, ...], layer_kind: str | None, catalogue: tuple[Option, ...] = CATALOGUE
) -> list[tuple[Option, int]]:
    """The options that fit features of ``shape`` (and ``layer_kind``), each with its exact parameter count."""
    priced = []
    for option in catalogue:
        try:
            count = get_blueprint(option.blueprint).param_count(shape, option.config, layer_kind=layer_kind)
        except ValueError:
            continue
        priced.append((option, count))
    return priced
