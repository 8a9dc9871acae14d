"""Proximal Policy Optimization, readable top to bottom (after CleanRL's ``ppo.py``).

One dataclass of arguments (:class:`PPOConfig`), an agent with ``get_value`` /
``get_action_and_value`` (:class:`Agent`), a rollout over any Gymnasium vector
env, GAE, and the clipped-surrogate update with the details the reference
implementations have: optional value clipping, per-minibatch advantage
normalization, a linear entropy-coefficient schedule, Adam with eps 1e-5,
gradient-norm clipping at 0.5, learning-rate annealing and a target-KL early
stop, and optionally a critic warm-up (``value_warmup_updates``: the first
updates fit only the agent's ``value_parameters()`` to the returns, so the
policy starts moving on advantages from a critic that fits them). Every
update logs approximate KL, clip fraction, entropy and explained variance
(:mod:`esper.simic.diagnostics`), the numbers that tell whether learning
happens at all.

Observations are whatever the env returns: the agent's ``encode`` turns one
vector step's observations into either a tensor ``(num_envs, ...)`` or a list
of ``num_envs`` items (graphs), and ``get_action_and_value`` takes a batch of
the same kind. Episode ends follow Gymnasium's ``SAME_STEP`` autoreset: the
observation after a done step is the next episode's first, and a truncated
episode is bootstrapped from ``info["final_obs"]`` so a time limit is not
mistaken for a terminal state. An env whose steps do not all take the same time
(Simic's per-slot environment: several questions at one epoch boundary) reports
``info["discount_steps"]``, the discount steps the transition spans (missing: 1),
and the step is discounted by ``gamma ** discount_steps`` (a semi-MDP discount).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from esper.simic.diagnostics import UpdateLog, UpdateStats

Encoded = torch.Tensor | list[Any]

#: The info key through which an env says how many discount steps a transition spans (default 1).
DISCOUNT_STEPS = "discount_steps"


@dataclass(frozen=True, slots=True)
class PPOConfig:
    """Every PPO hyperparameter in one place (CleanRL's defaults for CartPole-style tasks)."""

    total_timesteps: int = 500_000
    num_steps: int = 128
    learning_rate: float = 2.5e-4
    anneal_lr: bool = True
    gamma: float = 0.99
    gae_lambda: float = 0.95
    num_minibatches: int = 4
    update_epochs: int = 4
    clip_coef: float = 0.2
    clip_vloss: bool = True
    norm_adv: bool = True
    ent_coef: float = 0.01
    ent_coef_final: float | None = None
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    target_kl: float | None = None
    adam_eps: float = 1e-5
    seed: int = 0
    value_warmup_updates: int = 0

    def __post_init__(self) -> None:
        for name in ("total_timesteps", "num_steps", "num_minibatches", "update_epochs"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"field {name!r}: must be a positive integer (value {value!r})")
        if not isinstance(self.value_warmup_updates, int) or self.value_warmup_updates < 0:
            raise ValueError(
                f"field 'value_warmup_updates': must be a non-negative integer (value {self.value_warmup_updates!r})"
            )
        if not (isinstance(self.learning_rate, (int, float)) and 0.0 < self.learning_rate < float("inf")):
            raise ValueError(f"field 'learning_rate': must be a positive number (value {self.learning_rate!r})")
        for name in ("gamma", "gae_lambda"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"field {name!r}: must be in [0, 1] (value {value!r})")

    def ent_coef_at(self, fraction_done: float) -> float:
        """Entropy coefficient after ``fraction_done`` of training (linear to ``ent_coef_final``)."""
        if self.ent_coef_final is None:
            return self.ent_coef
        return self.ent_coef + (self.ent_coef_final - self.ent_coef) * min(max(fraction_done, 0.0), 1.0)


class Agent(Protocol):
    """What PPO needs from a policy network (an ``nn.Module``)."""

    def encode(self, obs: Any, *, update_stats: bool = False) -> Encoded:
        """One vector step's observations as the network's input batch."""
        ...

    def get_value(self, x: Encoded) -> torch.Tensor:
        """State values, shape ``(B,)``."""
        ...

    def get_action_and_value(
        self, x: Encoded, action: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(action, log_prob (B,), entropy (B,), value (B,))``; samples when ``action`` is None."""
        ...

    def parameters(self) -> Any: ...

    # optional, for ``PPOConfig.value_warmup_updates``: ``value_parameters()``, the weights only the value
    # estimate depends on (training them leaves the policy's probabilities as they are)


def layer_init(layer: nn.Linear, std: float = math.sqrt(2), bias_const: float = 0.0) -> nn.Linear:
    """Orthogonal weights with gain ``std`` and constant bias (the reference initialization)."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias_const)
    return layer


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    next_value: torch.Tensor,
    next_done: torch.Tensor,
    gamma: float,
    gae_lambda: float,
    discount_steps: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over a rollout.

    ``rewards``, ``values``, ``dones``: ``(T, N)``, where ``dones[t]`` says the
    observation at step ``t`` starts a new episode. ``next_value``/``next_done``:
    ``(N,)`` for the observation after the last step. ``discount_steps`` ``(T, N)``
    (default all 1): step ``t`` is discounted by ``gamma ** k`` and its trace by
    ``(gamma * gae_lambda) ** k`` (k = 0: no time passes, as for a question asked
    again at one epoch boundary). Returns ``(advantages, returns)``, both ``(T, N)``.
    """
    steps = rewards.shape[0]
    k = torch.ones_like(rewards) if discount_steps is None else discount_steps.to(rewards.dtype)
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(next_value)
    for t in reversed(range(steps)):
        if t == steps - 1:
            nonterminal, following = 1.0 - next_done, next_value
        else:
            nonterminal, following = 1.0 - dones[t + 1], values[t + 1]
        delta = rewards[t] + gamma ** k[t] * following * nonterminal - values[t]
        last = delta + (gamma * gae_lambda) ** k[t] * nonterminal * last
        advantages[t] = last
    return advantages, advantages + values


def explained_variance(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """1 - Var(target - predicted) / Var(target); NaN when the target does not vary."""
    var = float(target.var())
    return math.nan if var == 0 else 1.0 - float((target - predicted).var()) / var


def _discount_steps(info: dict[str, Any], num_envs: int) -> torch.Tensor:
    """``info[DISCOUNT_STEPS]`` of one vector step, ``(num_envs,)``; 1 where an env did not report it."""
    spans = torch.ones(num_envs)
    if DISCOUNT_STEPS in info:
        reported = np.asarray(info.get("_" + DISCOUNT_STEPS, np.ones(num_envs, dtype=bool)), dtype=bool)
        values = torch.as_tensor(np.asarray(info[DISCOUNT_STEPS], dtype=np.float32))
        spans = torch.where(torch.as_tensor(reported), values, spans)
    return spans


def _take(encoded: Encoded, index: torch.Tensor) -> Encoded:
    if isinstance(encoded, torch.Tensor):
        return encoded[index]
    return [encoded[i] for i in index.tolist()]


def _concat(parts: list[Encoded]) -> Encoded:
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)  # type: ignore[arg-type]
    return [item for part in parts for item in part]


class PPO:
    """Trains ``agent`` on ``envs`` (a Gymnasium vector env with ``SAME_STEP`` autoreset)."""

    def __init__(self, agent: Any, envs: gym.vector.VectorEnv, config: PPOConfig, *, log_dir: str | Path | None = None):
        mode = envs.metadata.get("autoreset_mode")
        if mode is not None and mode != gym.vector.AutoresetMode.SAME_STEP:
            raise ValueError(f"field 'autoreset_mode': PPO needs AutoresetMode.SAME_STEP (value {mode!r})")
        self.agent, self.envs, self.config = agent, envs, config
        self.num_envs = envs.num_envs
        self.batch_size = config.num_steps * self.num_envs
        self.minibatch_size = max(1, self.batch_size // config.num_minibatches)
        self.num_updates = max(1, config.total_timesteps // self.batch_size)
        self.optimizer = torch.optim.Adam(agent.parameters(), lr=config.learning_rate, eps=config.adam_eps)
        self._value_parameters: set[int] = set()
        if config.value_warmup_updates > 0:
            if not hasattr(agent, "value_parameters"):
                raise ValueError(
                    f"field 'value_warmup_updates': the agent ({type(agent).__name__}) has no value_parameters() "
                    f"to warm up (value {config.value_warmup_updates!r})"
                )
            self._value_parameters = {id(p) for p in agent.value_parameters()}
        self.log = UpdateLog(log_dir) if log_dir is not None else None
        self.global_step = 0
        self.update = 0
        self.episode_returns: list[float] = []
        self._running_return = np.zeros(self.num_envs)
        self._next_obs: Any = None
        self._next_done = torch.zeros(self.num_envs)

    # -- rollout ----------------------------------------------------------------
    def collect(self) -> dict[str, Any]:
        """``num_steps`` steps of every env with the current policy; returns the rollout tensors."""
        cfg, agent = self.config, self.agent
        if self._next_obs is None:
            self._next_obs, _ = self.envs.reset(seed=cfg.seed)
        obs_parts: list[Encoded] = []
        actions, logprobs, rewards, dones, values, spans = [], [], [], [], [], []
        for _ in range(cfg.num_steps):
            encoded = agent.encode(self._next_obs, update_stats=True)
            obs_parts.append(encoded)
            dones.append(self._next_done)
            with torch.no_grad():
                action, logprob, _, value = agent.get_action_and_value(encoded)
            actions.append(action)
            logprobs.append(logprob)
            values.append(value)
            self._next_obs, reward, terminated, truncated, info = self.envs.step(action.cpu().numpy())
            self.global_step += self.num_envs
            reward = torch.as_tensor(reward, dtype=torch.float32)
            rewards.append(self._bootstrap_truncated(reward, terminated, truncated, info))
            spans.append(_discount_steps(info, self.num_envs))
            done = np.logical_or(terminated, truncated)
            self._running_return += reward.numpy()
            for i in np.flatnonzero(done):
                self.episode_returns.append(float(self._running_return[i]))
                self._running_return[i] = 0.0
            self._next_done = torch.as_tensor(done, dtype=torch.float32)
        with torch.no_grad():
            next_value = agent.get_value(agent.encode(self._next_obs))
        return {
            "obs": _concat(obs_parts),
            "actions": torch.stack(actions),
            "logprobs": torch.stack(logprobs),
            "rewards": torch.stack(rewards),
            "dones": torch.stack(dones),
            "values": torch.stack(values),
            "discount_steps": torch.stack(spans),
            "next_value": next_value,
            "next_done": self._next_done,
        }

    def _bootstrap_truncated(
        self, reward: torch.Tensor, terminated: np.ndarray, truncated: np.ndarray, info: dict[str, Any]
    ) -> torch.Tensor:
        """A time limit is not a terminal state: add gamma * V(final observation) to truncated steps."""
        cut = np.flatnonzero(np.logical_and(truncated, np.logical_not(terminated)))
        if len(cut) == 0 or "final_obs" not in info:
            return reward
        finals = info["final_obs"]
        batch = [finals[i] for i in cut]
        obs = np.stack(batch) if isinstance(batch[0], np.ndarray) else tuple(batch)
        with torch.no_grad():
            final_values = self.agent.get_value(self.agent.encode(obs))
        reward = reward.clone()
        reward[torch.as_tensor(cut)] += self.config.gamma * final_values.float()
        return reward

    # -- update -----------------------------------------------------------------
    def learn(self, rollout: dict[str, Any], fraction_done: float) -> UpdateStats:
        """Clipped-surrogate updates over the rollout; returns the update's diagnostics."""
        cfg, agent = self.config, self.agent
        advantages, returns = compute_gae(
            rollout["rewards"],
            rollout["values"],
            rollout["dones"],
            rollout["next_value"],
            rollout["next_done"],
            cfg.gamma,
            cfg.gae_lambda,
            rollout.get("discount_steps"),
        )
        b_obs = rollout["obs"]
        b_actions = rollout["actions"].reshape(self.batch_size, *rollout["actions"].shape[2:])
        b_logprobs = rollout["logprobs"].reshape(-1)
        b_advantages, b_returns = advantages.reshape(-1), returns.reshape(-1)
        b_values = rollout["values"].reshape(-1)
        ent_coef = cfg.ent_coef_at(fraction_done)
        value_only = self.update < cfg.value_warmup_updates  # critic warm-up: the policy does not move
        clipfracs: list[float] = []
        stats: dict[str, float] = {}
        epochs_run = 0
        generator = torch.Generator().manual_seed(cfg.seed + self.update)
        for _ in range(cfg.update_epochs):
            epochs_run += 1
            order = torch.randperm(self.batch_size, generator=generator)
            for start in range(0, self.batch_size, self.minibatch_size):
                mb = order[start : start + self.minibatch_size]
                _, newlogprob, entropy, newvalue = agent.get_action_and_value(_take(b_obs, mb), b_actions[mb])
                logratio = newlogprob - b_logprobs[mb]
                ratio = logratio.exp()
                with torch.no_grad():
                    old_approx_kl = float((-logratio).mean())
                    approx_kl = float(((ratio - 1) - logratio).mean())
                    clipfracs.append(float(((ratio - 1.0).abs() > cfg.clip_coef).float().mean()))
                mb_adv = b_advantages[mb]
                if cfg.norm_adv and len(mb) > 1:
                    mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                pg_loss = torch.max(-mb_adv * ratio, -mb_adv * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)).mean()
                newvalue = newvalue.view(-1)
                if cfg.clip_vloss:
                    unclipped = (newvalue - b_returns[mb]) ** 2
                    clipped_value = b_values[mb] + (newvalue - b_values[mb]).clamp(-cfg.clip_coef, cfg.clip_coef)
                    v_loss = 0.5 * torch.max(unclipped, (clipped_value - b_returns[mb]) ** 2).mean()
                else:
                    v_loss = 0.5 * ((newvalue - b_returns[mb]) ** 2).mean()
                entropy_loss = entropy.mean()
                if value_only:
                    loss = cfg.vf_coef * v_loss
                else:
                    loss = pg_loss - ent_coef * entropy_loss + cfg.vf_coef * v_loss
                self.optimizer.zero_grad()
                loss.backward()
                trained = list(agent.parameters())
                if value_only:  # shared layers get gradients from the value loss too; only the critic's own move
                    for p in trained:
                        if id(p) not in self._value_parameters:
                            p.grad = None
                    trained = [p for p in trained if id(p) in self._value_parameters]
                grad_norm = float(nn.utils.clip_grad_norm_(trained, cfg.max_grad_norm))
                self.optimizer.step()
                stats = {
                    "policy_loss": pg_loss.item(),
                    "value_loss": v_loss.item(),
                    "entropy": entropy_loss.item(),
                    "old_approx_kl": old_approx_kl,
                    "approx_kl": approx_kl,
                    "grad_norm": grad_norm,
                }
            if cfg.target_kl is not None and stats["approx_kl"] > cfg.target_kl:
                break
        recent = self.episode_returns[-20:]
        return UpdateStats(
            update=self.update,
            global_step=self.global_step,
            episodes=len(self.episode_returns),
            mean_return=float(np.mean(recent)) if recent else math.nan,
            learning_rate=self.optimizer.param_groups[0]["lr"],
            ent_coef=ent_coef,
            clipfrac=float(np.mean(clipfracs)),
            explained_variance=explained_variance(b_values, b_returns),
            epochs_run=epochs_run,
            **stats,
        )

    # -- checkpoints ------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Optimizer and progress (the agent's weights are the caller's to save)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "update": self.update,
            "global_step": self.global_step,
            "episode_returns": list(self.episode_returns),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (the envs start fresh episodes)."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.update, self.global_step = int(state["update"]), int(state["global_step"])
        self.episode_returns = [float(r) for r in state["episode_returns"]]

    # -- the loop ---------------------------------------------------------------
    def train(self, *, on_update: Callable[[UpdateStats], Any] | None = None) -> list[UpdateStats]:
        """Run every remaining update; each update's stats go to the log and to ``on_update``."""
        history: list[UpdateStats] = []
        started, first_step = time.perf_counter(), self.global_step
        while self.update < self.num_updates:
            fraction_done = self.update / self.num_updates
            if self.config.anneal_lr:
                self.optimizer.param_groups[0]["lr"] = self.config.learning_rate * (1.0 - fraction_done)
            rollout = self.collect()
            stats = self.learn(rollout, fraction_done)
            stats.sps = (self.global_step - first_step) / max(time.perf_counter() - started, 1e-9)
            self.update += 1
            history.append(stats)
            if self.log is not None:
                self.log.write(stats)
            if on_update is not None:
                on_update(stats)
        if self.log is not None:
            self.log.plot()
        return history
