"""A blueprint's eager initialization replayed without building its modules.

A seed loaded from a kernel starts from the numbers eager construction would
have drawn (``KernelLoader(rng_init=True)``), so a run makes the same numbers
with or without kernels. Building the eager module just to draw them is most
of a warm germination's time: constructing ``nn.Module`` s is Python-heavy,
while the draws themselves are a handful of tensor ops.

:func:`record_init` builds the blueprint once under a
:class:`~torch.utils._python_dispatch.TorchDispatchMode` that records every
ATen op it runs (``empty``, ``uniform_``, ``zero_``, ...) and which recorded
tensor each parameter and buffer ends up in. :meth:`InitRecipe.replay` runs the
same ops again, in order, on the same global RNG: the same numbers, without a
module. A recipe is proved when made: replayed from the RNG state the build
started from, it must give bit-identical tensors and leave the RNG exactly
where the build left it. A build that reads a tensor's value back into Python
(whose control flow a replay could not follow), or that a replay does not
reproduce, gets no recipe, and the loader keeps building such seeds eagerly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map


@dataclass(frozen=True, slots=True)
class _Slot:
    """Stands for the recorded tensor number ``index`` in a recorded op's arguments."""

    index: int


@dataclass(frozen=True, slots=True)
class _Op:
    func: Any  # a torch._ops.OpOverload
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    outputs: tuple[int | None, ...]  # the slot each leaf of the result fills (None: not a tensor)
    #: (position, slot) of each tensor among the top-level arguments and keyword arguments; None when a tensor
    #: sits deeper (in a list): such an op is filled by ``tree_map`` (slower, and rare in initializers)
    holes: tuple[tuple[int, int], ...] | None
    kwarg_holes: tuple[tuple[str, int], ...] | None

    @classmethod
    def of(cls, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], outputs: tuple[int | None, ...]) -> _Op:
        top = [(i, a.index) for i, a in enumerate(args) if isinstance(a, _Slot)]
        top_kw = [(k, v.index) for k, v in kwargs.items() if isinstance(v, _Slot)]
        nested = sum(isinstance(leaf, _Slot) for leaf in tree_flatten((args, kwargs))[0]) != len(top) + len(top_kw)
        if nested:
            return cls(func, args, kwargs, outputs, None, None)
        return cls(func, args, kwargs, outputs, tuple(top), tuple(top_kw))


