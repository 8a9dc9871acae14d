"""Moving the model moves everything; a seed germinated after a move is built on the slot's device and dtype."""

from __future__ import annotations

import pytest
import torch

from esper.kasmina import ConvHost1D, MLPHost, wrap
from esper.kasmina.state import lifecycle_state, restore_lifecycle
from esper.leyline import SeedStage

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float32, torch.float64, torch.bfloat16]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_seed_germinated_after_move_matches_device_and_dtype(device, dtype, drive_to, fast_config) -> None:
    model = wrap(ConvHost1D(), ConvHost1D.DEFAULT_SLOTS, config=fast_config)
    model.probe(torch.randn(2, 40))
    model.to(device=device, dtype=dtype)
    drive_to(model, "s1", SeedStage.TRAINING, blueprint="conv_heavy")
    model.germinate("s2", "se_attention", epoch=0, reason="test")
    for slot_id in ("s1", "s2"):
        for p in model.seed_parameters(slot_id):
            assert p.device.type == device and p.dtype == dtype
    out = model(torch.randn(4, 40, device=device, dtype=dtype))
    assert out.dtype == dtype and out.device.type == device
    out.float().sum().backward()
    assert all(p.grad is not None for p in model.seed_parameters("s1"))


@pytest.mark.parametrize("device", DEVICES)
def test_moving_after_germination_moves_the_seed(device: str, drive_to, fast_config) -> None:
    model = wrap(MLPHost(6, 8, 3), {"s1": "body.act1"}, config=fast_config)
    model.probe(torch.randn(2, 6))
    drive_to(model, "s1", SeedStage.BLENDING, blueprint="lowrank")
    model.to(device=device, dtype=torch.float64)
    assert {(p.device.type, p.dtype) for p in model.parameters()} == {(device, torch.float64)}
    assert model(torch.randn(3, 6, device=device, dtype=torch.float64)).dtype == torch.float64


def test_restored_seeds_are_built_on_the_current_device_and_dtype(drive_to, fast_config) -> None:
    model = wrap(ConvHost1D(), ConvHost1D.DEFAULT_SLOTS, config=fast_config)
    model.probe(torch.randn(2, 40))
    drive_to(model, "s3", SeedStage.SHADOWING, blueprint="bottleneck")
    state, weights = lifecycle_state(model), model.state_dict()
    other = wrap(ConvHost1D(), ConvHost1D.DEFAULT_SLOTS).to(torch.float64)
    restore_lifecycle(other, state)
    other.load_state_dict(weights)
    assert all(p.dtype == torch.float64 for p in other.seed_parameters("s3"))
