"""``esper simic train --init POLICY.pt``: PPO fine-tunes a policy file's network, unchanged in shape."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from esper.cli.main import main
from esper.simic.diagnostics import UpdateLog
from esper.simic.train import CHECKPOINT, POLICY, RECORDED, TrainingJob, train
from esper.tamiyo.gnn.features import GLOBAL_FEATURES
from esper.tamiyo.gnn.network import NetworkConfig, TamiyoNetwork
from esper.tamiyo.gnn.policy import GNNTamiyo

from .tiny import TINY


def saved_policy(path, hidden: int = 16):
    torch.manual_seed(7)  # weights a job's own initialization (seed 0) would not draw
    network = TamiyoNetwork(NetworkConfig(hidden=hidden))
    network.global_norm.update(torch.randn(32, GLOBAL_FEATURES) * 3 + 1)  # statistics a fresh network lacks
    return GNNTamiyo(network).save(path), network


def test_a_job_from_a_policy_file_starts_ppo_on_its_network_and_the_checkpoint_resumes(tmp_path):
    source, network = saved_policy(tmp_path / "distilled.pt")
    summary = train(replace(TINY, init=str(source)), tmp_path / "job", progress=False)

    job_dir = tmp_path / "job"
    assert summary["init"] == str(source) and "offline" not in summary and summary["ppo"]["update"] == 0
    assert not (job_dir / RECORDED).exists() and not (job_dir / "offline.csv").exists()
    start = GNNTamiyo.load(job_dir / "policy-offline.pt").network.state_dict()
    assert all(torch.equal(start[k], v) for k, v in network.state_dict().items())  # PPO began from the file
    state = torch.load(job_dir / CHECKPOINT, weights_only=False)
    assert state["phase"] == "done" and state["ppo"]["update"] == 1
    assert state["normalizer"]["count"] > network.global_norm.count  # the file's statistics, with the rollouts'
    tuned = GNNTamiyo.load(job_dir / POLICY).network.state_dict()
    assert any(not torch.equal(tuned[k], v) for k, v in network.state_dict().items())  # one PPO update moved it

    job = TrainingJob.resume(job_dir, total_timesteps=4, progress=False)
    assert job.phase == "ppo" and job.config.init == str(source)
    job.run()
    assert [r["update"] for r in UpdateLog(job_dir).rows()] == [0, 1]


def test_a_policy_file_with_other_network_sizes_is_refused_naming_the_size(tmp_path):
    source, _ = saved_policy(tmp_path / "wide.pt", hidden=32)
    with pytest.raises(ValueError, match=r"field 'init': .*hidden=32, this job builds hidden=16"):
        train(replace(TINY, init=str(source)), tmp_path / "job", progress=False)
    assert not (tmp_path / "job" / CHECKPOINT).exists()


def test_a_missing_policy_file_is_refused_naming_the_field(tmp_path):
    with pytest.raises(ValueError, match=r"field 'init': .*missing.pt' does not exist"):
        train(replace(TINY, init=str(tmp_path / "missing.pt")), tmp_path / "job", progress=False)


def test_init_and_resume_together_are_refused(tmp_path, capsys):
    code = main(["simic", "train", "--out", str(tmp_path), "--resume", "--init", "x.pt", "--no-progress"])
    assert code == 2 and "field 'init'" in capsys.readouterr().err
