"""The flat-observation variant of :class:`~esper.simic.env.TamiyoEnv` (passes ``gymnasium.utils.env_checker``).

Observation: Leyline's fixed-size feature vector (:mod:`esper.leyline.observation`:
global features, loss and accuracy histories, one block per slot for the first
``OBSERVATION_SLOTS`` slots), float32. Action: the same ``(operation, slot,
option)`` as the graph environment. ``info["action_mask"]`` says which parts
are legal: ``ops`` (5,), ``slot_ops`` (slots, 5), ``options`` (slots, options).
For MLP baselines and tools that need a Box observation; the GNN policy uses
the graph environment. Per slot (``EnvConfig.per_slot``) the vector is the
question's observation and the mask leaves the slots already acted on at this
boundary with nothing legal.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from esper.leyline import SeedStage
from esper.leyline.observation import OBSERVATION_SIZE, OBSERVATION_SLOTS, SlotFeatures, write_observation
from esper.simic.env import EnvConfig, TamiyoEnv
from esper.simic.spaces import SlotQuestion, legal_for
from esper.tamiyo.gnn.features import observation_parts
from esper.tamiyo.gnn.observation import OPERATIONS, GraphObservation, seed_reports

_BOUND = 1e6


def flat_observation(obs: GraphObservation) -> np.ndarray:
    """``obs`` as Leyline's observation vector, (OBSERVATION_SIZE,) float32."""
    params_total = max(obs.signals.params_total or obs.graph.params_total, 1)
    slots = []
    for report in seed_reports(obs)[:OBSERVATION_SLOTS]:
        if report is None:
            slots.append(SlotFeatures(SeedStage.DORMANT, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0))
            continue
        slots.append(
            SlotFeatures(
                stage=SeedStage(report.stage),
                alpha=report.alpha,
                epochs_in_stage=float(report.epochs_in_stage),
                improvement=report.improvement or 0.0,
                contribution=report.contribution or 0.0,
                params_ratio=report.params / params_total,
                embargo_epochs_left=float(report.embargo_epochs_left),
            )
        )
    buffer = np.zeros(OBSERVATION_SIZE, dtype=np.float32)
    write_observation(buffer, *observation_parts(obs), slots)
    return np.clip(np.nan_to_num(buffer, nan=0.0, posinf=_BOUND, neginf=-_BOUND), -_BOUND, _BOUND)


def action_mask(
    obs: GraphObservation, slots: int, options: int, max_active_seeds: int, exclude: frozenset[str] = frozenset()
) -> dict[str, np.ndarray]:
    """The legal parts of an action on ``obs`` (nothing at the slots in ``exclude``), padded to the action
    space's ``slots`` x ``options``."""
    legal = legal_for(obs, exclude, max_active_seeds=max_active_seeds)
    slot_ops = np.zeros((slots, len(OPERATIONS)), dtype=bool)
    option_mask = np.zeros((slots, options), dtype=bool)
    for s, (row, fits) in enumerate(zip(legal.slot_ops[:slots], legal.options[:slots], strict=True)):
        slot_ops[s] = row
        option_mask[s, : len(fits[:options])] = fits[:options]
    return {"ops": np.array(legal.ops, dtype=bool), "slot_ops": slot_ops, "options": option_mask}


class FlatTamiyoEnv(gym.Wrapper):
    """:class:`TamiyoEnv` with a Box observation (see the module docstring)."""

    def __init__(self, config: EnvConfig | None = None, **kwargs: Any) -> None:
        env = TamiyoEnv(config, **kwargs)
        super().__init__(env)
        self.observation_space = gym.spaces.Box(-_BOUND, _BOUND, (OBSERVATION_SIZE,), np.float32)
        self.action_space = env.action_space

    def _flat(self, obs: GraphObservation | SlotQuestion, info: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        env: TamiyoEnv = self.env  # type: ignore[assignment]
        question = obs if isinstance(obs, SlotQuestion) else SlotQuestion(obs)
        info = dict(info)
        info.pop("legal_ops", None)
        info["action_mask"] = action_mask(
            question.observation, env.max_slots, env.max_options, env.config.max_active_seeds, question.exclude
        )
        return flat_observation(question.observation), info

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        return self._flat(*self.env.reset(**kwargs))

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        flat, info = self._flat(obs, info)
        return flat, reward, terminated, truncated, info
