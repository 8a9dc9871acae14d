"""Kernel artifacts: a seed module compiled to bytes that load and train again, and cheap fresh copies.

An artifact is ``ESPERK1\\n<format>\\n`` followed by the payload, so a loader
knows the format from the bytes alone:

* ``torch.export``: :func:`torch.export.export` with the batch dimension
  dynamic, saved with its parameters (:func:`torch.export.save`); loaded with
  :func:`torch.export.load` and ``.module()``, a ``GraphModule`` whose
  parameters are trainable ``nn.Parameter`` s under the original names.
* ``torchscript``: :func:`torch.jit.trace` where export cannot; loaded with
  :func:`torch.jit.load`.

Loading is slow (tens of ms: it rebuilds the graph) and germination must not
be, so loaders decode an artifact once per content hash and hand out
:func:`fresh_copy` of it: the same code, new parameter and buffer tensors.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping

import torch
from torch import nn

MAGIC = b"ESPERK1\n"
EXPORT = "torch.export"
TORCHSCRIPT = "torchscript"
FORMATS = (EXPORT, TORCHSCRIPT)
#: Largest batch the exported program accepts (the batch dimension is dynamic up to here).
MAX_BATCH = 1 << 16


#: Layers that compute differently in train and eval mode: an artifact freezes one mode, so none may appear.
MODE_DEPENDENT: tuple[type[nn.Module], ...] = (
    nn.modules.dropout._DropoutNd,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
)


class CorruptArtifact(ValueError):
    """Bytes that are not a loadable kernel artifact."""


def compile_seed(module: nn.Module, example: torch.Tensor, *, allow_torchscript: bool = True) -> tuple[bytes, str]:
    """Compile ``module`` for inputs shaped like ``example`` (N, *shape), N dynamic; returns (artifact, format).

    ``torch.export`` first; TorchScript tracing where export raises (and
    ``allow_torchscript``). The artifact carries the module's parameters.
    """
    frozen = sorted({type(m).__name__ for m in module.modules() if isinstance(m, MODE_DEPENDENT)})
    if frozen:
        raise ValueError(f"module has layers whose behaviour depends on train/eval mode ({', '.join(frozen)})")
    export_error: Exception | None = None
    try:
        batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},), strict=False)
            buffer = io.BytesIO()
            torch.export.save(program, buffer)
        return MAGIC + EXPORT.encode() + b"\n" + buffer.getvalue(), EXPORT
    except Exception as exc:  # export cannot handle every module; tracing may
        export_error = exc
    if not allow_torchscript:
        raise RuntimeError(f"torch.export failed: {export_error}") from export_error
    traced = torch.jit.trace(module, (example,), check_trace=False)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    return MAGIC + TORCHSCRIPT.encode() + b"\n" + buffer.getvalue(), TORCHSCRIPT


def artifact_format(data: bytes) -> str:
    """The format named in an artifact's header; CorruptArtifact if there is none."""
    if not data.startswith(MAGIC):
        raise CorruptArtifact("not a kernel artifact (no ESPERK1 header)")
    end = data.find(b"\n", len(MAGIC))
    fmt = data[len(MAGIC) : end].decode("ascii", "replace") if end > 0 else ""
    if fmt not in FORMATS:
        raise CorruptArtifact(f"unknown artifact format {fmt!r} (known: {', '.join(FORMATS)})")
    return fmt


def load_artifact(data: bytes) -> nn.Module:
    """Decode an artifact into a trainable module (train mode); CorruptArtifact if it does not decode."""
    fmt = artifact_format(data)
    payload = io.BytesIO(data[len(MAGIC) + len(fmt) + 1 :])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if fmt == EXPORT:
                graph_module = torch.export.load(payload).module()
                # ``.module()`` forbids train()/eval() because a graph traced in one mode
                # ignores the flag. Tezzeret compiles only modules without mode-dependent
                # layers (MODE_DEPENDENT), for which both modes are the same graph.
                del graph_module.train, graph_module.eval
                module = streamline(graph_module)
            else:
                module = torch.jit.load(payload, map_location="cpu")
    except Exception as exc:  # torch raises many types for bad bytes; all mean the same here
        raise CorruptArtifact(f"{fmt} artifact does not load: {type(exc).__name__}: {exc}") from exc
    for param in module.parameters():
        param.requires_grad_(True)
    return module.train()


