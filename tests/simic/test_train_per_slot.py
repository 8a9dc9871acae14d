"""``esper simic train --per-slot`` and the critic warm-up: stored in the job, resumed as they were."""

from __future__ import annotations

from dataclasses import replace

import gymnasium as gym
import pytest
import torch

from esper.cli.main import parser
from esper.simic.env import EnvConfig
from esper.simic.mlp_agent import MLPAgent
from esper.simic.ppo import PPO, PPOConfig, compute_gae
from esper.simic.train import CHECKPOINT, TrainConfig, TrainingJob, train
from esper.tamiyo.gnn.network import NetworkConfig, TamiyoNetwork
from esper.tamiyo.gnn.policy import GNNTamiyo

from .tiny import GuessTheSign

PER_SLOT = TrainConfig(
    env=EnvConfig(epochs=2, pool=1, max_train_samples=100, samples=600, per_slot=True),
    network=NetworkConfig(hidden=16),
    ppo=PPOConfig(total_timesteps=4, num_steps=2, num_minibatches=1, update_epochs=2, ent_coef_final=0.0),
    num_envs=2,
    asynchronous=False,
)


def vec() -> gym.vector.VectorEnv:
    return gym.vector.SyncVectorEnv([GuessTheSign] * 4, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


class CriticAgent(MLPAgent):
    """The MLP agent with its critic named as the weights a warm-up trains."""

    def value_parameters(self):
        return self.critic.parameters()


def test_a_per_slot_job_stores_per_slot_and_resumes_per_slot(tmp_path):
    torch.manual_seed(3)
    source = GNNTamiyo(TamiyoNetwork(NetworkConfig(hidden=16))).save(tmp_path / "start.pt")
    train(replace(PER_SLOT, init=str(source)), tmp_path / "job", progress=False)
    state = torch.load(tmp_path / "job" / CHECKPOINT, weights_only=False)
    assert state["config"]["env"]["per_slot"] is True and state["ppo"]["update"] == 1

    job = TrainingJob.resume(tmp_path / "job", total_timesteps=8, progress=False)
    assert job.config.env.per_slot is True
    job.run()
    assert torch.load(tmp_path / "job" / CHECKPOINT, weights_only=False)["ppo"]["update"] == 2


def test_a_checkpoint_from_before_per_slot_resumes_once_per_epoch():
    old = TrainConfig().to_dict()
    del old["env"]["per_slot"], old["ppo"]["value_warmup_updates"]
    config = TrainConfig.from_dict(old)
    assert config.env.per_slot is False and config.ppo.value_warmup_updates == 0


def test_esper_simic_train_takes_per_slot_and_value_warmup():
    args = parser().parse_args(["simic", "train", "--per-slot", "--value-warmup", "5"])
    assert (args.per_slot, args.value_warmup) == (True, 5)
    assert parser().parse_args(["simic", "train"]).per_slot is False


def test_the_critic_warmup_moves_only_the_value_weights_then_the_policy_learns():
    torch.manual_seed(0)
    agent = CriticAgent(1, 2, hidden=16)
    actor = [p.detach().clone() for p in agent.actor.parameters()]
    critic = [p.detach().clone() for p in agent.critic.parameters()]
    config = PPOConfig(total_timesteps=4 * 16 * 4, num_steps=16, learning_rate=3e-3, value_warmup_updates=2)
    ppo = PPO(agent, vec(), config)
    for _ in range(2):
        stats = ppo.learn(ppo.collect(), 0.0)
        ppo.update += 1
        assert stats.approx_kl == 0.0 and stats.clipfrac == 0.0
    assert all(torch.equal(a, b) for a, b in zip(actor, agent.actor.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(critic, agent.critic.parameters(), strict=True))
    ppo.learn(ppo.collect(), 0.5)
    assert any(not torch.equal(a, b) for a, b in zip(actor, agent.actor.parameters(), strict=True))


def test_a_critic_warmup_needs_an_agent_that_names_its_value_weights():
    with pytest.raises(ValueError, match=r"field 'value_warmup_updates': the agent \(MLPAgent\)"):
        PPO(MLPAgent(1, 2), vec(), PPOConfig(total_timesteps=64, num_steps=16, value_warmup_updates=1))
    with pytest.raises(ValueError, match=r"field 'value_warmup_updates': .*value -1"):
        PPOConfig(value_warmup_updates=-1)


def test_gae_lets_no_time_pass_over_a_step_of_zero_discount_steps():
    rewards = torch.tensor([[0.0], [1.0]])
    values = torch.tensor([[0.3], [0.6]])
    dones = torch.zeros(2, 1)
    spans = torch.tensor([[0.0], [1.0]])  # step 0: a question asked again at the same boundary
    advantages, returns = compute_gae(rewards, values, dones, torch.tensor([0.5]), torch.tensor([1.0]), 0.9, 0.5, spans)
    assert advantages[1, 0] == pytest.approx(1.0 - 0.6)
    assert advantages[0, 0] == pytest.approx(0.6 - 0.3 + (1.0 - 0.6))  # no discount, full trace into step 1
    assert returns[0, 0] == pytest.approx(1.0)
    plain, _ = compute_gae(rewards, values, dones, torch.tensor([0.5]), torch.tensor([1.0]), 0.9, 0.5)
    assert plain[0, 0] == pytest.approx(0.9 * 0.6 - 0.3 + 0.45 * (1.0 - 0.6))


def test_esper_simic_train_takes_the_rollout_length_and_learning_rate():
    from esper.cli.simic import train_config

    args = parser().parse_args(["simic", "train", "--rollout-steps", "72", "--lr", "1e-4", "--timesteps", "5760"])
    ppo = train_config(args).ppo
    assert (ppo.num_steps, ppo.learning_rate, ppo.total_timesteps) == (72, 1e-4, 5760)
    defaults = train_config(parser().parse_args(["simic", "train"])).ppo
    assert (defaults.num_steps, defaults.learning_rate, defaults.total_timesteps) == (18, 3e-4, 2880)
    with pytest.raises(ValueError, match=r"field 'num_steps': .*value 0"):
        train_config(parser().parse_args(["simic", "train", "--rollout-steps", "0"]))
    with pytest.raises(ValueError, match=r"field 'learning_rate': .*value -0.1"):
        train_config(parser().parse_args(["simic", "train", "--lr", "-0.1"]))
