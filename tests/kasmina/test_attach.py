"""Slots attach to named submodules of any host; a dormant slot leaves the host's output bit-identical."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from esper.kasmina import ConvHost1D, KasminaConfig, MLPHost, SeedSlot, wrap
from esper.leyline import SeedStage


class ResidualBlock(nn.Module):
    """A small residual CNN block built here, not in Esper."""

    def __init__(self, channels: int = 6) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, channels, 3, padding=1)
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
        )
        self.head = nn.Linear(channels, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x))
        h = torch.relu(h + self.body(h))
        return self.head(h.mean((2, 3)))


def _transformer() -> nn.Module:
    return nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True)


HOSTS = {
    "conv1d": (lambda: ConvHost1D(channels=8), ConvHost1D.DEFAULT_SLOTS, (5, 40), "conv_light"),
    "mlp": (lambda: MLPHost(12, 16, 3, depth=2), {"s1": "body.act1", "s2": "body.fc2"}, (5, 12), "mlp"),
    "resblock": (ResidualBlock, {"s1": "conv1", "s2": "body.2", "s3": "body.4"}, (5, 3, 8, 8), "conv_light"),
    "transformer": (_transformer, {"s1": "linear2", "s2": "norm2", "s3": "norm1"}, (5, 7, 16), "lowrank"),
}


def _wrapped(name: str, seed: int, config: KasminaConfig | None = None):
    """HOSTS[name] wrapped and probed, a copy of the bare host, an input, and its first slot and blueprint."""
    make, slots, shape, blueprint = HOSTS[name]
    torch.manual_seed(seed)
    host = make().eval()
    bare = copy.deepcopy(host)
    x = torch.randn(*shape)
    model = wrap(host, slots, config=config)
    model.probe(x)
    return model, bare, x, next(iter(slots)), blueprint


@pytest.mark.parametrize("name", sorted(HOSTS))
def test_dormant_slots_leave_output_bit_identical(name: str) -> None:
    model, bare, x, _, _ = _wrapped(name, 1)
    assert torch.equal(model(x), bare(x))
    assert all(isinstance(s, SeedSlot) and not s.hooked for s in model.slots.values())


@pytest.mark.parametrize("name", sorted(HOSTS))
def test_an_isolated_training_seed_leaves_output_bit_identical(name: str) -> None:
    model, bare, x, slot_id, blueprint = _wrapped(name, 2, KasminaConfig(isolate_seeds=True))
    model.germinate(slot_id, blueprint, epoch=0, reason="test")
    with torch.no_grad():
        for p in model.seed_parameters(slot_id):
            p.add_(torch.randn_like(p))
    model.advance(slot_id, epoch=0, reason="test")
    assert model.slot(slot_id).stage is SeedStage.TRAINING
    assert torch.equal(model(x), bare(x))
    with model.alpha_override(slot_id, 1.0):
        assert not torch.allclose(model(x), bare(x)), "the seed must change the output when switched fully on"


@pytest.mark.parametrize("name", sorted(HOSTS))
def test_a_fresh_joint_seed_joins_the_forward_without_changing_the_output(name: str) -> None:
    model, bare, x, slot_id, blueprint = _wrapped(name, 2)  # the default: seeds learn jointly with the host
    model.germinate(slot_id, blueprint, epoch=0, reason="test")
    model.advance(slot_id, epoch=0, reason="test")
    assert model.slot(slot_id).stage is SeedStage.TRAINING and not model.slot(slot_id).isolated
    assert torch.equal(model(x), bare(x)), "a seed starts as the identity"
    with torch.no_grad():
        for p in model.seed_parameters(slot_id):
            p.add_(torch.randn_like(p))
    assert not torch.allclose(model(x), bare(x)), "a joint seed in TRAINING is in the forward"


def test_wrap_does_not_change_the_host_class_or_state_dict_keys() -> None:
    host = ConvHost1D()
    keys = set(host.state_dict())
    model = wrap(host, ConvHost1D.DEFAULT_SLOTS)
    assert type(model.host) is ConvHost1D
    assert set(model.host.state_dict()) == keys
    assert {k.removeprefix("host.") for k in model.state_dict()} == keys


def test_unknown_module_name_is_a_value_error_naming_it() -> None:
    with pytest.raises(ValueError, match=r"'features\.9'"):
        wrap(ConvHost1D(), {"s1": "features.9"})


def test_two_slots_on_one_module_are_refused() -> None:
    with pytest.raises(ValueError, match="already carries slot 's1'"):
        wrap(ConvHost1D(), {"s1": "act1", "s2": "act1"})


def test_probe_learns_shapes_and_layer_kinds() -> None:
    model = wrap(_transformer(), {"a": "linear2", "b": "dropout1"})
    model.probe(torch.randn(2, 7, 16))
    assert model.slot("a").feature_shape == (7, 16)
    assert model.slot("a").layer_kind == "sequence"
    assert model.slot("b").layer_kind == "sequence", "inside a transformer, (T, D) features are sequences"
    conv = wrap(ConvHost1D(), ConvHost1D.DEFAULT_SLOTS)
    conv.probe(torch.randn(2, 40))
    assert [conv.slot(s).feature_shape for s in ("s1", "s2", "s3")] == [(8, 19), (8, 10), (8, 5)]
    assert conv.slot("s1").layer_kind == "conv1d"


def test_probe_names_slots_whose_module_never_ran() -> None:
    mlp = MLPHost(4, 4, 2)
    mlp.unused = nn.ReLU()
    model = wrap(mlp, {"a": "body.act1", "b": "unused"})
    with pytest.raises(ValueError, match="'b'"):
        model.probe(torch.randn(2, 4))


def test_hook_is_registered_only_while_the_slot_acts(conv_model, drive_to) -> None:
    slot = conv_model.slot("s1")
    assert not slot.hooked and len(slot.target._forward_hooks) == 0
    conv_model.germinate("s1", "conv_light", epoch=0, reason="test")
    assert not slot.hooked, "a GERMINATED seed does not act yet"
    conv_model.advance("s1", epoch=0, reason="test")
    assert slot.hooked and len(slot.target._forward_hooks) == 1
    conv_model.cull("s1", epoch=0, reason="test")
    assert not slot.hooked and len(slot.target._forward_hooks) == 0
    with conv_model.seed_disabled("s2"):
        assert conv_model.slot("s2").hooked
    assert not conv_model.slot("s2").hooked


def test_non_tensor_output_is_a_clear_error() -> None:
    class TupleOut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pair = nn.LSTM(3, 4, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, _ = self.pair(x)
            return out

    model = wrap(TupleOut(), {"s1": "pair"})
    with pytest.raises(TypeError, match="returned tuple"):
        model.probe(torch.randn(2, 5, 3))


def test_probe_does_not_touch_batch_norm_statistics_or_modes() -> None:
    host = ResidualBlock().train()
    before = {k: v.clone() for k, v in host.state_dict().items()}
    model = wrap(host, {"s1": "body.1"})
    model.probe(torch.randn(4, 3, 8, 8))
    assert all(torch.equal(before[k], v) for k, v in host.state_dict().items())
    assert host.training and host.body[1].training


def test_a_deep_copy_is_independent_of_the_original(conv_model, drive_to) -> None:
    drive_to(conv_model, "s1", SeedStage.BLENDING, blueprint="conv_heavy")
    conv_model.set_alpha("s1", 0.5, epoch=0, reason="test")
    clone = copy.deepcopy(conv_model)
    clone.cull("s1", epoch=9, reason="only in the copy")
    assert not clone.slot("s1").hooked and len(clone.host.act1._forward_hooks) == 0
    assert conv_model.slot("s1").hooked and len(conv_model.host.act1._forward_hooks) == 1
    assert conv_model.slot("s1").stage is SeedStage.BLENDING
    x = torch.randn(3, 40)
    assert not torch.allclose(conv_model(x), clone(x))
