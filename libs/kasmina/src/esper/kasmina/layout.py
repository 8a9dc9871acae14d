"""Feature layouts: how a slot's per-sample features are laid out, so blueprints that fit can be chosen.

``linear`` (D,), ``sequence`` (T, D), ``conv1d`` (C, L), ``conv2d`` (C, H, W);
the names are Leyline's ``LAYOUTS``. ``vector`` is accepted wherever a user
names a layout and means ``linear`` (:func:`normalize_layout`).

Rank-2 features are ambiguous: (T, D) tokens or (C, L) channels. The layer
that made them decides, and that is often not the slot's own module: a ReLU
after a Linear carries the Linear's layout. :class:`DataFlow` records, during
one forward pass, which module produced each module's input, so inference
walks back through layout-preserving modules (activations, dropout,
containers) to the first one that fixes the layout.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from esper.leyline import LAYOUTS

#: Names a user may give a layout, and the layout each means.
LAYOUT_ALIASES = {"vector": "linear"}

_TRANSFORMER_BLOCKS = (
    nn.MultiheadAttention,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
    nn.TransformerEncoder,
    nn.TransformerDecoder,
    nn.Transformer,
)
#: Modules whose rank-2 output is (T, D): they act on the last dimension.
_SEQUENCE_MODULES = (nn.Linear, nn.Bilinear, nn.LayerNorm, nn.Embedding, nn.RNNBase, *_TRANSFORMER_BLOCKS)
#: Modules whose rank-2 output is (C, L): they act on channels along a length.
_CONV1D_MODULES = (
    nn.Conv1d,
    nn.ConvTranspose1d,
    nn.BatchNorm1d,
    nn.InstanceNorm1d,
    nn.GroupNorm,
    nn.MaxPool1d,
    nn.AvgPool1d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveAvgPool1d,
)


def normalize_layout(layout: str, field: str = "layout") -> str:
    """``layout`` in Leyline's vocabulary (``vector`` -> ``linear``); ValueError naming ``field`` otherwise."""
    name = LAYOUT_ALIASES.get(layout, layout) if isinstance(layout, str) else layout
    if name not in LAYOUTS:
        known = ", ".join((*LAYOUTS, *LAYOUT_ALIASES))
        raise ValueError(f"field {field!r}: unknown layout {layout!r} (known: {known})")
    return name


def layout_rank(layout: str) -> int:
    """The rank of per-sample features of ``layout`` (linear 1, sequence and conv1d 2, conv2d 3)."""
    return {"linear": 1, "sequence": 2, "conv1d": 2, "conv2d": 3}[normalize_layout(layout)]


def infer_layer_kind(module: nn.Module, feature_shape: tuple[int, ...], in_sequence_model: bool = False) -> str | None:
    """The layer kind of per-sample features from the slot's own module alone.

    Rank 1 is linear, rank 3 conv2d; rank 2 is a sequence after modules that act
    on the last dimension (or anywhere inside a transformer, ``in_sequence_model``),
    else conv1d. Other ranks have no kind (None). :class:`DataFlow` refines this
    by looking at the modules that fed the slot's module.
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


class DataFlow:
    """Which module produced each module's input and output, recorded during forward passes of ``host``.

    Use :meth:`record` around a forward pass, then :meth:`layout`. Tensors seen
    are kept alive while recording so that object identity is a sound link
    (a freed tensor's id could be reused by another).
    """

    def __init__(self, host: nn.Module) -> None:
        self.host = host
        self.modules = dict(host.named_modules())
        self.input_from: dict[str, str] = {}
        self.output_from: dict[str, str] = {}
        self._made_by: dict[int, str] = {}
        self._alive: list[torch.Tensor] = []

    @contextmanager
    def record(self) -> Iterator[DataFlow]:
        """Within: every module's first call links its first tensor input and its output to their producers."""
        handles = []
        for name, module in self.modules.items():
            if name:
                handles.append(module.register_forward_pre_hook(self._before(name)))
                handles.append(module.register_forward_hook(self._after(name)))
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
            self._alive.clear()

    def _before(self, name: str) -> Any:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            first = next((a for a in args if isinstance(a, torch.Tensor)), None)
            if first is not None and name not in self.input_from and id(first) in self._made_by:
                self.input_from[name] = self._made_by[id(first)]

        return hook

    def _after(self, name: str) -> Any:
        def hook(_module: nn.Module, _args: object, output: object) -> None:
            tensors = [output] if isinstance(output, torch.Tensor) else []
            if isinstance(output, tuple | list):
                tensors = [t for t in output if isinstance(t, torch.Tensor)]
            for tensor in tensors:
                # hooks fire innermost first: the first module to return a tensor is the one that made it
                first = self._made_by.setdefault(id(tensor), name)
                self._alive.append(tensor)
                if name not in self.output_from:
                    self.output_from[name] = first

        return hook

    def layout(self, module_name: str, feature_shape: tuple[int, ...], in_sequence_model: bool = False) -> str | None:
        """The layout of ``module_name``'s output features (per sample, ``feature_shape``).

        Rank 1, 3 and others as :func:`infer_layer_kind`. For rank 2 the walk goes
        from the module to the innermost module that made its output, then back
        through what fed each layout-preserving module, until a module that acts
        on the last dimension (sequence) or on channels (conv1d) is found; where
        the trail ends (the model input, a reshape), a module inside a
        transformer is a sequence and anything else conv1d.
        """
        rank = len(feature_shape)
        if rank != 2:
            return infer_layer_kind(nn.Identity(), feature_shape)
        name: str | None = module_name
        seen: set[str] = set()
        while name is not None and name not in seen:
            seen.add(name)
            name = self.output_from.get(name, name)
            module = self.modules.get(name)
            if isinstance(module, _SEQUENCE_MODULES):
                return "sequence"
            if isinstance(module, _CONV1D_MODULES):
                return "conv1d"
            if module is not None and any(True for _ in module.children()):
                break  # a container whose output no child made (computed in its forward): no trail to follow
            name = self.input_from.get(name)
        return "sequence" if in_sequence_model else "conv1d"
