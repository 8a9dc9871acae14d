"""The training job behind ``esper simic train``: record -> offline (AWR) -> PPO, one network throughout.

Phases, each checkpointed in ``OUT/checkpoint.pt`` (network with its running
statistics, optimizer, normalizer, configuration, phase and progress) so
``--resume`` continues where the job stopped:

1. ``record``: heuristic episodes (a share under randomized settings) in the
   Simic environment, saved to ``OUT/recorded.pt``;
2. ``offline``: advantage-weighted behaviour cloning on them
   (``OUT/offline.csv``);
3. ``ppo``: PPO fine-tuning of the same network on ``num_envs`` environments in
   subprocesses (``OUT/updates.csv`` and ``updates.png``: approx KL, clip
   fraction, entropy, explained variance per update), checkpointed after every
   update.

With ``env.per_slot`` (``esper simic train --per-slot``) PPO trains in the regime the
policy is deployed in: the environment asks again at a boundary about the slots not
acted on yet (:class:`~esper.simic.spaces.SlotQuestion`), and :class:`GraphAgent` masks
those slots as :class:`GNNTamiyo` does, so the probabilities PPO updates are the ones
the deployed policy decides with.

The trained policy is ``OUT/policy.pt`` (:meth:`GNNTamiyo.load` reads it); ``OUT/policy-offline.pt``
is the network as offline learning left it, before PPO.

With ``init`` (``esper simic train --init POLICY.pt``) a job starts at the PPO
phase from a policy file instead: the network's weights and running statistics
come from the file (a distilled policy, :mod:`esper.simic.distill`), unchanged in
shape (a file whose network sizes differ from ``network`` is refused, naming the
size), PPO gets a fresh optimizer, and ``OUT/policy-offline.pt`` is the file's
network as it came in.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from esper.simic.env import EnvConfig, RewardConfig
from esper.simic.offline import OfflineConfig, load_transitions, record_episodes, save_transitions, train_offline
from esper.simic.ppo import PPO, PPOConfig
from esper.simic.spaces import SlotQuestion
from esper.simic.vector import make_vector_env
from esper.tamiyo.gnn.features import TamiyoGraph, exclude_slots
from esper.tamiyo.gnn.network import NetworkConfig, TamiyoNetwork
from esper.tamiyo.gnn.observation import GraphObservation
from esper.tamiyo.gnn.policy import GNNPolicyConfig, GNNTamiyo

CHECKPOINT = "checkpoint.pt"
RECORDED = "recorded.pt"
POLICY = "policy.pt"
OFFLINE_POLICY = "policy-offline.pt"
PHASES = ("record", "offline", "ppo", "done")


def _ppo_defaults() -> PPOConfig:
    # one short run is ~9 decisions: 18 steps per env is two episodes per rollout
    return PPOConfig(
        total_timesteps=2880,
        num_steps=18,
        learning_rate=3e-4,
        anneal_lr=True,
        gamma=0.99,
        gae_lambda=0.95,
        num_minibatches=2,
        update_epochs=4,
        clip_coef=0.2,
        ent_coef=0.01,
        ent_coef_final=0.002,
        target_kl=0.05,
    )


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Everything one training job uses (stored in its checkpoint)."""

    env: EnvConfig = field(default_factory=EnvConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    record_episodes: int = 40
    randomize: float = 0.5
    offline: OfflineConfig = field(default_factory=OfflineConfig)
    ppo: PPOConfig = field(default_factory=_ppo_defaults)
    num_envs: int = 2
    asynchronous: bool = True
    seed: int = 0
    init: str | None = None  # a policy file PPO starts from (no record, no offline phase)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return _build(cls, data)


def _build(kind: Any, data: dict[str, Any]) -> Any:
    values = {}
    for f in fields(kind):
        if f.name not in data:
            continue
        value = data[f.name]
        sub = _NESTED.get((kind, f.name))
        values[f.name] = _build(sub, value) if sub is not None and isinstance(value, dict) else value
    return kind(**values)


_NESTED: dict[tuple[Any, str], Any] = {
    (TrainConfig, "env"): EnvConfig,
    (TrainConfig, "network"): NetworkConfig,
    (TrainConfig, "offline"): OfflineConfig,
    (TrainConfig, "ppo"): PPOConfig,
    (EnvConfig, "reward"): RewardConfig,
}


def question_graph(network: TamiyoNetwork, obs: GraphObservation | SlotQuestion) -> TamiyoGraph:
    """``obs`` featurized, a question's ``exclude`` slots masked as :meth:`GNNTamiyo.decision_for` masks them
    (:func:`esper.tamiyo.gnn.features.exclude_slots`)."""
    question = obs if isinstance(obs, SlotQuestion) else SlotQuestion(obs)
    graph = network.encode([question.observation])[0]
    return exclude_slots(graph, question.observation, question.exclude)


class GraphAgent:
    """PPO's agent (:class:`~esper.simic.ppo.Agent`) over the Simic environment: ``network`` deciding on
    :class:`GraphObservation` or :class:`SlotQuestion` values (:func:`question_graph`)."""

    def __init__(self, network: TamiyoNetwork) -> None:
        self.network = network

    def encode(self, obs: Any, *, update_stats: bool = False) -> list[TamiyoGraph]:
        return self.network.encode([question_graph(self.network, o) for o in obs], update_stats=update_stats)

    def get_value(self, x: Any) -> torch.Tensor:
        return self.network.get_value(x)

    def get_action_and_value(
        self, x: Any, action: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.network.get_action_and_value(x, action)

    def parameters(self) -> Any:
        return self.network.parameters()

    def value_parameters(self) -> Any:
        """The weights only the value estimate depends on (what a critic warm-up trains)."""
        return self.network.value_head.parameters()


class TrainingJob:
    """One job in ``out`` (see the module docstring); :meth:`run` does what is left of it."""

    def __init__(self, config: TrainConfig, out: str | Path, *, progress: bool = True) -> None:
        self.config, self.out, self.progress = config, Path(out), progress
        self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(config.seed)
        self.network = TamiyoNetwork(config.network)
        self.phase = "record"
        self.ppo_state: dict[str, Any] | None = None
        self.optimizer_state: dict[str, Any] | None = None

    # -- checkpoints ----------------------------------------------------------
    @classmethod
    def resume(cls, out: str | Path, *, total_timesteps: int | None = None, progress: bool = True) -> TrainingJob:
        """The job stored in ``out``; ``total_timesteps`` may extend its PPO phase."""
        path = Path(out) / CHECKPOINT
        if not path.is_file():
            raise FileNotFoundError(f"field 'out': no Simic checkpoint in {str(out)!r} ({CHECKPOINT} missing)")
        state = torch.load(path, map_location="cpu", weights_only=False)
        config = TrainConfig.from_dict(state["config"])
        if total_timesteps is not None:
            config = replace(config, ppo=replace(config.ppo, total_timesteps=total_timesteps))
        job = cls(config, out, progress=progress)
        job.network.load_state_dict(state["network"])
        job.phase = state["phase"]
        job.ppo_state = state.get("ppo")
        job.optimizer_state = state.get("optimizer")
        if job.phase == "done" and total_timesteps is not None:
            job.phase = "ppo"
        return job

    def save(self, phase: str, ppo: PPO | None = None) -> Path:
        """Write the checkpoint and the policy file."""
        self.phase = phase
        norm = self.network.global_norm
        state = {
            "kind": "esper.simic.checkpoint",
            "phase": phase,
            "config": self.config.to_dict(),
            **self.network.checkpoint(),
            "normalizer": {"mean": norm.mean.clone(), "var": norm.var.clone(), "count": norm.count.clone()},
            "optimizer": ppo.optimizer.state_dict() if ppo is not None else self.optimizer_state,
            "ppo": ppo.state_dict() if ppo is not None else self.ppo_state,
            "policy": asdict(GNNPolicyConfig(epochs_total=self.config.env.epochs)),
        }
        path = self.out / CHECKPOINT
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)  # a crash mid-write leaves the previous checkpoint intact
        self.policy().save(self.out / POLICY)
        return path

    def start_from(self, path: str | Path) -> None:
        """Take the network (weights and running statistics) of the policy file ``path``; the job is at PPO next.

        ValueError naming the field ``init`` for a missing or foreign file, or one whose network sizes are not
        this job's (``TrainConfig.network``): fine-tuning changes no shape.
        """
        loaded = GNNTamiyo.load(path, field="init").network
        ours, theirs = asdict(self.config.network), asdict(loaded.config)
        for name, value in ours.items():
            if theirs.get(name) != value:
                raise ValueError(
                    f"field 'init': {str(path)!r} holds a network with {name}={theirs.get(name)!r}, "
                    f"this job builds {name}={value!r} (network sizes must match)"
                )
        self.network.load_state_dict(loaded.state_dict())
        self.save("ppo")
        self.policy().save(self.out / OFFLINE_POLICY)  # the network PPO starts from, as for an offline phase

    def policy(self) -> GNNTamiyo:
        return GNNTamiyo(self.network, GNNPolicyConfig(epochs_total=self.config.env.epochs))

    # -- phases ---------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run the remaining phases; returns a summary (last diagnostics of each phase run now)."""
        summary: dict[str, Any] = {"out": str(self.out)}
        if self.config.init is not None:
            summary["init"] = self.config.init
        if self.phase == "record":
            self._record()
        if self.phase == "offline":
            summary["offline"] = self._offline()
        if self.phase == "ppo":
            summary["ppo"] = self._ppo()
        summary["policy"] = str(self.out / POLICY)
        return summary

    def _bar(self, total: int, desc: str, initial: int = 0) -> Any:
        if not self.progress:
            return None
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=desc, file=sys.stderr, dynamic_ncols=True)

    def _record(self) -> None:
        cfg = self.config
        bar = self._bar(cfg.record_episodes, "record")

        def on_episode(_: int, info: dict[str, Any]) -> None:
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"val {info.get('val_accuracy', 0):.3f} params {info.get('params', 0)}")

        data = record_episodes(
            cfg.record_episodes, cfg.env, seed=cfg.seed, randomize=cfg.randomize, on_episode=on_episode
        )
        if bar is not None:
            bar.close()
        save_transitions(data, self.out / RECORDED)
        self.save("offline")

    def _offline(self) -> dict[str, float]:
        data = load_transitions(self.out / RECORDED)
        bar = self._bar(self.config.offline.epochs, "offline")
        log = (self.out / "offline.csv").open("w", newline="")
        writer: Any = None

        def on_epoch(epoch: int, stats: dict[str, float]) -> None:
            nonlocal writer
            if writer is None:
                writer = csv.DictWriter(log, fieldnames=["epoch", *stats])
                writer.writeheader()
            writer.writerow({"epoch": epoch, **stats})
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"imit {stats['imitation']:.2f} ev {stats['explained_variance']:.2f}")

        try:
            history = train_offline(self.network, data, self.config.offline, on_epoch=on_epoch)
        finally:
            log.close()
            if bar is not None:
                bar.close()
        self.save("ppo")
        self.policy().save(self.out / OFFLINE_POLICY)  # kept: what offline learning alone reached
        return history[-1]

    def _ppo(self) -> dict[str, float]:
        cfg = self.config
        envs = make_vector_env(cfg.num_envs, cfg.env, asynchronous=cfg.asynchronous)
        try:
            self.network.train()
            ppo = PPO(GraphAgent(self.network), envs, replace(cfg.ppo, seed=cfg.seed), log_dir=self.out)
            if self.ppo_state is not None:
                ppo.load_state_dict(self.ppo_state)
            bar = self._bar(ppo.num_updates, "ppo", initial=ppo.update)
            last: dict[str, float] = {}

            def on_update(stats: Any) -> None:
                last.update(asdict(stats))
                self.save("ppo", ppo)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(stats.line())

            ppo.train(on_update=on_update)
            if bar is not None:
                bar.close()
            self.network.eval()
            self.save("done", ppo)
            return last
        finally:
            envs.close()


def train(config: TrainConfig, out: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """A fresh job in ``out`` (from ``config.init`` when set: PPO only)."""
    if (Path(out) / CHECKPOINT).exists():
        raise ValueError(f"field 'out': {str(out)!r} already holds a Simic job (resume it, or choose another folder)")
    job = TrainingJob(config, out, progress=progress)
    if config.init is not None:
        job.start_from(config.init)
    return job.run()


__all__ = ["CHECKPOINT", "PHASES", "POLICY", "GraphAgent", "TrainConfig", "TrainingJob", "question_graph", "train"]