def streamline(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Cut the per-call overhead an exported module adds around its ops, in place.

    * the input-guard call (``_guards_fn``) and the input-check hooks: the
      loader checks the kernel's shape against the slot's and runs a trial
      forward instead;
    * pytree flattening of inputs and outputs: a seed takes one tensor and
      returns one;
    * ``torch.ops.aten.<op>.<overload>`` calls, dispatched through Python
      ``OpOverload`` objects: the same op through its C++ binding
      (``torch.<op>``, ``torch._C._nn.<op>``), which resolves the same overload.

    Tezzeret validates artifacts through this very function, so a kernel whose
    streamlined program disagrees with eager is never published.
    """
    # The hooks export installs check inputs against the traced constraints and
    # toggle pytree handling of module inputs; neither applies once the guards and
    # pytree code are gone, and without hooks a call takes nn.Module's fast path.
    for hooks in (gm._forward_pre_hooks, gm._forward_hooks):
        hooks.clear()
    for extra in ("_forward_pre_hooks_with_kwargs", "_forward_hooks_with_kwargs", "_forward_hooks_always_called"):
        getattr(gm, extra).clear()
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            graph.erase_node(node)
    if "_guards_fn" in gm._modules:
        del gm._modules["_guards_fn"]
    graph._codegen = torch.fx.graph.CodeGen()
    output = next(node for node in graph.nodes if node.op == "output")
    if isinstance(output.args[0], tuple | list) and len(output.args[0]) == 1:
        output.args = (output.args[0][0],)
    for node in graph.nodes:
        if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
            name = node.target.overloadpacket.__name__
            for namespace in (torch._C._VariableFunctions, torch._C._nn):
                binding = getattr(namespace, name, None)
                if binding is not None:
                    node.target = binding
                    break
    graph.lint()
    gm.recompile()
    return gm


def fresh_copy(module: nn.Module, weights: nn.Module | Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """A copy of ``module`` sharing its (immutable) code and graph but owning new parameters and buffers.

    Much cheaper than ``copy.deepcopy`` for a ``GraphModule`` (no recompile):
    what changes in training (parameters, buffers, gradients, hooks) is new,
    what does not (the generated forward, the graph) is shared. With
    ``weights`` (a module with the same parameter and buffer names and
    shapes, e.g. the eager build of the same blueprint, or those tensors by
    state-dict name) the copy takes them instead of cloning its own;
    ValueError if they differ.
    """
    if isinstance(module, torch.jit.ScriptModule):
        copy = _script_copy(module)
        if weights is not None:
            try:
                copy.load_state_dict(weights.state_dict() if isinstance(weights, nn.Module) else dict(weights))
            except RuntimeError as exc:
                raise ValueError(f"weights do not fit: {exc}") from None
        return copy
    if weights is None:
        return _copy(module, None, "")
    if isinstance(weights, nn.Module):
        tensors: dict[str, torch.Tensor] = dict(weights.named_parameters())
        tensors.update(weights.named_buffers())
    else:
        tensors = dict(weights)
    copy = _copy(module, tensors, "")
    if tensors:
        raise ValueError(f"weights have tensors the program does not: {sorted(tensors)}")
    return copy


def _copy(module: nn.Module, tensors: dict[str, torch.Tensor] | None, prefix: str) -> nn.Module:
    def take(name: str, own: torch.Tensor) -> torch.Tensor:
        assert tensors is not None
        other = tensors.pop(prefix + name, None)
        if other is None or other.shape != own.shape:
            got = "nothing" if other is None else list(other.shape)
            raise ValueError(f"weights do not fit: {prefix + name} is {list(own.shape)} in the program, {got} given")
        return other

    new = object.__new__(module.__class__)  # GraphModule.__new__ would make a new class without forward
    state = module.__dict__.copy()
    params: dict[str, nn.Parameter | None] = {}
    for name, p in module._parameters.items():
        if p is None:
            params[name] = None
        elif tensors is None:
            params[name] = nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
        else:
            given = take(name, p)
            params[name] = given if isinstance(given, nn.Parameter) else nn.Parameter(given)
    state["_parameters"] = params
    state["_buffers"] = {
        name: None if b is None else (b.clone() if tensors is None else take(name, b))
        for name, b in module._buffers.items()
    }
    state["_modules"] = {
        name: None if m is None else _copy(m, tensors, f"{prefix}{name}.") for name, m in module._modules.items()
    }
    for hooks in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_state_dict_hooks"):
        if hooks in state:
            state[hooks] = state[hooks].copy()
    new.__dict__ = state
    return new


def _script_copy(module: torch.jit.ScriptModule) -> nn.Module:
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    buffer.seek(0)
    return torch.jit.load(buffer, map_location="cpu")
