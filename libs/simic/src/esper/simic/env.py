"""The Gymnasium environment: one episode is one short Tolaria training run.

``reset`` draws a task variant (:mod:`esper.simic.variants`), builds Tolaria's
:class:`~esper.tolaria.trainer.Trainer` over it and runs the first epoch; each
``step(action)`` is the decision on the epoch just observed. The decision goes
through the same decide step as ``esper train`` (the trainer calls its policy,
then Tamiyo's safety monitor, then applies the command at the epoch boundary),
then the next epoch trains. The trainer runs in a helper thread and its policy
hands each epoch's messages to ``step`` and waits for the action: the
environment sees exactly the ``ModelGraph``, ``TrainingSignals`` and
``LayerHealth`` a deployed Tamiyo sees, nothing simulated.

Observation: a :class:`~esper.tamiyo.gnn.observation.GraphObservation`.
Action: ``(operation, slot, option)`` integers (see :mod:`esper.tamiyo.gnn.network`);
an action that names no slot or option of this host is taken as WAIT.

Per slot (``EnvConfig.per_slot``): the regime the deployed GNN policy decides in.
The environment's policy is then slotwise, so Tamiyo's decide step
(:func:`esper.tamiyo.decide.decide_boundary`) asks it again at a boundary about
the slots it has not acted on, on the run as the accepted commands will leave it,
until it waits, a decision is refused, it names a slot already acted on, or
every slot has a decision; only then does the next epoch train. Every
observation is a :class:`SlotQuestion`: what :class:`~esper.tamiyo.gnn.policy.GNNTamiyo`
decides on when asked (the decide step's view of the signals, the same graph,
health and histories, nothing folded twice) and the slots it must leave alone
(``exclude``, empty on a boundary's first question). Rewards: a question that
does not end its boundary earns 0; the one that ends it earns the whole epoch's
reward (from the boundary's first observation to the next epoch's), so an
episode's undiscounted return is the once-per-epoch mode's for the same decisions.
Time passes only when an epoch trains: ``info["discount_steps"]`` is 0 for a
question asked again and 1 for the step that ends a boundary, and Simic's PPO
discounts by ``gamma ** discount_steps`` (:func:`esper.simic.ppo.compute_gae`),
so the discounted returns are the once-per-epoch mode's too (with a discount
per question, every action but the last at a boundary would cost ``1 - gamma``
of the value still to come, a bias against acting).

Reward per step (``RewardConfig``): validation-accuracy gain over the epoch,
minus a parameter rent (``rent`` x the fraction of parameters grown beyond the
initial host), plus potential-based shaping ``gamma * phi(s') - phi(s)`` with
``phi`` the sum of the slots' stage potentials (Ng et al. 1999: it leaves the
optimal policy unchanged; ``phi`` of the terminal state is 0), plus at the end
a terminal term: ``terminal`` x the final validation accuracy minus
``terminal_rent`` x ``log(final params / initial params)``.
"""

from __future__ import annotations

import math
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch

from esper.leyline import (
    AdaptationDecision,
    DecisionAction,
    LayerHealth,
    ModelGraph,
    SeedStage,
    TrainingSignals,
)
from esper.leyline.observation import HISTORY_LENGTH
from esper.simic.ppo import DISCOUNT_STEPS
from esper.simic.spaces import GraphObservationSpace, SlotQuestion, legal_for
from esper.simic.variants import Variant, load_variant, variant
from esper.tamiyo.gnn.observation import OPERATIONS, GraphObservation
from esper.tamiyo.policy import Policy, decision_id, wait
from esper.tolaria.config import TrainerConfig
from esper.tolaria.runs import KASMINA
from esper.tolaria.trainer import Trainer

#: Stage potentials for shaping: progress along the lifecycle is worth a little, culls return to zero.
STAGE_POTENTIAL: dict[SeedStage, float] = {
    SeedStage.DORMANT: 0.0,
    SeedStage.GERMINATED: 0.002,
    SeedStage.TRAINING: 0.004,
    SeedStage.BLENDING: 0.006,
    SeedStage.SHADOWING: 0.008,
    SeedStage.PROBATIONARY: 0.01,
    SeedStage.FOSSILIZED: 0.012,
    SeedStage.CULLED: 0.0,
    SeedStage.EMBARGOED: 0.0,
    SeedStage.RESETTING: 0.0,
}


