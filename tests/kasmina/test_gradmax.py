"""GradMax initialization of a fresh seed: still the identity, a larger gradient for its last layer."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from esper.kasmina import get_blueprint
from esper.kasmina.blueprints.init import gradmax_
from esper.kasmina.blueprints.modules import Residual


def _problem(shape, seed=0):
    """Features h, a fixed readout and targets: the loss gradient at h is what GradMax reads."""
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(64, *shape, generator=gen)
    readout = torch.randn(int(torch.tensor(shape).prod()), 5, generator=gen)
    y = torch.randint(0, 5, (64,), generator=gen)
    return h, readout, y


def _loss(out, readout, y):
    return F.cross_entropy(out.flatten(1) @ readout, y)


def _last_layer_grad_norm(seed, h, readout, y):
    seed.zero_grad()
    _loss(seed(h), readout, y).backward()
    return float(seed.body[2].weight.grad.norm())


def _slot_gradient(h, readout, y):
    h = h.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(_loss(h, readout, y), [h])
    return g


@pytest.mark.parametrize(
    ("blueprint", "shape", "config"),
    [("conv_heavy", (6, 20), {"kernel_size": 3, "expansion": 2.0}), ("mlp", (12,), {"expansion": 2.0})],
)
def test_gradmax_keeps_the_seed_the_identity_and_grows_its_last_layer_gradient(blueprint, shape, config):
    h, readout, y = _problem(shape)
    g = _slot_gradient(h, readout, y)
    kind = "conv1d" if len(shape) == 2 else "linear"
    spec = get_blueprint(blueprint)
    wins = 0
    for draw in range(5):
        torch.manual_seed(draw)
        seed = spec.build(shape, config, layer_kind=kind)
        # a linear activation makes GradMax's objective exact, so it must win against every random draw
        seed.body[1] = nn.Identity()
        random_norm = _last_layer_grad_norm(seed, h, readout, y)
        row_norms = seed.body[0].weight.flatten(1).norm(dim=1)
        assert gradmax_(seed, h, g)
        assert torch.equal(seed(h), h)  # the last layer is still zero: the identity
        assert torch.allclose(seed.body[0].weight.flatten(1).norm(dim=1), row_norms, atol=1e-5)
        wins += _last_layer_grad_norm(seed, h, readout, y) > random_norm
    assert wins == 5


def test_a_seed_gradmax_does_not_serve_is_left_as_it_was():
    seed = get_blueprint("conv_light").build((6, 20), {"kernel_size": 3}, layer_kind="conv1d")
    before = [p.clone() for p in seed.parameters()]
    h, readout, y = _problem((6, 20))
    assert not gradmax_(seed, h, _slot_gradient(h, readout, y))
    assert all(torch.equal(a, b) for a, b in zip(before, seed.parameters(), strict=True))
    assert not gradmax_(Residual(nn.Linear(3, 3)), torch.zeros(2, 3), torch.zeros(2, 3))


def _kernel_loader(tmp_path, blueprint, shape, kind, fmt):
    """A loader whose cache holds ``blueprint``'s compiled kernel for ``shape`` (no Urza needed for a warm load)."""
    import hashlib

    from prometheus_client import CollectorRegistry

    from esper.kasmina.kernels import KernelCache, KernelLoader, KernelMetrics, compile_seed, dtype_name
    from esper.kasmina.kernels.artifact import MAGIC
    from esper.kasmina.kernels.cache import KernelRecord
    from esper.leyline.compile import kernel_id_for

    spec = get_blueprint(blueprint)
    torch.manual_seed(123)
    module, example = spec.build(shape, layer_kind=kind), torch.randn(4, *shape)
    if fmt == "torch.export":
        data, _ = compile_seed(module, example)
    else:
        import io

        buffer = io.BytesIO()
        torch.jit.save(torch.jit.trace(module, (example,)), buffer)
        data = MAGIC + b"torchscript\n" + buffer.getvalue()
    resolved = spec.resolve(shape, None, layer_kind=kind)
    kernel_id = kernel_id_for(
        blueprint, resolved.shape, resolved.config, layout=kind, dtype=dtype_name(torch.float32), device="cpu"
    )
    cache = KernelCache(tmp_path / "cache")
    sha = hashlib.sha256(data).hexdigest()
    cache.put(sha, data)
    cache.remember(KernelRecord(kernel_id, sha, tuple(shape), kind, blueprint, fmt))
    return KernelLoader(None, cache, KernelMetrics(CollectorRegistry()))


@pytest.mark.parametrize(
    ("blueprint", "shape", "served"),
    [
        ("conv_heavy", (8, 19), True),
        ("mlp", (12,), True),
        ("mlp", (5, 12), True),
        ("depthwise", (8, 19), False),
        ("conv_light", (8, 19), False),
        ("lowrank", (12,), False),
        ("se_attention", (8, 19), False),
    ],
)
@pytest.mark.parametrize("fmt", ["torch.export", "torchscript"])
def test_an_eager_seed_and_a_kernel_seed_get_the_same_gradmax_initialization(tmp_path, blueprint, shape, served, fmt):
    kind = {1: "linear", 2: "conv1d" if blueprint != "mlp" else "sequence"}[len(shape)]
    loader = _kernel_loader(tmp_path, blueprint, shape, kind, fmt)
    h, readout, y = _problem(shape)
    g = _slot_gradient(h, readout, y)
    torch.manual_seed(7)
    eager = get_blueprint(blueprint).build(shape, layer_kind=kind)
    torch.manual_seed(7)
    build = loader.seed(blueprint, None, shape, kind)
    assert build.origin == "cache" and not isinstance(build.module, Residual), build.error
    kernel = build.module
    before = {n: p.clone() for n, p in kernel.named_parameters()}
    assert (gradmax_(eager, h, g), gradmax_(kernel, h, g)) == (served, served)
    eager_params, kernel_params = dict(eager.named_parameters()), dict(kernel.named_parameters())
    assert eager_params.keys() == kernel_params.keys()
    for name, p in eager_params.items():
        assert torch.equal(p, kernel_params[name]), name
    changed = [n for n, p in kernel_params.items() if not torch.equal(p, before[n])]
    assert changed == (["body.0.weight"] if served else [])
    assert torch.equal(kernel(h), eager(h))
