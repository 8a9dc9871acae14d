"""The bounded chaos campaign (``make test``): three runs through the real services while every kind of
fault hits them once; afterwards nothing acknowledged is lost, duplicated or left behind.

``make chaos`` runs the full campaign (``benchmarks/chaos.py --full``). ``ESPER_CHAOS_SEED`` picks
another seed (the default is fixed, so a failure reproduces).
"""

from __future__ import annotations

import os

import pytest
from redis_server import redis_server_available

from .campaign import CampaignConfig, run_campaign
from .report import table

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


def test_a_bounded_campaign_loses_nothing_acknowledged(tmp_path):
    if not redis_server_available():
        pytest.skip("the chaos suite runs its own redis-server (apt-get install redis-server)")
    config = CampaignConfig.bounded(seed=int(os.environ.get("ESPER_CHAOS_SEED", "14")))
    campaign = run_campaign(config, tmp_path)
    report = table(campaign)
    print(report)
    verdict = campaign.verdict
    assert verdict is not None
    summary = verdict.summary
    context = f"\n{report}\n{campaign.logs}"
    assert {f.kind for f in campaign.faults} >= {"kill tamiyo", "kill tolaria", "kill nissa", "redis restart"}
    assert summary["runs_finished"] == summary["runs_accepted"] >= config.runs, context
    assert summary["commands_applied_twice"] == 0, context
    assert summary["telemetry_expected"] > 0 and summary["telemetry_missing"] == 0, context
    assert summary["telemetry_duplicated"] == 0, context
    assert summary["poison_dead_lettered"] == summary["poison_injected"] == config.poison, context
    assert summary["phantom_runs"] == 0, context
    assert summary["service_crashes"] == 0, f"services exited on their own: {campaign.crashes}{context}"
    # Down longer than the API's deadline, Redis made the API refuse (503 + Retry-After, checked as answered).
    assert campaign.answers.get("submit 503", 0) >= config.long_outages, context