@dataclass(frozen=True, slots=True)
class RewardConfig:
    """Reward terms (see the module docstring); ``gamma`` must be the learner's discount.

    The rents are small on purpose: a growth that buys one point of accuracy must come out ahead. With
    ``rent=0.005`` and ``terminal_rent=0.05`` the recorded heuristic runs that grew earned less
    than those that waited, and the offline policy learned never to grow.
    """

    rent: float = 0.0005
    gamma: float = 0.99
    terminal: float = 1.0
    terminal_rent: float = 0.01
    shaping: bool = True


@dataclass(frozen=True, slots=True)
class EnvConfig:
    """An episode's run: ``epochs`` of Tolaria on a variant of ``split`` (a pool of ``pool`` variants)."""

    split: str = "train"
    pool: int = 64
    epochs: int = 10
    batch_size: int = 100
    lr: float = 1e-2
    lr_schedule: str = "cosine"
    max_train_samples: int | None = None
    samples: int = 2_000
    param_budget_ratio: float | None = 4.0
    max_active_seeds: int = 3
    reward: RewardConfig = field(default_factory=RewardConfig)
    per_slot: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 2:
            raise ValueError(f"field 'epochs': an episode needs at least 2 epochs (value {self.epochs!r})")
        if self.pool < 1:
            raise ValueError(f"field 'pool': must be >= 1 (value {self.pool!r})")
        if not isinstance(self.per_slot, bool):
            raise ValueError(f"field 'per_slot': must be true or false (value {self.per_slot!r})")


class _Abandoned(Exception):
    """Raised inside the trainer's thread when the environment resets or closes mid-episode."""


class _SteppedPolicy:
    """The trainer's policy inside the environment: hands each epoch to ``step`` and waits for its action."""

    name = "simic"

    def __init__(self, env: TamiyoEnv) -> None:
        self.env = env

    @property
    def slotwise(self) -> bool:
        """Per slot, the decide step asks again at a boundary (see the module docstring)."""
        return self.env.config.per_slot

    def decide(
        self,
        signals: TrainingSignals,
        *,
        graph: ModelGraph | None = None,
        health: LayerHealth | None = None,
        exclude: frozenset[str] = frozenset(),
    ) -> AdaptationDecision:
        final = signals.epoch >= self.env.config.epochs
        if exclude:  # the same boundary asked again: ``signals`` is the decide step's view
            self.env._outbox.put(("again", (signals, graph, health, exclude)))
        else:
            self.env._outbox.put(("epoch", (signals, graph, health, final)))
        if final:
            return wait(self.name, signals.epoch, "episode over")
        action = self.env._inbox.get()
        if action is None:
            raise _Abandoned
        return self.env.decision(action, signals, graph)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


