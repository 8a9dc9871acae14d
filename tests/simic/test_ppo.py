"""PPO: GAE against a hand computation, finite diagnostics, a tiny learnable problem improving."""

from __future__ import annotations

import math

import gymnasium as gym
import pytest
import torch

from esper.simic.diagnostics import CSV_NAME, PNG_NAME, UpdateLog
from esper.simic.mlp_agent import MLPAgent
from esper.simic.ppo import PPO, PPOConfig, compute_gae, explained_variance

from .tiny import GuessTheSign


def vec(n: int = 4) -> gym.vector.VectorEnv:
    return gym.vector.SyncVectorEnv([GuessTheSign for _ in range(n)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


def test_gae_matches_a_hand_computation_and_stops_at_episode_starts():
    rewards = torch.tensor([[1.0], [2.0], [3.0]])
    values = torch.tensor([[0.5], [0.25], [1.0]])
    dones = torch.tensor([[0.0], [0.0], [1.0]])  # step 2 starts a new episode
    next_value, next_done = torch.tensor([2.0]), torch.tensor([0.0])
    gamma, lam = 0.9, 0.8
    adv, ret = compute_gae(rewards, values, dones, next_value, next_done, gamma, lam)
    d2 = 3.0 + gamma * 2.0 - 1.0
    d1 = 2.0 - 0.25  # next observation starts a new episode: no bootstrap
    d0 = 1.0 + gamma * 0.25 - 0.5
    expected = torch.tensor([[d0 + gamma * lam * d1], [d1], [d2]])
    assert torch.allclose(adv, expected)
    assert torch.allclose(ret, expected + values)


def test_explained_variance_is_one_for_a_perfect_critic_and_nan_for_a_constant_target():
    target = torch.tensor([1.0, 2.0, 3.0])
    assert explained_variance(target, target) == pytest.approx(1.0)
    assert math.isnan(explained_variance(target, torch.ones(3)))


def test_ppo_rejects_a_next_step_autoreset_env():
    envs = gym.vector.SyncVectorEnv([GuessTheSign], autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
    with pytest.raises(ValueError, match="autoreset_mode"):
        PPO(MLPAgent(1, 2), envs, PPOConfig(total_timesteps=64, num_steps=16))


def test_ppo_learns_a_contextual_bandit_and_logs_finite_diagnostics(tmp_path):
    torch.manual_seed(0)
    agent = MLPAgent(1, 2, hidden=16)
    config = PPOConfig(
        total_timesteps=4 * 32 * 12,
        num_steps=32,
        learning_rate=3e-3,
        num_minibatches=2,
        update_epochs=4,
        ent_coef=0.01,
        ent_coef_final=0.0,
        target_kl=0.5,
    )
    ppo = PPO(agent, vec(), config, log_dir=tmp_path)
    history = ppo.train()
    assert len(history) == 12
    for stats in history:
        for name in ("approx_kl", "clipfrac", "entropy", "policy_loss", "value_loss", "grad_norm"):
            assert math.isfinite(getattr(stats, name)), (name, stats)
    assert history[-1].ent_coef == pytest.approx(0.01 / 12)  # linear schedule towards 0
    x = torch.tensor([[-1.0], [1.0]])
    assert agent.act_greedy(x).tolist() == [0, 1]
    assert history[-1].mean_return > history[0].mean_return
    assert history[-1].mean_return > 0.9
    assert history[-1].entropy < history[0].entropy
    rows = UpdateLog(tmp_path).rows()
    assert len(rows) == 12 and {"approx_kl", "clipfrac", "entropy", "explained_variance"} <= rows[0].keys()
    assert (tmp_path / CSV_NAME).is_file() and (tmp_path / PNG_NAME).is_file()
