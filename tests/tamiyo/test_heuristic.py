import pytest

from esper.leyline import (
    AdaptationDecision,
    BlueprintOption,
    CommandAction,
    DecisionAction,
    GateThresholds,
    GraphNode,
    ModelGraph,
    NodeKind,
    SeedStage,
    SeedStateReport,
    SlotOptions,
    TrainingSignals,
)
from esper.tamiyo.decide import to_command
from esper.tamiyo.heuristic import BlueprintChoice, HeuristicConfig, HeuristicTamiyo
from esper.tamiyo.policy import Policy, StaticPolicy


def slot(slot_id="s1", stage=SeedStage.DORMANT, **kw) -> SeedStateReport:
    return SeedStateReport(slot_id=slot_id, stage=stage, **kw)


def signals(epoch, seeds, val_acc=0.5, val_loss=1.0, params=1000, plateau=0) -> TrainingSignals:
    """One epoch as Tolaria publishes it: the plateau count is the producer's, not the policy's."""
    return TrainingSignals(
        epoch=epoch,
        train_loss=1.0,
        val_loss=val_loss,
        train_accuracy=0.5,
        val_accuracy=val_acc,
        params_total=params,
        plateau_epochs=plateau,
        seeds=seeds,
    )


def graph(options, thresholds=None) -> ModelGraph:
    """A one-slot graph offering ``options`` ((blueprint, config, params) triples) at s1."""
    return ModelGraph(
        epoch=0,
        params_total=1000,
        nodes=[GraphNode(node_id="slot:s1", kind=NodeKind.SLOT, op="slot", slot_id="s1", module="act1")],
        slots=[
            SlotOptions(
                slot_id="s1",
                module="act1",
                shape=[8, 10],
                layout="conv1d",
                options=[BlueprintOption(blueprint=b, config=c, params=n) for b, c, n in options],
            )
        ],
        thresholds=thresholds,
    )


def test_heuristic_and_static_implement_the_policy_interface():
    assert isinstance(HeuristicTamiyo(), Policy)
    assert isinstance(StaticPolicy(), Policy)


def test_waits_while_improving_and_germinates_on_the_published_plateau():
    policy = HeuristicTamiyo(HeuristicConfig(plateau_patience=2))
    for e, acc in enumerate((0.3, 0.4, 0.5), start=1):
        d = policy.decide(signals(e, [slot()], val_acc=acc, val_loss=1 - acc))
        assert d.action is DecisionAction.WAIT and "plateau 0 < 2" in d.reason
    d = policy.decide(signals(4, [slot()], val_acc=0.5, val_loss=0.5, plateau=1))
    assert d.action is DecisionAction.WAIT and "plateau 1 < 2" in d.reason
    d = policy.decide(signals(5, [slot()], val_acc=0.5, val_loss=0.5, plateau=2))
    assert d.action is DecisionAction.GERMINATE and d.slot_id == "s1" and d.blueprint == "conv_light"
    assert "plateau for 2 epochs" in d.reason and 0.0 < d.confidence <= 1.0


def test_advances_when_the_gate_passes_and_not_before():
    policy = HeuristicTamiyo(HeuristicConfig(plateau_patience=100))
    training = dict(stage=SeedStage.TRAINING, seed_id="a", blueprint="conv_light")
    d = policy.decide(signals(1, [slot(**training, epochs_in_stage=1, improvement=0.1)]))
    assert d.action is DecisionAction.WAIT
    d = policy.decide(signals(2, [slot(**training, epochs_in_stage=3, improvement=0.1)]))
    assert d.action is DecisionAction.ADVANCE and "G2" in d.reason


def test_fossilizes_a_seed_with_proven_contribution():
    policy = HeuristicTamiyo(HeuristicConfig(plateau_patience=100))
    report = slot(
        stage=SeedStage.PROBATIONARY,
        seed_id="a",
        blueprint="conv_light",
        epochs_in_stage=1,
        contribution=0.03,
        seed_grad_norm=0.5,
    )
    d = policy.decide(signals(1, [report]))
    assert d.action is DecisionAction.FOSSILIZE and "G5" in d.reason
    command = to_command(_with_id(d), signals(1, []))
    assert command is not None and command.action is CommandAction.FOSSILIZE


