"""Feature layouts: how a slot's per-sample features are laid out, so blueprints that fit can be chosen.

``linear`` (D,), ``sequence`` (T, D), ``conv1d`` (C, L), ``conv2d`` (C, H, W);
the names are Leyline's ``LAYOUTS``.
"""

from __future__ import annotations

from torch import nn

_TRANSFORMER_BLOCKS = (
    nn.MultiheadAttention,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
    nn.TransformerEncoder,
    nn.TransformerDecoder,
    nn.Transformer,
)
_SEQUENCE_MODULES = (nn.Linear, nn.LayerNorm, nn.Embedding, *_TRANSFORMER_BLOCKS)


def infer_layer_kind(module: nn.Module, feature_shape: tuple[int, ...], in_sequence_model: bool = False) -> str | None:
    """The layer kind of per-sample features: rank 1 linear, rank 3 conv2d, rank 2 sequence or conv1d.

    Rank-2 features are (T, D) sequences after modules that act on the last
    dimension (Linear, LayerNorm, attention, transformer layers) or anywhere
    inside a transformer (``in_sequence_model``), else (C, L) conv1d maps.
    Other ranks have no kind (no blueprint serves them): None.
    """
    rank = len(feature_shape)
    if rank == 1:
        return "linear"
    if rank == 3:
        return "conv2d"
    if rank == 2:
        return "sequence" if in_sequence_model or isinstance(module, _SEQUENCE_MODULES) else "conv1d"
    return None


def within_sequence_model(host: nn.Module, module_name: str) -> bool:
    """Whether the submodule ``module_name`` of ``host`` sits inside a transformer or attention block."""
    node = host
    for part in module_name.split(".")[:-1]:
        if isinstance(node, _TRANSFORMER_BLOCKS):
            return True
        node = node.get_submodule(part)
    return isinstance(node, _TRANSFORMER_BLOCKS)
