"""The compiler: every built-in blueprint becomes an artifact that matches eager (outputs and gradients) and trains."""

from __future__ import annotations

import pytest
import torch

from esper.kasmina.blueprints import get_blueprint, list_blueprints
from esper.kasmina.kernels import fresh_copy, load_artifact
from esper.tezzeret.compiler import ValidationFailed, compile_kernel, validate

#: One shape per layout; each built-in blueprint is compiled at every layout it serves.
SHAPES = {"linear": (16,), "sequence": (5, 16), "conv1d": (8, 19), "conv2d": (4, 6, 6)}


def _cases() -> list[object]:
    """Every built-in blueprint at every layout it serves; beyond its first layout, only in the slow run."""
    cases: list[object] = []
    for name in list_blueprints():
        for i, layout in enumerate(get_blueprint(name).layer_kinds):
            marks = [pytest.mark.slow] if i else []
            cases.append(pytest.param(name, layout, id=f"{name}-{layout}", marks=marks))
    return cases


@pytest.mark.parametrize(("blueprint", "layout"), _cases())
def test_every_builtin_blueprint_compiles_validates_and_is_measured(blueprint, layout):
    spec = get_blueprint(blueprint)
    kernel = compile_kernel(blueprint, SHAPES[layout], layout=layout, batch=8, repeats=3)
    assert kernel.artifact_format == "torch.export"
    assert kernel.layout == layout
    assert kernel.params == spec.param_count(SHAPES[layout], layer_kind=layout)
    assert kernel.max_abs_error <= 1e-5 and kernel.max_grad_error <= 1e-4
    assert kernel.forward_us > 0 and kernel.backward_us > 0 and kernel.memory_bytes > 4 * kernel.params


def test_the_artifact_loads_and_trains_again():
    kernel = compile_kernel("mlp", (16,), batch=8, repeats=2)
    module = fresh_copy(load_artifact(kernel.artifact))
    x, y = torch.randn(32, 16), torch.randn(32, 16)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = ((module(x) - y) ** 2).mean()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0]


def test_the_same_kernel_seed_gives_the_same_artifact_bytes():
    # Racing Tezzerets (or a redelivered request) therefore upload one blob, not two.
    a = compile_kernel("mlp", (16,), batch=4, repeats=1, seed=7).artifact
    b = compile_kernel("mlp", (16,), batch=4, repeats=1, seed=7).artifact
    c = compile_kernel("mlp", (16,), batch=4, repeats=1, seed=8).artifact
    assert a == b and a != c


def test_validation_catches_an_artifact_that_computes_something_else():
    eager = get_blueprint("mlp").build((16,))
    other = get_blueprint("mlp").build((16,))
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.1)
    with pytest.raises(ValidationFailed, match="differs from eager"):
        validate(eager, other, (16,))


def test_mode_dependent_layers_are_refused_with_the_reason(bad_blueprints):
    dropout, _ = bad_blueprints
    with pytest.raises(ValueError, match="Dropout"):
        compile_kernel(dropout, (16,), batch=4, repeats=1)


def test_requests_that_do_not_fit_are_value_errors_naming_the_field():
    with pytest.raises(ValueError, match="kernel_size"):
        compile_kernel("conv_light", (8, 19), {"kernel_size": 4})
    with pytest.raises(ValueError, match="dtype"):
        compile_kernel("mlp", (16,), dtype="float16")
    with pytest.raises(ValueError, match="device 'cuda'"):
        compile_kernel("mlp", (16,), device="cuda")
    with pytest.raises(ValueError, match="unknown blueprint"):
        compile_kernel("nope", (16,))
    with pytest.raises(ValueError, match="input_shape"):
        compile_kernel("mlp", (1 << 20,))
    with pytest.raises(ValueError, match="parameters"):
        compile_kernel("mlp", (4096,), {"expansion": 1000.0})


def test_a_module_export_refuses_is_traced_to_torchscript_and_still_loads_and_trains(data_dependent_blueprint):
    kernel = compile_kernel(data_dependent_blueprint, (16,), batch=8, repeats=2)
    assert kernel.artifact_format == "torchscript" and kernel.max_abs_error <= 1e-5
    eager = get_blueprint(data_dependent_blueprint).build((16,))
    module = fresh_copy(load_artifact(kernel.artifact), eager)
    x = torch.randn(4, 16)
    torch.testing.assert_close(module(x), eager(x))
    module(x).pow(2).sum().backward()
    assert all(p.grad is not None for p in module.parameters())


def test_the_warm_up_compiles_and_validates_a_tiny_seed_without_publishing_anything():
    from esper.tezzeret.compiler import warm_up

    assert warm_up() > 0  # (it raises if the seed does not compile or validate)
