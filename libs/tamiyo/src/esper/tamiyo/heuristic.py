"""HeuristicTamiyo: the rule-based baseline policy.

Rules, in priority order (one decision per epoch; with ``per_slot`` one per
slot and epoch: the decide step asks again, with the slots already acted on
excluded, until the policy waits):

1. cull a seed that harms validation (counterfactual accuracy contribution
   below ``-cull_harm`` for ``cull_patience`` measurements while it does not
   lower validation loss either), one whose isolated
   training stalled, or one on probation that proved nothing;
2. advance a seed whose next gate passes (the same Leyline gate Kasmina runs;
   the step out of PROBATIONARY is FOSSILIZE);
3. germinate on a plateau, after the cooldown that follows a cull, within the
   parameter budget, with the blueprint whose running score is best;
4. otherwise wait.

Blueprint scores are running averages of outcomes (fossilized: +1, culled:
-1), so a blueprint that keeps failing is chosen less; ties keep the
configured order.

With the run's :class:`ModelGraph` the policy prices every candidate at the
slot from the graph's options (a candidate the graph does not offer there
does not fit), builds it with the graph's configuration when the candidate
names none, and checks gates with the thresholds the graph says Kasmina runs.
Candidates are chosen per slot: the slot's own list, else the list for the
slot's layout in the graph (``layout_candidates``), else ``candidates``; where
the graph offers none of them at a slot, the graph's own options are the
candidates, in the order it lists them (``fallback_to_graph``), so every
kind of slot can grow.
"""

from __future__ import annotations

from typing import Any

from esper.leyline import (
    ACTIVE_STAGES,
    BLENDED_STAGES,
    AdaptationDecision,
    DecisionAction,
    Gate,
    GateInputs,
    GateResult,
    LayerHealth,
    ModelGraph,
    SeedStage,
    SeedStateReport,
    TrainingSignals,
    evaluate,
)
from esper.tamiyo.heuristic_config import BlueprintChoice, HeuristicConfig
from esper.tamiyo.policy import CostModel, decision_id, wait
from esper.tamiyo.tracker import SignalTracker

_NEXT_GATE: dict[SeedStage, Gate] = {
    SeedStage.GERMINATED: Gate.G1_TRAIN,
    SeedStage.TRAINING: Gate.G2_BLEND,
    SeedStage.BLENDING: Gate.G3_SHADOW,
    SeedStage.SHADOWING: Gate.G4_PROBATION,
    SeedStage.PROBATIONARY: Gate.G5_FOSSILIZE,
}


