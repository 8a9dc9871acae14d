"""Offline learning from recorded runs: the heuristic's episodes, then advantage-weighted behaviour cloning.

Recording (:func:`record_episodes`) runs :class:`~esper.simic.env.TamiyoEnv`
episodes with Tamiyo's heuristic deciding, half of them (``randomize``) under
randomized heuristic settings (when to start growing, how many live seeds,
which blueprints in which order) and with a small share of random legal
actions, so the data covers more than one behaviour. Each transition keeps the
observation, the action the decision maps to, and the reward.

Learning (:func:`train_offline`) is advantage-weighted behaviour cloning
(AWR, Peng et al. 2019) on the policy network PPO fine-tunes afterwards, with
no change of shape: the value ensemble is fitted to the discounted returns
(each head on its own bootstrap resample, so their spread measures how far an
input is from the data), and the policy maximizes
``min(exp(A / beta), max_weight) * log pi(a | s)`` with ``A = G - V(s)``
(normalized per minibatch): the behaviour
the recorded runs were rewarded for is cloned, the rest is down-weighted.

With ``balance`` (the default) each transition's weight is also divided by its
operation's share of the data (weights averaging one): a run decides WAIT on
most epochs and grows on a few, and unbalanced cloning learned a policy whose
most likely operation is WAIT nearly everywhere, so greedy decoding never grew
(``imitation`` reports agreement on every operation, ``grow_recall`` on the
recorded non-WAIT ones only).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from esper.leyline import AdaptationDecision, DecisionAction, TrainingJob
from esper.simic.env import EnvConfig, TamiyoEnv
from esper.tamiyo.gnn.network import TamiyoNetwork
from esper.tamiyo.gnn.observation import OP_INDEX, GraphObservation, legal_actions
from esper.tamiyo.heuristic import BlueprintChoice, HeuristicTamiyo
from esper.tamiyo.policies import heuristic_config

BLUEPRINTS = ("conv_heavy", "bottleneck", "conv_light", "depthwise", "se_attention", "mlp", "lowrank", "norm")


@dataclass(frozen=True, slots=True)
class Transition:
    """One recorded decision: what was seen, what was done (``(op, slot, option)``), what it earned."""

    obs: GraphObservation
    action: tuple[int, int, int]
    reward: float
    done: bool
    episode: int


Action = tuple[int, int, int]


def action_for(decision: AdaptationDecision, obs: GraphObservation, *, max_active_seeds: int = 3) -> Action:
    """The environment action a policy's decision stands for; WAIT when it is not legal on ``obs``."""
    if decision.action is DecisionAction.WAIT or decision.slot_id is None:
        return (0, 0, 0)
    slots = [s.slot_id for s in obs.graph.slots]
    if decision.slot_id not in slots:
        return (0, 0, 0)
    slot = slots.index(decision.slot_id)
    op = OP_INDEX[decision.action]
    option = 0
    if decision.action is DecisionAction.GERMINATE:
        options = obs.graph.slots[slot].options
        matches = [
            i
            for i, o in enumerate(options)
            if o.blueprint == decision.blueprint
            and (not decision.blueprint_config or dict(o.config) == dict(decision.blueprint_config))
        ]
        if not matches:
            return (0, 0, 0)
        option = matches[0]
    legal = legal_actions(obs, max_active_seeds=max_active_seeds)
    if not legal.slot_ops[slot][op] or (op == OP_INDEX[DecisionAction.GERMINATE] and not legal.options[slot][option]):
        return (0, 0, 0)
    return (op, slot, option)


def random_legal_action(obs: GraphObservation, rng: random.Random, *, max_active_seeds: int = 3) -> Action:
    """A uniformly drawn legal operation, slot and option."""
    legal = legal_actions(obs, max_active_seeds=max_active_seeds)
    op = rng.choice([k for k, ok in enumerate(legal.ops) if ok])
    if op == 0:
        return (0, 0, 0)
    slot = rng.choice([s for s, row in enumerate(legal.slot_ops) if row[op]])
    option = 0
    if op == OP_INDEX[DecisionAction.GERMINATE]:
        option = rng.choice([o for o, ok in enumerate(legal.options[slot]) if ok])
    return (op, slot, option)


def randomized_heuristic(rng: random.Random, budget: int | None) -> HeuristicTamiyo:
    """The heuristic under settings drawn for coverage (growth onset, live seeds, blueprint preferences)."""
    names = list(BLUEPRINTS)
    rng.shuffle(names)
    base = heuristic_config(TrainingJob(param_budget=budget))
    config = replace(
        base,
        min_epoch_to_germinate=rng.randint(1, 4),
        plateau_patience=rng.choice([0, 0, 1, 2]),
        max_active_seeds=rng.randint(1, 3),
        candidates=tuple(BlueprintChoice(n) for n in names[: rng.randint(1, 4)]),
    )
    return HeuristicTamiyo(config)


