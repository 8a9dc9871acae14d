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
from esper.simic.variants import Variant, load_variant, variant
from esper.tamiyo.gnn.observation import OPERATIONS, GraphObservation, legal_actions
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

    def __post_init__(self) -> None:
        if self.epochs < 2:
            raise ValueError(f"field 'epochs': an episode needs at least 2 epochs (value {self.epochs!r})")
        if self.pool < 1:
            raise ValueError(f"field 'pool': must be >= 1 (value {self.pool!r})")


class _Abandoned(Exception):
    """Raised inside the trainer's thread when the environment resets or closes mid-episode."""


class _SteppedPolicy:
    """The trainer's policy inside the environment: hands each epoch to ``step`` and waits for its action."""

    name = "simic"

    def __init__(self, env: TamiyoEnv) -> None:
        self.env = env

    def decide(
        self, signals: TrainingSignals, *, graph: ModelGraph | None = None, health: LayerHealth | None = None
    ) -> AdaptationDecision:
        final = signals.epoch >= self.env.config.epochs
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


class GraphObservationSpace(gym.Space[GraphObservation]):
    """Observations are :class:`GraphObservation` values (vector envs batch them as tuples)."""

    def __init__(self) -> None:
        super().__init__(shape=None, dtype=None)

    def contains(self, x: Any) -> bool:
        return isinstance(x, GraphObservation)

    def sample(self, mask: Any = None, probability: Any = None) -> GraphObservation:
        raise NotImplementedError("graph observations come from training runs, they cannot be sampled")

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GraphObservationSpace)

    def __hash__(self) -> int:
        return hash(GraphObservationSpace)


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
        self.observation_space = GraphObservationSpace()
        self.action_space = gym.spaces.MultiDiscrete([len(OPERATIONS), self.max_slots, self.max_options])
        self.trainer: Trainer | None = None
        self.variant: Variant | None = None
        self._thread: threading.Thread | None = None
        self._inbox: queue.Queue[np.ndarray | None] = queue.Queue()
        self._outbox: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._obs: GraphObservation | None = None
        self._losses: list[float] = []
        self._accuracies: list[float] = []
        self.last_decision: AdaptationDecision | None = None

    def _action_bounds(self) -> tuple[int, int]:
        # ConvHost1D (3 slots) for every family; the catalogue offers at most 8 options per slot
        return 3, 8

    # -- the episode ----------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[GraphObservation, dict]:
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
        obs, _ = self._next()
        self._obs = obs
        return obs, self._info(obs)

    def step(self, action: np.ndarray) -> tuple[GraphObservation, float, bool, bool, dict]:
        if self._obs is None or self.trainer is None:
            raise RuntimeError("step() before reset(): call reset() first")
        before = self._obs
        self._inbox.put(np.asarray(action))
        obs, final = self._next()
        self._obs = obs
        reward = self.reward(before, obs, final)
        info = self._info(obs)
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
        return obs, reward, final, False, info

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

    def _next(self) -> tuple[GraphObservation, bool]:
        kind, payload = self._outbox.get()
        if kind == "error":
            raise RuntimeError(f"training run of variant {self.variant} failed: {payload}") from payload
        if kind != "epoch":
            raise RuntimeError("training run ended without a final epoch")
        signals, graph, health, final = payload
        self._losses = [*self._losses, signals.val_loss][-HISTORY_LENGTH:]
        self._accuracies = [*self._accuracies, signals.val_accuracy][-HISTORY_LENGTH:]
        obs = GraphObservation(
            graph=graph,
            signals=signals,
            health=health,
            loss_history=tuple(self._losses),
            accuracy_history=tuple(self._accuracies),
            params_initial=self.trainer.params_initial,  # type: ignore[union-attr]
            epochs_total=self.config.epochs,
            param_budget=self.param_budget,
        )
        return obs, final

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
        legal = legal_actions(obs, max_active_seeds=self.config.max_active_seeds)
        return {
            "epoch": obs.signals.epoch,
            "val_accuracy": obs.signals.val_accuracy,
            "params": obs.signals.params_total,
            "legal_ops": legal.ops,
        }


def potential(obs: GraphObservation) -> float:
    """phi(s): the sum of the slots' stage potentials."""
    return sum(STAGE_POTENTIAL[SeedStage(r.stage)] for r in obs.signals.seeds)