def test_culls_a_seed_that_harms_validation():
    policy = HeuristicTamiyo(HeuristicConfig(plateau_patience=100, cull_patience=2, cull_harm=0.01))
    harmful = dict(stage=SeedStage.BLENDING, seed_id="a", blueprint="conv_heavy", alpha=0.4, contribution=-0.05)
    assert policy.decide(signals(1, [slot(**harmful)])).action is DecisionAction.WAIT  # one bad epoch is noise
    d = policy.decide(signals(2, [slot(**harmful)]))
    assert d.action is DecisionAction.CULL and "harms validation" in d.reason and d.slot_id == "s1"


def test_culls_a_seed_whose_isolated_training_stalls():
    policy = HeuristicTamiyo(HeuristicConfig(plateau_patience=100, max_training_epochs=5))
    report = slot(stage=SeedStage.TRAINING, seed_id="a", blueprint="conv_light", epochs_in_stage=5, improvement=-0.1)
    d = policy.decide(signals(1, [report]))
    assert d.action is DecisionAction.CULL and "stalled" in d.reason


def test_cooldown_after_a_cull_blocks_germination_then_lifts():
    policy = HeuristicTamiyo(HeuristicConfig(plateau_patience=0, cooldown_epochs=3))
    policy.decide(signals(1, [slot(stage=SeedStage.BLENDING, seed_id="a", blueprint="conv_light")]))
    # the seed is gone (culled) at epoch 2: cooldown runs to epoch 5
    for e in (2, 3, 4):
        d = policy.decide(signals(e, [slot("s1", SeedStage.EMBARGOED), slot("s2")]))
        assert d.action is DecisionAction.WAIT and "cooldown" in d.reason
    d = policy.decide(signals(5, [slot("s1", SeedStage.EMBARGOED), slot("s2")]))
    assert d.action is DecisionAction.GERMINATE and d.slot_id == "s2"


def test_a_failing_blueprint_is_chosen_less():
    config = HeuristicConfig(
        plateau_patience=0, cooldown_epochs=0, candidates=(BlueprintChoice("conv_light"), BlueprintChoice("conv_heavy"))
    )
    policy = HeuristicTamiyo(config)
    d = policy.decide(signals(1, [slot()]))
    assert d.blueprint == "conv_light"  # untried blueprints tie: the configured order decides
    policy.decide(signals(2, [slot(stage=SeedStage.TRAINING, seed_id="a", blueprint="conv_light")]))
    d = policy.decide(signals(3, [slot(stage=SeedStage.DORMANT)]))  # conv_light was culled
    assert policy.scores["conv_light"] < 0
    assert d.action is DecisionAction.GERMINATE and d.blueprint == "conv_heavy"


def test_a_fossilized_blueprint_scores_up():
    policy = HeuristicTamiyo(HeuristicConfig(plateau_patience=100))
    policy.decide(signals(1, [slot(stage=SeedStage.PROBATIONARY, seed_id="a", blueprint="conv_heavy")]))
    policy.decide(signals(2, [slot(stage=SeedStage.FOSSILIZED, seed_id="a", blueprint="conv_heavy")]))
    assert policy.scores["conv_heavy"] > 0 and policy.last_cull_epoch is None


def test_param_budget_skips_blueprints_that_do_not_fit():
    costs = {"conv_light": 500, "conv_heavy": 5000}
    config = HeuristicConfig(
        plateau_patience=0,
        param_budget=2000,
        candidates=(BlueprintChoice("conv_heavy"), BlueprintChoice("conv_light")),
    )
    policy = HeuristicTamiyo(config, cost_model=lambda slot_id, name, cfg: costs[name])
    d = policy.decide(signals(1, [slot()], params=1000))
    assert d.blueprint == "conv_light" and "adds 500 params" in d.reason
    policy = HeuristicTamiyo(config, cost_model=lambda slot_id, name, cfg: costs[name])
    d = policy.decide(signals(1, [slot()], params=1600))
    assert d.action is DecisionAction.WAIT