class _Recorder(TorchDispatchMode):
    """Records ATen ops with tensors replaced by slots; a tensor is known by identity, else by its memory and layout."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[_Op] = []
        self.tensors: list[torch.Tensor] = []  # kept alive, so identities and addresses are not reused
        self._by_id: dict[int, int] = {}
        self._by_layout: dict[tuple[Any, ...], int] = {}
        self.replayable = True

    @staticmethod
    def _layout(t: torch.Tensor) -> tuple[Any, ...]:
        return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype, t.device)

    def slot(self, t: torch.Tensor) -> int | None:
        """The slot of a tensor seen before (the same object, or a wrapper such as ``nn.Parameter`` of its memory)."""
        found = self._by_id.get(id(t))
        if found is None and t.numel() > 0:
            found = self._by_layout.get(self._layout(t))
            if found is not None:
                self._by_id[id(t)] = found
                self.tensors.append(t)
        return found

    def _add(self, t: torch.Tensor) -> int:
        index = len(self.tensors)
        self.tensors.append(t)
        self._by_id[id(t)] = index
        if t.numel() > 0:
            self._by_layout.setdefault(self._layout(t), index)
        return index

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}

        def to_slot(x: Any) -> Any:
            if isinstance(x, torch.Tensor):
                index = self.slot(x)
                if index is None:  # a tensor from outside the build: a replay would not have it
                    self.replayable = False
                    return None
                return _Slot(index)
            return x

        recorded_args, recorded_kwargs = tree_map(to_slot, args), tree_map(to_slot, kwargs)
        result = func(*args, **kwargs)
        outputs: list[int | None] = []
        for leaf in tree_flatten(result)[0]:
            if isinstance(leaf, torch.Tensor):
                index = self.slot(leaf)
                outputs.append(self._add(leaf) if index is None else index)
            else:
                outputs.append(None)
                if leaf is not None:  # a value read back into Python (item(), bool()): control flow may follow it
                    self.replayable = False
        self.ops.append(_Op.of(func, recorded_args, recorded_kwargs, tuple(outputs)))
        return result


@dataclass(frozen=True, slots=True)
class InitRecipe:
    """The ops that initialize a blueprint's tensors, and which slot holds each named parameter and buffer."""

    ops: tuple[_Op, ...]
    slots: int
    parameters: dict[str, int]
    buffers: dict[str, int]

    def replay(self) -> dict[str, torch.Tensor]:
        """Fresh tensors by state-dict name (parameters as ``nn.Parameter``), drawn as the eager build draws them."""
        values: list[Any] = [None] * self.slots

        def fill(x: Any) -> Any:
            return values[x.index] if isinstance(x, _Slot) else x

        with torch.no_grad():
            for op in self.ops:
                if op.holes is None or op.kwarg_holes is None:
                    result = op.func(*tree_map(fill, op.args), **tree_map(fill, op.kwargs))
                else:
                    args = list(op.args)
                    for position, index in op.holes:
                        args[position] = values[index]
                    kwargs = op.kwargs
                    if op.kwarg_holes:
                        kwargs = {**kwargs, **{key: values[index] for key, index in op.kwarg_holes}}
                    result = op.func(*args, **kwargs)
                if isinstance(result, torch.Tensor):
                    if op.outputs[0] is not None:
                        values[op.outputs[0]] = result
                    continue
                for index, leaf in zip(op.outputs, tree_flatten(result)[0], strict=True):
                    if index is not None:
                        values[index] = leaf
        out: dict[str, torch.Tensor] = {name: nn.Parameter(values[i]) for name, i in self.parameters.items()}
        out.update((name, values[i]) for name, i in self.buffers.items())
        return out


def record_init(build: Callable[[], nn.Module]) -> tuple[nn.Module, InitRecipe | None]:
    """Run ``build`` (drawing from the RNG as usual) and record it: the module, and its proved recipe or None."""
    start = torch.random.get_rng_state()
    recorder = _Recorder()
    with recorder:
        module = build()
    end = torch.random.get_rng_state()
    recipe = _recipe(recorder, module)
    if recipe is None:
        return module, None
    torch.random.set_rng_state(start)
    try:
        replayed = recipe.replay()
        same_draws = torch.equal(torch.random.get_rng_state(), end)
    except Exception:  # an op that does not run again outside the build: no recipe
        replayed, same_draws = {}, False
    finally:
        torch.random.set_rng_state(end)  # the RNG is where the build left it, whatever the replay did
    expected = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    same = (
        same_draws
        and replayed.keys() == expected.keys()
        and all(_identical(replayed[n], t) for n, t in expected.items())
    )
    return module, recipe if same else None


def _identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.device == b.device and a.shape == b.shape and torch.equal(a, b)


def _recipe(recorder: _Recorder, module: nn.Module) -> InitRecipe | None:
    if not recorder.replayable or any(t.device.type != "cpu" for t in recorder.tensors):
        return None
    names: dict[str, dict[str, int]] = {"parameters": {}, "buffers": {}}
    for kind, named in (("parameters", module.named_parameters()), ("buffers", module.named_buffers())):
        for name, tensor in named:
            index = recorder.slot(tensor)
            if index is None:  # made outside any recorded op (e.g. from a Python list): not replayable
                return None
            names[kind][name] = index
    if len(set(names["parameters"].values()) | set(names["buffers"].values())) != sum(map(len, names.values())):
        return None  # two names share one tensor: a copy would have to share it too
    return InitRecipe(tuple(recorder.ops), len(recorder.tensors), names["parameters"], names["buffers"])
