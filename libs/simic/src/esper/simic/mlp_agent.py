"""CleanRL's actor-critic for flat observations and a discrete action (CartPole and friends)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical

from esper.simic.ppo import layer_init


class MLPAgent(nn.Module):
    """Separate tanh MLPs for the actor and the critic, orthogonally initialized.

    Observations ``(B, obs_dim)``; actions ``(B,)`` integers in ``[0, n_actions)``.
    The policy head starts at gain 0.01 (near-uniform actions) and the value head
    at gain 1, as in the reference implementation.
    """

    def __init__(self, obs_dim: int, n_actions: int, hidden: int = 64) -> None:
        super().__init__()
        self.critic = nn.Sequential(
            layer_init(nn.Linear(obs_dim, hidden)),
            nn.Tanh(),
            layer_init(nn.Linear(hidden, hidden)),
            nn.Tanh(),
            layer_init(nn.Linear(hidden, 1), std=1.0),
        )
        self.actor = nn.Sequential(
            layer_init(nn.Linear(obs_dim, hidden)),
            nn.Tanh(),
            layer_init(nn.Linear(hidden, hidden)),
            nn.Tanh(),
            layer_init(nn.Linear(hidden, n_actions), std=0.01),
        )

    def encode(self, obs: Any, *, update_stats: bool = False) -> torch.Tensor:
        return torch.as_tensor(np.asarray(obs), dtype=torch.float32)

    def get_value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(x).squeeze(-1)

    def get_action_and_value(
        self, x: torch.Tensor, action: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        dist = Categorical(logits=self.actor(x))
        if action is None:
            action = dist.sample()
        return action, dist.log_prob(action), dist.entropy(), self.critic(x).squeeze(-1)

    @torch.no_grad()
    def act_greedy(self, x: torch.Tensor) -> torch.Tensor:
        """The most likely action (evaluation)."""
        return self.actor(x).argmax(dim=-1)