class TamiyoEnv(gym.Env[GraphObservation, np.ndarray]):
    """One Tolaria run per episode with the learned policy's decisions (see the module docstring)."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, config: EnvConfig | None = None, *, variants: list[Variant] | None = None) -> None:
        super().__init__()
        self.config = config or EnvConfig()
        self.variants = variants or [
            variant(self.config.split, i, samples=self.config.samples) for i in range(self.config.pool)
        ]
        self.max_slots, self.max_options = self._action_bounds()
        self.observation_space = GraphObservationSpace(per_slot=self.config.per_slot)
        self.action_space = gym.spaces.MultiDiscrete([len(OPERATIONS), self.max_slots, self.max_options])
        self.trainer: Trainer | None = None
        self.variant: Variant | None = None
        self._thread: threading.Thread | None = None
        self._inbox: queue.Queue[np.ndarray | None] = queue.Queue()
        self._outbox: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._obs: GraphObservation | None = None
        self._start: GraphObservation | None = None  # the boundary's first observation (rewards run from it)
        self._exclude: frozenset[str] = frozenset()
        self._losses: list[float] = []
        self._accuracies: list[float] = []
        self.last_decision: AdaptationDecision | None = None

    def _action_bounds(self) -> tuple[int, int]:
        # ConvHost1D (3 slots) for every family; the catalogue offers at most 8 options per slot
        return 3, 8

    # -- the episode ----------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[GraphObservation | SlotQuestion, dict]:
        super().reset(seed=seed)
        self._stop_thread()
        options = options or {}
        index = int(options.get("variant", self.np_random.integers(len(self.variants))))
        run_seed = int(options.get("run_seed", self.np_random.integers(2**31 - 1)))
        self.variant = self.variants[index]
        task = load_variant(self.variant, max_train_samples=self.config.max_train_samples)
        trainer_config = TrainerConfig(
            epochs=self.config.epochs,
            batch_size=self.config.batch_size,
            lr=self.config.lr,
            lr_schedule=self.config.lr_schedule,
            seed=run_seed,
            checkpoint_every=10**6,
        )
        policy: Policy = _SteppedPolicy(self)
        self.trainer = Trainer(task, policy, trainer_config, kasmina=KASMINA, run_id=f"simic-{self.variant.variant_id}")
        ratio = self.config.param_budget_ratio
        self.param_budget = None if ratio is None else int(ratio * self.trainer.params_initial)
        self.trainer.param_budget = self.param_budget
        self._losses, self._accuracies = [], []
        self._inbox, self._outbox = queue.Queue(), queue.Queue()
        self._thread = threading.Thread(target=self._train, name="simic-trainer", daemon=True)
        self._thread.start()
        obs, _, _ = self._next()
        self._obs = self._start = obs
        self._exclude = frozenset()
        return self._observed(obs), self._info(obs)

    def step(self, action: np.ndarray) -> tuple[GraphObservation | SlotQuestion, float, bool, bool, dict]:
        if self._obs is None or self._start is None or self.trainer is None:
            raise RuntimeError("step() before reset(): call reset() first")
        self._inbox.put(np.asarray(action))
        obs, final, exclude = self._next()
        self._obs = obs
        if exclude is not None:  # the same boundary asked again: its reward comes with the step that ends it
            reward, self._exclude = 0.0, exclude
        else:
            reward = self.reward(self._start, obs, final)
            self._start, self._exclude = obs, frozenset()
        info = self._info(obs)
        info[DISCOUNT_STEPS] = 0 if exclude is not None else 1
        if self.last_decision is not None:
            info["decision"] = self.last_decision.action.value
        if final:
            self._thread.join(timeout=60)  # type: ignore[union-attr]
            record = self.trainer.history[-1]
            info["final"] = {
                "val_accuracy": record.val_accuracy,
                "test_accuracy": record.test_accuracy,
                "params": record.params,
                "params_initial": self.trainer.params_initial,
                "wall_seconds": self.trainer.wall_seconds,
                "variant": self.variant.variant_id if self.variant else None,
            }
        return self._observed(obs), reward, final, False, info

    def _observed(self, obs: GraphObservation) -> GraphObservation | SlotQuestion:
        return SlotQuestion(obs, self._exclude) if self.config.per_slot else obs

    def close(self) -> None:
        self._stop_thread()
        super().close()

    # -- the trainer's side ---------------------------------------------------
    def _train(self) -> None:
        try:
            torch.set_num_threads(1)
            self.trainer.fit()  # type: ignore[union-attr]
            self._outbox.put(("done", None))
        except _Abandoned:
            return
        except BaseException as exc:  # surfaced in the caller's thread by _next
            self._outbox.put(("error", exc))

    def _next(self) -> tuple[GraphObservation, bool, frozenset[str] | None]:
        """The next question: its observation, whether the episode is over, and the slots to leave alone
        (None for an epoch's first question; asked again, the epoch is already in the histories)."""
        kind, payload = self._outbox.get()
        if kind == "error":
            raise RuntimeError(f"training run of variant {self.variant} failed: {payload}") from payload
        if kind == "again":
            signals, graph, health, exclude = payload
            return self._observation(signals, graph, health), False, frozenset(exclude)
        if kind != "epoch":
            raise RuntimeError("training run ended without a final epoch")
        signals, graph, health, final = payload
        self._losses = [*self._losses, signals.val_loss][-HISTORY_LENGTH:]
        self._accuracies = [*self._accuracies, signals.val_accuracy][-HISTORY_LENGTH:]
        return self._observation(signals, graph, health), final, None

    def _observation(self, signals: TrainingSignals, graph: ModelGraph, health: LayerHealth | None) -> GraphObservation:
        return GraphObservation(
            graph=graph,
            signals=signals,
            health=health,
            loss_history=tuple(self._losses),
            accuracy_history=tuple(self._accuracies),
            params_initial=self.trainer.params_initial,  # type: ignore[union-attr]
            epochs_total=self.config.epochs,
            param_budget=self.param_budget,
        )

    def _stop_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._inbox.put(None)
            self._thread.join(timeout=60)
        self._thread = None

    # -- actions and rewards --------------------------------------------------
    def decision(self, action: np.ndarray, signals: TrainingSignals, graph: ModelGraph | None) -> AdaptationDecision:
        """The decision ``action`` stands for on this epoch (WAIT where it names nothing on this host)."""
        op, slot_number, option_number = (int(v) for v in action[:3])
        epoch = signals.epoch
        decision: AdaptationDecision
        if graph is None or not 0 <= op < len(OPERATIONS) or OPERATIONS[op] is DecisionAction.WAIT:
            decision = wait(self.name_of_policy, epoch, "simic: wait")
        elif slot_number >= len(graph.slots):
            decision = wait(self.name_of_policy, epoch, f"simic: slot {slot_number} is not on this host")
        else:
            slot = graph.slots[slot_number]
            blueprint, config = None, {}
            if OPERATIONS[op] is DecisionAction.GERMINATE:
                if option_number >= len(slot.options):
                    decision = wait(self.name_of_policy, epoch, f"simic: option {option_number} not at {slot.slot_id}")
                    self.last_decision = decision
                    return decision
                blueprint, config = slot.options[option_number].blueprint, dict(slot.options[option_number].config)
            decision = AdaptationDecision(
                decision_id=decision_id(self.name_of_policy, epoch),
                epoch=epoch,
                action=OPERATIONS[op],
                reason=f"simic: {OPERATIONS[op].value} {slot.slot_id}",
                confidence=1.0,  # exploration is the learner's business; the monitor still checks legality
                slot_id=slot.slot_id,
                blueprint=blueprint,
                blueprint_config=config,
                policy=self.name_of_policy,
            )
        self.last_decision = decision
        return decision

    name_of_policy = "simic"

    def reward(self, before: GraphObservation, after: GraphObservation, final: bool) -> float:
        """The reward of the step from ``before`` to ``after`` (see the module docstring)."""
        cfg = self.config.reward
        gain = after.signals.val_accuracy - before.signals.val_accuracy
        params = after.signals.params_total or after.graph.params_total
        grown = max(params / max(after.params_initial, 1) - 1.0, 0.0)
        reward = gain - cfg.rent * grown
        if cfg.shaping:
            reward += (0.0 if final else cfg.gamma * potential(after)) - potential(before)
        if final:
            reward += cfg.terminal * after.signals.val_accuracy
            reward -= cfg.terminal_rent * math.log(max(params, 1) / max(after.params_initial, 1))
        return float(reward) if math.isfinite(reward) else -1.0

    def _info(self, obs: GraphObservation) -> dict[str, Any]:
        legal = legal_for(obs, self._exclude, max_active_seeds=self.config.max_active_seeds)
        return {
            "epoch": obs.signals.epoch,
            "val_accuracy": obs.signals.val_accuracy,
            "params": obs.signals.params_total,
            "legal_ops": legal.ops,
        }


def potential(obs: GraphObservation) -> float:
    """phi(s): the sum of the slots' stage potentials."""
    return sum(STAGE_POTENTIAL[SeedStage(r.stage)] for r in obs.signals.seeds)
