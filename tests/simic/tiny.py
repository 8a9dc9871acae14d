"""What several Simic tests train on: a training job small enough for seconds, and a one-step toy problem."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from esper.simic.env import EnvConfig
from esper.simic.offline import OfflineConfig
from esper.simic.ppo import PPOConfig
from esper.simic.train import TrainConfig
from esper.tamiyo.gnn.network import NetworkConfig

#: A whole Simic job (record, offline, PPO) in a few seconds: 2-epoch episodes of 100 rows, a 16-wide network.
TINY = TrainConfig(
    env=EnvConfig(epochs=2, pool=1, max_train_samples=100, samples=600),
    network=NetworkConfig(hidden=16),
    record_episodes=2,
    offline=OfflineConfig(epochs=2),
    ppo=PPOConfig(total_timesteps=2, num_steps=1, num_minibatches=1, update_epochs=2, ent_coef_final=0.0),
    num_envs=2,
    asynchronous=False,
)


class GuessTheSign(gym.Env):
    """One-step episodes: the observation is +-1 and the action that matches its sign earns 1."""

    observation_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.sign = int(self.np_random.integers(2))
        return np.array([2.0 * self.sign - 1.0], np.float32), {}

    def step(self, action):
        reward = 1.0 if int(action) == self.sign else 0.0
        obs, _ = self.reset()
        return obs, reward, True, False, {}
