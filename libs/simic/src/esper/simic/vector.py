"""K environments advanced together: Gymnasium's ``AsyncVectorEnv`` over worker processes (CPU).

Each worker trains its own Tolaria run with one torch thread; observations
(:class:`GraphObservation` values, plain data) come back pickled, so the
vector env runs without shared memory and batches them as tuples. Episodes
reset in the same step they end (``SAME_STEP``), as Simic's PPO expects.
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym

from esper.simic.env import EnvConfig, TamiyoEnv


def _factory(config: EnvConfig, rank: int) -> Callable[[], gym.Env]:
    def make() -> gym.Env:
        import torch

        torch.set_num_threads(1)
        return TamiyoEnv(config)

    return make


def make_vector_env(
    num_envs: int, config: EnvConfig | None = None, *, asynchronous: bool = True
) -> gym.vector.VectorEnv:
    """``num_envs`` :class:`TamiyoEnv` s in subprocesses (``asynchronous``) or in this process."""
    if num_envs < 1:
        raise ValueError(f"field 'num_envs': must be >= 1 (value {num_envs!r})")
    config = config or EnvConfig()
    fns = [_factory(config, rank) for rank in range(num_envs)]
    mode = gym.vector.AutoresetMode.SAME_STEP
    if asynchronous:
        return gym.vector.AsyncVectorEnv(fns, shared_memory=False, context="spawn", autoreset_mode=mode)
    return gym.vector.SyncVectorEnv(fns, autoreset_mode=mode)
