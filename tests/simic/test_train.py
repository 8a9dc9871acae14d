"""The Simic training job: record -> offline -> PPO, checkpoints that resume, a policy file Tamiyo loads."""

from __future__ import annotations

import torch

from esper.cli.main import parser
from esper.simic.diagnostics import UpdateLog
from esper.simic.train import CHECKPOINT, POLICY, TrainConfig, TrainingJob, train
from esper.tamiyo.gnn.policy import GNNTamiyo

from .tiny import TINY


def test_a_job_runs_every_phase_and_resumes_with_more_ppo(tmp_path):
    summary = train(TINY, tmp_path)
    assert summary["ppo"]["update"] == 0 and (tmp_path / POLICY).is_file()
    state = torch.load(tmp_path / CHECKPOINT, weights_only=False)
    assert state["phase"] == "done" and state["ppo"]["update"] == 1
    assert {"network", "network_config", "normalizer", "optimizer", "config"} <= state.keys()
    assert state["normalizer"]["count"] > 1  # the running statistics saw the recorded observations
    assert TrainConfig.from_dict(state["config"]) == TINY

    job = TrainingJob.resume(tmp_path, total_timesteps=4, progress=False)
    assert job.phase == "ppo" and torch.equal(job.network.global_norm.mean, state["normalizer"]["mean"])
    job.run()
    rows = UpdateLog(tmp_path).rows()
    assert [r["update"] for r in rows] == [0, 1]
    policy = GNNTamiyo.load(tmp_path / POLICY)
    assert torch.equal(policy.network.global_norm.mean, job.network.global_norm.mean)


def test_esper_simic_train_is_a_cli_subcommand():
    args = parser().parse_args(["simic", "train", "--out", "x", "--timesteps", "36", "--envs", "1"])
    assert (args.command, args.simic_command, args.timesteps, args.envs) == ("simic", "train", 36, 1)
