"""Demonstrations: runs of any policy recorded as the learned policy would have seen them (search, then distill).

:class:`RecordingPolicy` wraps a policy (an :class:`~esper.simic.arms.Arm`'s
heuristic, usually) inside an ordinary Tolaria run and records, for every
decision the decide step asks for, the :class:`GraphObservation` the GNN policy
would have built at that moment (the same histories and run context as
:class:`~esper.tamiyo.gnn.policy.GNNTamiyo`) and the environment action the
decision stands for (:func:`esper.simic.offline.action_for`). It is slotwise,
as the deployed GNN policy is: asked again at a boundary, it passes the
question on to a slotwise inner policy and answers WAIT for any other, so the
recorded data also teaches when to stop acting at a boundary.

:func:`record_demonstrations` turns such runs into Simic's offline
:class:`~esper.simic.offline.Transition` records: every reward is zero but the
run's last, which is the environment's terminal term (final validation
accuracy minus ``terminal_rent`` x log of the growth factor), so the returns
advantage-weighted cloning weighs them by are the runs' own outcomes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from esper.leyline import AdaptationDecision, LayerHealth, ModelGraph, TrainingSignals
from esper.leyline.observation import HISTORY_LENGTH
from esper.simic.arms import Arm
from esper.simic.compare import RunResult, run_with
from esper.simic.env import EnvConfig
from esper.simic.offline import Action, Transition, action_for
from esper.simic.variants import Variant
from esper.tamiyo.gnn.observation import GraphObservation
from esper.tamiyo.policy import Policy, is_slotwise, wait


class RecordingPolicy:
    """``inner``'s decisions, with each one's observation and action kept in :attr:`steps` (module docstring)."""

    slotwise = True

    def __init__(self, inner: Policy, *, epochs_total: int, param_budget: int | None, max_active_seeds: int = 3):
        self.inner = inner
        self.name = getattr(inner, "name", "recorded")
        self.epochs_total = epochs_total
        self.param_budget = param_budget
        self.max_active_seeds = max_active_seeds
        self.steps: list[tuple[GraphObservation, Action]] = []
        self._graph: ModelGraph | None = None
        self._losses: list[float] = []
        self._accuracies: list[float] = []
        self._params_initial: int | None = None

    def decide(
        self,
        signals: TrainingSignals,
        *,
        graph: ModelGraph | None = None,
        health: LayerHealth | None = None,
        exclude: frozenset[str] = frozenset(),
    ) -> AdaptationDecision:
        if not exclude:
            if graph is not None and (self._graph is None or graph.revision >= self._graph.revision):
                self._graph = graph
            if self._params_initial is None and self._graph is not None:
                self._params_initial = self._graph.params_total
            self._losses = [*self._losses, signals.val_loss][-HISTORY_LENGTH:]
            self._accuracies = [*self._accuracies, signals.val_accuracy][-HISTORY_LENGTH:]
            decision = self.inner.decide(signals, graph=graph, health=health)
        elif is_slotwise(self.inner):
            decision = self.inner.decide(signals, graph=graph, health=health, exclude=exclude)  # type: ignore[call-arg]
        else:
            decision = wait(self.name, signals.epoch, "one decision per boundary")
        if self._graph is not None:
            obs = GraphObservation(
                graph=self._graph,
                signals=signals,
                health=health,
                loss_history=tuple(self._losses),
                accuracy_history=tuple(self._accuracies),
                params_initial=self._params_initial or self._graph.params_total,
                epochs_total=self.epochs_total,
                param_budget=self.param_budget,
            )
            self.steps.append((obs, action_for(decision, obs, max_active_seeds=self.max_active_seeds)))
        return decision

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)


def record_run(
    arm: Arm, v: Variant, seed: int, env: EnvConfig
) -> tuple[RunResult, list[tuple[GraphObservation, Action]]]:
    """One run of ``arm`` on variant ``v`` with ``seed``: its result and every (observation, action) it decided."""
    made: list[RecordingPolicy] = []

    def policy_for(budget: int | None) -> RecordingPolicy:
        made.append(RecordingPolicy(arm.policy(budget), epochs_total=env.epochs, param_budget=budget))
        return made[-1]

    result = run_with(policy_for, arm.name, v, seed, env)
    return result, made[0].steps


def transitions(
    steps: list[tuple[GraphObservation, Action]], result: RunResult, episode: int, env: EnvConfig
) -> list[Transition]:
    """The run's steps as offline transitions (zero rewards but the last: the terminal term, module docstring)."""
    cfg = env.reward
    final = cfg.terminal * result.val_accuracy - cfg.terminal_rent * math.log(
        max(result.params, 1) / max(result.params_initial, 1)
    )
    last = len(steps) - 1
    return [
        Transition(obs, action, final if i == last else 0.0, i == last, episode)
        for i, (obs, action) in enumerate(steps)
    ]


def record_demonstrations(
    plan: Iterable[tuple[Arm, Variant, int]],
    env: EnvConfig,
    *,
    on_run: Callable[[RunResult], Any] | None = None,
) -> list[Transition]:
    """Every ``(arm, variant, seed)`` of ``plan`` run once and recorded, episodes numbered in order."""
    data: list[Transition] = []
    for episode, (arm, v, seed) in enumerate(plan):
        result, steps = record_run(arm, v, seed, env)
        data += transitions(steps, result, episode, env)
        if on_run is not None:
            on_run(result)
    return data
