"""Slots without guesswork: layouts follow the data flow or are declared, suggest_slots prices what fits,
and the heuristic offers every slot kind seeds from its own layout's family."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from usertask_fixtures import RowModel

from esper.kasmina import ConvHost1D, get_blueprint, suggest_slots, suggested_slot_map, wrap
from esper.kasmina.graph import describe
from esper.kasmina.layout import infer_layer_kind
from esper.leyline import DecisionAction, TrainingJob, TrainingSignals
from esper.tamiyo.heuristic import BlueprintChoice, HeuristicConfig, HeuristicTamiyo
from esper.tamiyo.policies import make_policy

ROWS = torch.zeros(2, 8, 8)


class GRUHost(nn.Module):
    """The issue's host: rows embedded (Linear + ReLU), a GRU, a vector ReLU before the head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.act = nn.Linear(8, 16), nn.ReLU()
        self.gru = nn.GRU(16, 16, batch_first=True)
        self.proj, self.proj_act, self.head = nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(self.act(self.embed(x)))
        return self.head(self.proj_act(self.proj(out[:, -1])))


def layouts(model: nn.Module, slots: dict[str, str], x: torch.Tensor, **declared: str) -> dict[str, str | None]:
    wrapped = wrap(model, slots, layouts=declared or None)
    wrapped.probe(x)
    return {sid: s.layer_kind for sid, s in wrapped.slots.items()}


def test_a_relu_after_a_linear_on_rows_is_a_sequence_though_the_relu_alone_says_conv1d() -> None:
    assert infer_layer_kind(nn.ReLU(), (8, 16)) == "conv1d"  # the module alone cannot tell
    assert layouts(GRUHost(), {"seq": "act", "vec": "proj_act"}, ROWS) == {"seq": "sequence", "vec": "linear"}


def test_conv_features_after_a_relu_stay_conv1d() -> None:
    found = layouts(ConvHost1D(), dict(ConvHost1D.DEFAULT_SLOTS), torch.zeros(2, 40))
    assert set(found.values()) == {"conv1d"}


def test_a_declared_layout_wins_and_vector_means_linear() -> None:
    assert layouts(GRUHost(), {"seq": "act"}, ROWS, seq="conv1d") == {"seq": "conv1d"}
    assert layouts(GRUHost(), {"vec": "proj_act"}, ROWS, vec="vector") == {"vec": "linear"}


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        ({"seq": "vector"}, r"field 'layouts.seq': layout 'linear' needs rank-1 features"),
        ({"seq": "tokens"}, r"field 'layouts.seq': unknown layout 'tokens'"),
        ({"nope": "sequence"}, r"field 'layouts': no slots \['nope'\]"),
    ],
)
def test_bad_declared_layouts_are_refused_naming_the_slot(declared: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        layouts(GRUHost(), {"seq": "act"}, ROWS, **declared)


def test_suggest_slots_lists_positions_with_layouts_and_exact_prices() -> None:
    found = {s.module: s for s in suggest_slots(GRUHost(), ROWS)}
    assert "gru" not in found and "head" not in found  # a tuple output; the model's own output
    assert (found["act"].layout, found["act"].shape, found["act"].after_activation) == ("sequence", (8, 16), True)
    assert found["proj_act"].layout == "linear" and "attention" not in found["proj_act"].blueprints
    assert found["act"].blueprints == ("mlp", "lowrank", "norm", "attention")
    for name, config, params in found["act"].options:
        assert params == get_blueprint(name).param_count((8, 16), config, layer_kind="sequence")
    assert suggested_slot_map(list(found.values())) == {"s1": "act", "s2": "proj_act"}


def test_the_attention_seed_starts_as_the_identity_and_learns() -> None:
    seed = get_blueprint("attention").build((8, 16), {"heads": 2})
    x = torch.randn(4, 8, 16)
    assert torch.equal(seed(x), x)
    assert sum(p.numel() for p in seed.parameters()) == get_blueprint("attention").param_count((8, 16))
    seed(x).pow(2).sum().backward()
    assert all(p.grad is not None for p in seed.parameters())


def first_decision(model: nn.Module, slots: dict[str, str], x: torch.Tensor, policy=None):
    wrapped = wrap(model, slots)
    wrapped.probe(x)
    graph = describe(wrapped, x)
    signals = TrainingSignals(
        epoch=1, step=10, train_loss=1.0, val_loss=1.0, train_accuracy=0.5, val_accuracy=0.5,
        params_total=wrapped.param_count(), seeds=wrapped.reports(),
    )  # fmt: skip
    policy = policy or make_policy("heuristic", TrainingJob())
    return policy.decide(signals, graph=graph)


@pytest.mark.parametrize(("slot", "blueprint"), [("act", "attention"), ("proj_act", "mlp")])
def test_the_default_heuristic_grows_each_layout_from_its_own_family(slot: str, blueprint: str) -> None:
    decision = first_decision(GRUHost(), {"s": slot}, ROWS)
    assert (decision.action, decision.blueprint) == (DecisionAction.GERMINATE, blueprint)


def test_conv_slots_keep_the_mnist1d_candidates() -> None:
    decision = first_decision(ConvHost1D(), dict(ConvHost1D.DEFAULT_SLOTS), torch.zeros(2, 40))
    assert (decision.slot_id, decision.blueprint) == ("s1", "conv_heavy")


def test_where_no_candidate_is_offered_the_heuristic_falls_back_to_the_graphs_options() -> None:
    only_conv = (BlueprintChoice("conv_light"),)
    fallback = HeuristicTamiyo(HeuristicConfig(plateau_patience=0, candidates=only_conv, fallback_to_graph=True))
    decision = first_decision(RowModel(), {"vec": "proj_act"}, ROWS, fallback)
    assert decision.blueprint == "mlp"  # the first option the graph lists at a vector slot
    strict = HeuristicTamiyo(HeuristicConfig(plateau_patience=0, candidates=only_conv))
    assert first_decision(RowModel(), {"vec": "proj_act"}, ROWS, strict).action is DecisionAction.WAIT


def test_the_budget_still_binds_per_layout_candidates() -> None:
    x = ROWS
    wrapped = wrap(GRUHost(), {"s": "act"})
    wrapped.probe(x)
    base = wrapped.param_count()
    lowrank = get_blueprint("lowrank").param_count((8, 16), {"rank": 4})
    job = TrainingJob(param_budget=base + lowrank)  # room for the low-rank seed only
    decision = first_decision(GRUHost(), {"s": "act"}, x, make_policy("heuristic", job))
    assert decision.blueprint == "lowrank"