class HeuristicTamiyo:
    """The rule-based :class:`~esper.tamiyo.policy.Policy` (see the module docstring).

    Prices come from the graph handed to :meth:`decide`, else from
    ``cost_model``; with neither, every candidate is assumed to fit and a
    ``param_budget`` cannot be respected, so nothing is germinated under one.
    """

    name = "heuristic"

    def __init__(self, config: HeuristicConfig | None = None, *, cost_model: CostModel | None = None) -> None:
        self.config = config or HeuristicConfig()
        self.cost_model = cost_model
        self.tracker = SignalTracker()
        self._graph: ModelGraph | None = None
        self.scores: dict[str, float] = {}
        self.outcomes: dict[str, list[int]] = {}
        self.last_cull_epoch: int | None = None
        self._live: dict[str, tuple[str | None, str | None]] = {}
        self._exclude: frozenset[str] = frozenset()

    @property
    def slotwise(self) -> bool:
        """Whether the decide step may ask again at a boundary (``config.per_slot``)."""
        return self.config.per_slot

    # -- bookkeeping ---------------------------------------------------------
    def _score_outcomes(self, seeds: list[SeedStateReport], epoch: int) -> None:
        """Credit or blame blueprints for seeds that left the live stages since last epoch."""
        for report in seeds:
            before = self._live.get(report.slot_id)
            if before is not None and before[0] != report.seed_id and report.stage in ACTIVE_STAGES:
                self._fail(before[1], epoch)
            if report.stage in ACTIVE_STAGES:
                self._live[report.slot_id] = (report.seed_id, report.blueprint)
            elif before is not None:
                if report.stage is SeedStage.FOSSILIZED and report.seed_id == before[0]:
                    self._record(before[1] or "?", +1)
                else:
                    self._fail(before[1], epoch)
                del self._live[report.slot_id]

    def _fail(self, blueprint: str | None, epoch: int) -> None:
        self._record(blueprint or "?", -1)
        self.last_cull_epoch = epoch

    def _record(self, blueprint: str, outcome: int) -> None:
        rate = self.config.score_rate
        self.scores[blueprint] = (1 - rate) * self.scores.get(blueprint, 0.0) + rate * outcome
        self.outcomes.setdefault(blueprint, []).append(outcome)

    # -- the decision --------------------------------------------------------
    def decide(
        self,
        signals: TrainingSignals,
        *,
        graph: ModelGraph | None = None,
        health: LayerHealth | None = None,
        exclude: frozenset[str] = frozenset(),
    ) -> AdaptationDecision:
        """One decision for ``signals.epoch`` about a slot not in ``exclude`` (rules: the module docstring).

        With ``exclude`` the boundary was seen already (the decide step asks
        again): the epoch is not observed or scored twice.
        """
        self._graph = graph
        self._exclude = exclude
        epoch = signals.epoch
        if exclude and self.tracker.last is not None and self.tracker.last.epoch == epoch:
            tracked = self.tracker.last
        else:
            tracked = self.tracker.observe(signals)
            self._score_outcomes(list(signals.seeds), epoch)
        if tracked.sanitized:
            return wait(self.name, epoch, f"signals not finite ({', '.join(tracked.sanitized)}); holding", 0.5)
        for decide in (self._cull, self._advance, self._germinate):
            decision = decide(signals)
            if decision is not None:
                return decision
        active = sum(1 for r in signals.seeds if r.stage in ACTIVE_STAGES)
        return wait(self.name, epoch, self._wait_reason(signals, active), 0.8)

    def _decision(
        self,
        signals: TrainingSignals,
        action: DecisionAction,
        slot: str,
        reason: str,
        confidence: float,
        choice: BlueprintChoice | None = None,
    ) -> AdaptationDecision:
        return AdaptationDecision(
            decision_id=decision_id(self.name, signals.epoch),
            epoch=signals.epoch,
            action=action,
            reason=reason,
            confidence=min(1.0, max(0.0, confidence)),
            slot_id=slot,
            blueprint=choice.name if choice else None,
            blueprint_config=dict(choice.config) if choice else {},
            policy=self.name,
        )

    def _cull(self, signals: TrainingSignals) -> AdaptationDecision | None:
        c = self.config
        for r in signals.seeds:
            if r.stage not in ACTIVE_STAGES or r.slot_id in self._exclude:
                continue
            if r.stage in BLENDED_STAGES:
                recent = self.tracker.contributions(r.slot_id)[-c.cull_patience :]
                # accuracy on a small validation split is coarse: a seed that lowers validation loss is not harmful
                lowers_loss = r.contribution_loss is not None and r.contribution_loss > 0 and c.cull_needs_loss_harm
                harmful = len(recent) == c.cull_patience and all(x < -c.cull_harm for x in recent)
                if c.cull_patience and harmful and not lowers_loss:
                    harm = -max(recent)
                    reason = (
                        f"seed {r.seed_id} ({r.blueprint}) harms validation: contribution "
                        f"{-harm:+.4f} < {-c.cull_harm:+.4f} for {c.cull_patience} epochs"
                    )
                    return self._decision(
                        signals,
                        DecisionAction.CULL,
                        r.slot_id,
                        reason,
                        0.6 + 0.4 * min(1.0, harm / max(4 * c.cull_harm, 1e-9)),
                    )
            gate = self._gate(r)
            if r.stage is SeedStage.TRAINING and r.epochs_in_stage >= c.max_training_epochs and not gate.passed:
                reason = f"isolated training stalled after {r.epochs_in_stage} epochs ({gate.reason})"
                return self._decision(signals, DecisionAction.CULL, r.slot_id, reason, 0.7)
            if r.stage is SeedStage.PROBATIONARY and r.epochs_in_stage >= c.max_probation_epochs and not gate.passed:
                reason = f"no proven contribution after {r.epochs_in_stage} epochs on probation ({gate.reason})"
                return self._decision(signals, DecisionAction.CULL, r.slot_id, reason, 0.7)
        return None

    def _gate(self, r: SeedStateReport) -> GateResult:
        gate = _NEXT_GATE[SeedStage(r.stage)]
        inputs = GateInputs(
            stage=SeedStage(r.stage),
            epochs_in_stage=r.epochs_in_stage,
            seed_built=True,
            improvement=r.improvement,
            alpha=r.alpha,
            contribution=r.contribution,
            seed_grad_norm=r.seed_grad_norm,
        )
        thresholds = self._graph.thresholds if self._graph is not None else None
        return evaluate(gate, inputs, thresholds or self.config.thresholds)

    def _advance(self, signals: TrainingSignals) -> AdaptationDecision | None:
        for r in signals.seeds:
            if r.stage not in ACTIVE_STAGES or r.slot_id in self._exclude:
                continue
            gate = self._gate(r)
            if not gate.passed:
                continue
            if r.stage is SeedStage.PROBATIONARY:
                contribution = r.contribution or 0.0
                return self._decision(
                    signals,
                    DecisionAction.FOSSILIZE,
                    r.slot_id,
                    f"fossilize: {gate.reason}",
                    0.6 + 0.4 * min(1.0, contribution / 0.05),
                )
            return self._decision(
                signals, DecisionAction.ADVANCE, r.slot_id, f"advance {SeedStage(r.stage).name}: {gate.reason}", 0.9
            )
        return None

    def _germinate(self, signals: TrainingSignals) -> AdaptationDecision | None:
        c = self.config
        epoch = signals.epoch
        t = self.tracker.last
        assert t is not None
        active = sum(1 for r in signals.seeds if r.stage in ACTIVE_STAGES)
        if epoch < c.min_epoch_to_germinate or active >= c.max_active_seeds or t.plateau_epochs < c.plateau_patience:
            return None
        if self.last_cull_epoch is not None and epoch - self.last_cull_epoch < c.cooldown_epochs:
            return None
        by_slot = {r.slot_id: r for r in signals.seeds}
        order = c.slot_order or tuple(by_slot)
        for slot_id in order:
            report = by_slot.get(slot_id)
            if report is None or report.stage is not SeedStage.DORMANT or slot_id in self._exclude:
                continue
            choice = self._best_choice(slot_id, signals.params_total)
            if choice is None:
                continue
            choice, cost = choice
            score = self.scores.get(choice.name, 0.0)
            trigger = f"plateau for {t.plateau_epochs} epochs"
            if not c.plateau_patience:
                trigger = f"early growth ({trigger}, none required)"
            reason = (
                f"{trigger} (val acc {t.val_accuracy:.4f}, best "
                f"{t.best_val_accuracy:.4f}); {choice.name} scores {score:+.2f}"
                + (f", adds {cost} params" if cost is not None else "")
            )
            confidence = 0.5 + 0.5 * min(1.0, t.plateau_epochs / max(2 * c.plateau_patience, 1)) * (1 + score) / 2
            return self._decision(signals, DecisionAction.GERMINATE, slot_id, reason, confidence, choice)
        return None

    def _candidates(self, slot_id: str) -> tuple[BlueprintChoice, ...]:
        c = self.config
        if slot_id in c.slot_candidates:
            return c.slot_candidates[slot_id]
        slot = self._graph.slot(slot_id) if self._graph is not None else None
        if slot is not None and slot.layout in c.layout_candidates:
            return c.layout_candidates[slot.layout]
        return c.candidates

    def _best_choice(self, slot_id: str, params_total: int) -> tuple[BlueprintChoice, int | None] | None:
        c = self.config
        candidates = self._candidates(slot_id)
        priced_all = [self._price(slot_id, candidate) for candidate in candidates]
        slot = self._graph.slot(slot_id) if self._graph is not None else None
        if c.fallback_to_graph and slot is not None and all(p is None for p in priced_all):
            priced_all = [(BlueprintChoice(o.blueprint, dict(o.config)), o.params) for o in slot.options]
        best: tuple[float, int, BlueprintChoice, int | None] | None = None
        for index, priced in enumerate(priced_all):
            if priced is None:
                continue
            choice, cost = priced
            if c.param_budget is not None and (cost is None or params_total + cost > c.param_budget):
                continue
            key = (self.scores.get(choice.name, 0.0), -index)
            if best is None or key > best[:2]:
                best = (key[0], key[1], choice, cost)
        return None if best is None else (best[2], best[3])

    def _price(self, slot_id: str, candidate: BlueprintChoice) -> tuple[BlueprintChoice, int | None] | None:
        """The candidate as it would be built at ``slot_id`` and its cost; None where it does not fit."""
        graph = self._graph
        if graph is not None:
            slot = graph.slot(slot_id)
            for option in slot.options if slot is not None else ():
                if option.blueprint == candidate.name and (
                    not candidate.config or dict(option.config) == dict(candidate.config)
                ):
                    return BlueprintChoice(option.blueprint, dict(option.config)), option.params
            return None
        if self.cost_model is None:
            return candidate, None
        cost = self.cost_model(slot_id, candidate.name, candidate.config)
        return None if cost is None else (candidate, cost)

    def _wait_reason(self, signals: TrainingSignals, active: int) -> str:
        c, t = self.config, self.tracker.last
        assert t is not None
        if active:
            return f"{active} seed(s) in progress; no gate passes yet"
        if signals.epoch < c.min_epoch_to_germinate:
            return f"epoch {signals.epoch} < {c.min_epoch_to_germinate}: host still warming up"
        if self.last_cull_epoch is not None and signals.epoch - self.last_cull_epoch < c.cooldown_epochs:
            return f"cooldown after the cull at epoch {self.last_cull_epoch}"
        if t.plateau_epochs < c.plateau_patience:
            return f"still improving (plateau {t.plateau_epochs} < {c.plateau_patience})"
        if c.param_budget is not None and self._graph is None and self.cost_model is None:
            return f"budget {c.param_budget} set but no model graph to price blueprints with yet"
        return "no dormant slot with an affordable blueprint"

    # -- checkpoints ---------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "tracker": self.tracker.state_dict(),
            "scores": dict(self.scores),
            "outcomes": {k: list(v) for k, v in self.outcomes.items()},
            "last_cull_epoch": self.last_cull_epoch,
            "live": {k: list(v) for k, v in self._live.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state["tracker"])
        self.scores = dict(state["scores"])
        self.outcomes = {k: list(v) for k, v in state["outcomes"].items()}
        self.last_cull_epoch = state["last_cull_epoch"]
        self._live = {k: (v[0], v[1]) for k, v in state["live"].items()}