def record_episodes(
    episodes: int,
    config: EnvConfig,
    *,
    seed: int = 0,
    randomize: float = 0.5,
    epsilon: float = 0.1,
    on_episode: Callable[[int, dict[str, Any]], Any] | None = None,
) -> list[Transition]:
    """``episodes`` heuristic runs in :class:`TamiyoEnv` (a ``randomize`` share under randomized settings,
    ``epsilon`` of the decisions replaced by random legal actions)."""
    rng = random.Random(seed)
    env = TamiyoEnv(config)
    data: list[Transition] = []
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed * 100_003 + episode)
            randomized = rng.random() < randomize
            policy = (
                randomized_heuristic(rng, env.param_budget)
                if randomized
                else HeuristicTamiyo(heuristic_config(TrainingJob(param_budget=env.param_budget)))
            )
            done, info = False, {}
            while not done:
                decision = policy.decide(obs.signals, graph=obs.graph, health=obs.health)
                action = action_for(decision, obs, max_active_seeds=config.max_active_seeds)
                if randomized and rng.random() < epsilon:
                    action = random_legal_action(obs, rng, max_active_seeds=config.max_active_seeds)
                next_obs, reward, done, _, info = env.step(np.array(action))
                data.append(Transition(obs, action, float(reward), bool(done), episode))
                obs = next_obs
            if on_episode is not None:
                on_episode(episode, {"randomized": randomized, **info.get("final", {})})
    finally:
        env.close()
    return data


def discounted_returns(data: list[Transition], gamma: float) -> list[float]:
    """G_t for each transition (episodes end at ``done``)."""
    returns = [0.0] * len(data)
    running = 0.0
    for i in reversed(range(len(data))):
        if data[i].done:
            running = 0.0
        running = data[i].reward + gamma * running
        returns[i] = running
    return returns


@dataclass(frozen=True, slots=True)
class OfflineConfig:
    """Advantage-weighted behaviour cloning settings."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 3e-4
    beta: float = 1.0
    max_weight: float = 20.0
    gamma: float = 0.99
    value_coef: float = 0.5
    balance: bool = True
    seed: int = 0


def operation_weights(ops: torch.Tensor) -> torch.Tensor:
    """Per-transition weights inverse to the share of its operation, averaging one over ``ops``."""
    counts = torch.bincount(ops).float()
    classes = int((counts > 0).sum())
    return (len(ops) / (classes * counts.clamp(min=1)))[ops]


def train_offline(
    network: TamiyoNetwork,
    data: list[Transition],
    config: OfflineConfig,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    on_epoch: Callable[[int, dict[str, float]], Any] | None = None,
) -> list[dict[str, float]]:
    """AWR on ``data`` (see the module docstring); returns per-epoch loss, weight and accuracy statistics."""
    if not data:
        raise ValueError("field 'data': no recorded transitions to learn from (value [])")
    generator = torch.Generator().manual_seed(config.seed)
    graphs = network.encode([t.obs for t in data], update_stats=True)
    actions = torch.tensor([t.action for t in data], dtype=torch.long)
    returns = torch.tensor(discounted_returns(data, config.gamma), dtype=torch.float32)
    balance = operation_weights(actions[:, 0]) if config.balance else torch.ones(len(data))
    heads = network.config.value_heads
    bootstrap = torch.poisson(torch.ones(len(data), heads), generator=generator)  # per-head resample weights
    optimizer = optimizer or torch.optim.Adam(network.parameters(), lr=config.lr, eps=1e-5)
    history = []
    network.train()
    for epoch in range(config.epochs):
        order = torch.randperm(len(data), generator=generator)
        sums = {"policy_loss": 0.0, "value_loss": 0.0, "mean_weight": 0.0, "imitation": 0.0}
        batches, grown, grown_matched = 0, 0, 0
        for start in range(0, len(data), config.batch_size):
            idx = order[start : start + config.batch_size]
            batch = network.batch([graphs[i] for i in idx.tolist()])
            out = network.evaluate(batch, actions[idx])
            values = network.heads(batch).values
            advantage = (returns[idx] - out["value"]).detach()
            advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8) if len(idx) > 1 else advantage
            weight = torch.exp(advantage / config.beta).clamp(max=config.max_weight) * balance[idx]
            policy_loss = -(weight * out["log_prob"]).mean()
            value_loss = ((values - returns[idx, None]) ** 2 * bootstrap[idx]).mean()
            loss = policy_loss + config.value_coef * value_loss
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(network.parameters(), 0.5)
            optimizer.step()
            with torch.no_grad():
                greedy = network.evaluate(batch, greedy=True)["action"]
                same = (greedy[:, 0] == actions[idx, 0]).float().mean()
                grows = actions[idx, 0] != 0
                grown += int(grows.sum())
                grown_matched += int((greedy[grows, 0] == actions[idx][grows, 0]).sum())
            sums["policy_loss"] += policy_loss.item()
            sums["value_loss"] += value_loss.item()
            sums["mean_weight"] += float(weight.mean())
            sums["imitation"] += float(same)
            batches += 1
        stats = {k: v / batches for k, v in sums.items()}
        stats["grow_recall"] = grown_matched / grown if grown else math.nan
        with torch.no_grad():
            chunks = [graphs[i : i + 256] for i in range(0, len(graphs), 256)]
            predicted = torch.cat([network.get_value(network.batch(chunk)) for chunk in chunks])
        var = float(returns.var())
        stats["explained_variance"] = math.nan if var == 0 else 1.0 - float((returns - predicted).var()) / var
        history.append(stats)
        if on_epoch is not None:
            on_epoch(epoch, stats)
    network.eval()
    return history


def save_transitions(data: list[Transition], path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, out)
    return out


def load_transitions(path: str | Path) -> list[Transition]:
    return list(torch.load(Path(path), weights_only=False))
