import pytest

from esper.leyline import (
    AdaptationDecision,
    CommandAction,
    DecisionAction,
    SeedStage,
    SeedStateReport,
    TrainingSignals,
)
from esper.tamiyo.heuristic import BlueprintChoice, HeuristicConfig, HeuristicTamiyo
from esper.tamiyo.policy import Policy, StaticPolicy, decision_to_command


def slot(slot_id="s1", stage=SeedStage.DORMANT, **kw) -> SeedStateReport:
    return SeedStateReport(slot_id=slot_id, stage=stage, **kw)


def signals(epoch, seeds, val_acc=0.5, val_loss=1.0, params=1000) -> TrainingSignals:
    return TrainingSignals(
        epoch=epoch,
        train_loss=1.0,
        val_loss=val_loss,
        train_accuracy=0.5,
        val_accuracy=val_acc,
        params_total=params,
        seeds=seeds,
    )


def plateau(policy: HeuristicTamiyo, epochs: int, seeds) -> AdaptationDecision:
    decision = None
    for e in range(1, epochs + 1):
        decision = policy.decide(signals(e, seeds))
    assert decision is not None
    return decision


def test_heuristic_and_static_implement_the_policy_interface():
    assert isinstance(HeuristicTamiyo(), Policy)
    assert isinstance(StaticPolicy(), Policy)


def test_waits_while_improving_and_germinates_on_plateau():
    policy = HeuristicTamiyo(HeuristicConfig(plateau_patience=2))
    for e, acc in enumerate((0.3, 0.4, 0.5), start=1):
        d = policy.decide(signals(e, [slot()], val_acc=acc, val_loss=1 - acc))
        assert d.action is DecisionAction.WAIT and "improving" in d.reason
    policy.decide(signals(4, [slot()], val_acc=0.5, val_loss=0.5))
    d = policy.decide(signals(5, [slot()], val_acc=0.5, val_loss=0.5))
    assert d.action is DecisionAction.GERMINATE and d.slot_id == "s1" and d.blueprint == "conv_light"
    assert "plateau" in d.reason and 0.0 < d.confidence <= 1.0


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
    assert decision_to_command(d).action is CommandAction.FOSSILIZE


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
    with pytest.raises(ValueError, match="cost_model"):
        HeuristicTamiyo(HeuristicConfig(param_budget=10))


def test_wait_becomes_no_command():
    assert decision_to_command(StaticPolicy().decide(signals(1, [slot()]))) is None