def test_every_decision_has_a_reason_and_a_confidence():
    policy = HeuristicTamiyo(HeuristicConfig(plateau_patience=1))
    for e in range(1, 6):
        d = policy.decide(signals(e, [slot()]))
        assert d.reason and 0.0 <= d.confidence <= 1.0 and d.epoch == e


def test_non_finite_signals_make_it_hold():
    policy = HeuristicTamiyo(HeuristicConfig(plateau_patience=0))
    d = policy.decide(signals(1, [slot()], val_loss=float("nan")))
    assert d.action is DecisionAction.WAIT and "not finite" in d.reason


def test_state_dict_round_trip_gives_the_same_next_decision():
    a = HeuristicTamiyo(HeuristicConfig(plateau_patience=2))
    for e in range(1, 3):
        a.decide(signals(e, [slot()]))
    b = HeuristicTamiyo(HeuristicConfig(plateau_patience=2))
    b.load_state_dict(a.state_dict())
    assert a.decide(signals(3, [slot()])) == b.decide(signals(3, [slot()]))


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="max_active_seeds"):
        HeuristicConfig(max_active_seeds=0)


def test_a_budget_it_cannot_price_keeps_it_from_germinating_and_says_why():
    policy = HeuristicTamiyo(HeuristicConfig(plateau_patience=0, param_budget=10_000))
    d = policy.decide(signals(1, [slot()]))
    assert d.action is DecisionAction.WAIT and "no model graph" in d.reason


def test_wait_becomes_no_command():
    assert to_command(StaticPolicy().decide(signals(1, [slot()])), signals(1, [slot()])) is None


def test_prices_and_configures_candidates_from_the_graph():
    config = HeuristicConfig(
        plateau_patience=0, param_budget=1600, candidates=(BlueprintChoice("conv_heavy"), BlueprintChoice("conv_light"))
    )
    offered = graph(
        [("conv_heavy", {"kernel_size": 3, "expansion": 3.5}, 1380), ("conv_light", {"kernel_size": 3}, 200)]
    )
    d = HeuristicTamiyo(config).decide(signals(1, [slot()]), graph=offered)
    assert d.blueprint == "conv_light" and d.blueprint_config == {"kernel_size": 3} and "adds 200 params" in d.reason
    roomy = HeuristicTamiyo(HeuristicConfig(plateau_patience=0, candidates=config.candidates))
    d = roomy.decide(signals(1, [slot()]), graph=offered)
    assert d.blueprint == "conv_heavy" and d.blueprint_config == {"kernel_size": 3, "expansion": 3.5}


def test_a_candidate_the_graph_does_not_offer_at_the_slot_does_not_fit():
    policy = HeuristicTamiyo(HeuristicConfig(plateau_patience=0, candidates=(BlueprintChoice("conv_heavy"),)))
    d = policy.decide(signals(1, [slot()]), graph=graph([("mlp", {}, 50)]))
    assert d.action is DecisionAction.WAIT and "affordable" in d.reason


def test_gates_are_checked_with_the_thresholds_the_graph_names():
    report = slot(stage=SeedStage.TRAINING, seed_id="a", blueprint="conv_light", epochs_in_stage=2, improvement=0.1)
    strict = HeuristicTamiyo(HeuristicConfig(plateau_patience=100))
    assert strict.decide(signals(1, [report])).action is DecisionAction.WAIT  # default: 3 training epochs
    quick = HeuristicTamiyo(HeuristicConfig(plateau_patience=100))
    tempo = graph([], thresholds=GateThresholds(min_training_epochs=2))
    assert quick.decide(signals(1, [report]), graph=tempo).action is DecisionAction.ADVANCE


def _with_id(decision: AdaptationDecision) -> AdaptationDecision:
    import msgspec

    return msgspec.structs.replace(decision, command_id="c1")
