"""PPO on CartPole-v1: does Simic's PPO learn? Target: mean return >= 475.

Trains :class:`esper.simic.mlp_agent.MLPAgent` with :class:`esper.simic.ppo.PPO`
on a synchronous Gymnasium vector env (SAME_STEP autoreset), then evaluates the
trained policy on fresh episodes (greedy and sampled). The per-update
diagnostics (approx KL, clip fraction, entropy, explained variance) go to
``--log-dir`` as CSV and PNG.

    .venv/bin/python benchmarks/ppo_cartpole.py            # ~1-3 minutes on two cores
    .venv/bin/python benchmarks/ppo_cartpole.py --total-timesteps 20000   # quick smoke run

Last line: JSON with ``eval_mean_return`` (greedy), ``eval_sampled_mean_return``,
``train_mean_return`` (last 20 training episodes), ``target`` and ``met``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import gymnasium as gym
import numpy as np
import torch

from esper.simic.mlp_agent import MLPAgent
from esper.simic.ppo import PPO, PPOConfig

TARGET = 475.0


def evaluate(agent: MLPAgent, episodes: int, seed: int, *, greedy: bool) -> list[float]:
    env = gym.make("CartPole-v1")
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        done, total = False, 0.0
        while not done:
            x = torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0)
            with torch.no_grad():
                action = agent.act_greedy(x) if greedy else agent.get_action_and_value(x)[0]
            obs, reward, terminated, truncated, _ = env.step(int(action[0]))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return returns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--total-timesteps", type=int, default=100_000)
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--log-dir", default=None, help="where updates.csv/png go (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    # rl-baselines3-zoo's tuned CartPole settings: short rollouts, many epochs, GAE lambda 0.8.
    config = PPOConfig(
        total_timesteps=args.total_timesteps,
        num_steps=32,
        learning_rate=1e-3,
        gamma=0.98,
        gae_lambda=0.8,
        num_minibatches=1,
        update_epochs=20,
        ent_coef=0.0,
        seed=args.seed,
    )
    envs = gym.make_vec(
        "CartPole-v1",
        num_envs=args.num_envs,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
    )
    agent = MLPAgent(4, 2)
    log_dir = args.log_dir or tempfile.mkdtemp(prefix="ppo_cartpole-")
    ppo = PPO(agent, envs, config, log_dir=log_dir)
    started = time.perf_counter()
    history = ppo.train()
    seconds = time.perf_counter() - started
    envs.close()
    greedy = evaluate(agent, args.eval_episodes, 10_000 + args.seed, greedy=True)
    sampled = evaluate(agent, args.eval_episodes, 20_000 + args.seed, greedy=False)
    last = history[-1]
    result = {
        "benchmark": "ppo_cartpole",
        "total_timesteps": ppo.global_step,
        "updates": len(history),
        "train_seconds": round(seconds, 1),
        "train_mean_return": round(last.mean_return, 1),
        "eval_mean_return": round(float(np.mean(greedy)), 1),
        "eval_sampled_mean_return": round(float(np.mean(sampled)), 1),
        "final_entropy": round(last.entropy, 4),
        "final_approx_kl": round(last.approx_kl, 5),
        "final_clipfrac": round(last.clipfrac, 4),
        "final_explained_variance": round(last.explained_variance, 4),
        "log_dir": log_dir,
        "target": TARGET,
        "met": bool(np.mean(greedy) >= TARGET),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
