"""The chaos campaign as a benchmark: the table of faults and what survived them, JSON on the last line.

    python benchmarks/chaos.py            # the bounded campaign (the one `make test` runs)
    python benchmarks/chaos.py --full     # `make chaos`: more runs, two Tolaria replicas, every fault more often
    python benchmarks/chaos.py --seed 7   # another draw of fault order and moments

Real services (Tamiyo, Tolaria, Nissa) on a private redis-server with AOF; see
tests/chaos/campaign.py for the faults and tests/chaos/checks.py for the checks.
Exits 1 when a check fails (a run unfinished, a command applied twice, telemetry
missing or archived twice, a poison message not dead-lettered, a phantom run,
a service that exited on its own during the faults).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))  # before benchmarks/, so that `chaos` is the tests' package, not this script

from chaos.campaign import CampaignConfig, run_campaign  # noqa: E402
from chaos.report import rows, table  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="the full campaign (make chaos)")
    parser.add_argument("--seed", type=int, default=14, help="seed of fault order and moments (default 14)")
    parser.add_argument("--keep", type=Path, default=None, help="keep Redis data, runs and logs in this folder")
    args = parser.parse_args()
    config = CampaignConfig.full(args.seed) if args.full else CampaignConfig.bounded(args.seed)
    with tempfile.TemporaryDirectory(prefix="esper-chaos-") as tmp:
        root = args.keep or Path(tmp)
        campaign = run_campaign(config, root)
    verdict = campaign.verdict
    assert verdict is not None
    print(table(campaign))
    summary = verdict.summary
    ok = (
        summary["runs_finished"] == summary["runs_accepted"]
        and summary["commands_applied_twice"] == 0
        and summary["telemetry_missing"] == 0
        and summary["telemetry_duplicated"] == 0
        and summary["phantom_runs"] == 0
        and summary["poison_dead_lettered"] == summary["poison_injected"]
        and summary["service_crashes"] == 0
    )
    if not ok:
        print("\nCHECKS FAILED; service logs:\n" + campaign.logs, file=sys.stderr)
    result = {
        "campaign": "full" if args.full else "bounded",
        "seed": args.seed,
        "wall_s": round(campaign.wall_s, 1),
        **summary,
        "faults": rows(campaign),
        "api_answers": campaign.answers,
        "crashes_by_service": campaign.crashes,
        "ok": ok,
    }
    print(json.dumps(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
