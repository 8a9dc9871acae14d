"""Growth benchmark on MNIST-1D: does growing pay?

Arms (each over SEEDS seeds, the same data, budget and schedule):

* ``static_small``: the 858-parameter host, trained by Tolaria, no growth;
* ``heuristic``: that host grown by the heuristic Tamiyo within 5,210 parameters;
* ``static_5k``: the 5,210-parameter host (``host_channels=25``), trained by Tolaria;
* ``oracle``: each heuristic run's final architecture (``esper.kasmina.export``),
  re-initialized the way a user would (every layer's own PyTorch init) and
  trained statically by Tolaria with the same seed (run right after its
  heuristic run, in the same worker);
* ``bare``: a plain PyTorch loop, no Esper, over the static 5,210-parameter host.

Every arm trains with the reference budget of the MNIST-1D paper (Adam 1e-2,
batch 100, EPOCHS epochs of 38 steps ~ 6,000 steps) on the 3,800 training rows
left after the 200-row validation split, with the ``anneal`` schedule (constant
rate, cosine over the last 15% of steps); every decision reads the validation
split only, the test split is evaluated every epoch for the record. Tolaria arms
run as ``esper train`` does (events, a checkpoint every ``--checkpoint-every``
epochs), without the end-of-run plot. Training FLOPs are counted with
``torch.utils.flop_counter.FlopCounterMode`` on one step per distinct
architecture (and training mode), times its steps; counting is off the clock.

The ablation flags change the heuristic arm (and so the oracle built from it);
see the README's "Does growing pay?" for what each one showed.

Progress goes to stderr; the last stdout line is JSON, per arm: median final
validation and test accuracy, median final parameters, per-seed lists,
``median_seconds`` and ``median_train_flops``; plus ``ratios`` (per-seed
heuristic/oracle and static_5k/bare wall-time ratios, medians), ``differences``
(the same pairs' final test accuracy, paired by seed: median, bootstrap 95%
interval, wins and losses) and ``targets`` (issue 9's three, judged on this run).

    .venv/bin/python benchmarks/growth.py [--seeds 5] [--epochs 158] [--workers 2] [--arms heuristic,oracle]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from growth_summary import BUDGET, pair, read_renamed, summarize

ARMS = ("static_small", "heuristic", "static_5k", "oracle", "bare")
#: what the oracle arm is recorded as with ``--oracle-late`` (not the baseline of the targets)
ORACLE_LATE = "oracle_late"
HOST_CHANNELS = {"static_small": None, "heuristic": None, "static_5k": 25, "bare": 25}
SEED_INITS = ("gradmax", "zero", "default")
ORACLE_INITS = ("default", "zero")


@dataclass(frozen=True, slots=True)
class Settings:
    """One benchmark invocation's knobs (the ablation flags)."""

    epochs: int = 158
    schedule: str = "anneal"
    checkpoint_every: int = 1
    spike_sigma: float = 6.0
    isolation_epochs: int | None = None
    isolated_pass: bool = True
    merge_fossilized: bool = True
    blend_epochs: int | None = None
    alpha_schedule: str | None = None
    seed_init: str = "gradmax"
    germinate_epoch: int | None = None
    max_active_seeds: int | None = None
    slot_order: tuple[str, ...] | None = None
    oracle_init: str = "default"
    #: each of the oracle's seed modules stays out of its forward until the step its seed began blending
    oracle_late: bool = False
    #: the heuristic arm's epoch length in steps (None: one pass); its epochs are the same total steps
    steps_per_epoch: int | None = None
    health_every: int | None = None
    governor_min_ratio: float = 3.0
    cull_needs_loss_harm: bool = True
    #: one decision per slot at a boundary, as the default job's policy (``heuristic-per-slot``) decides;
    #: False: one decision per boundary (the policy ``heuristic``)
    per_slot: bool = True
    #: the growing arm's policy: the benchmark's heuristic (with the flags above), or any policy a job may
    #: name (``learned``, ``heuristic-per-slot``, ``PATH.pt``), built as ``esper train`` builds it
    policy: str = "heuristic"
    #: while no seed is in flight and the heuristic waited, the round runs on to the end of the pass
    lengthen_settled: bool = True
    #: (shrink, noise): once every slot holds a fossilized seed, every parameter p becomes
    #: shrink * p + noise * (a fresh init of p), once (Ash & Adams' shrink and perturb)
    shrink_perturb: tuple[float, float] | None = None
    #: the grown run's host does not learn until every slot's seed is in the forward, for up to this many
    #: steps from the start (``TrainerConfig.host_wait_steps``; 0: never)
    host_wait_steps: int = 0
    #: True: seeds train isolated until they blend in; False: jointly with the host from TRAINING on
    #: (``KasminaConfig.isolate_seeds``; None: Kasmina's default, joint)
    isolate_seeds: bool | None = None
    #: the task every arm trains (another than ``mnist1d``: the heuristic and oracle arms only)
    task: str = "mnist1d"


#: every arm's batch size (MNIST-1D's 3,800 training rows: 38 steps a pass)
BATCH = 100
#: the arms whose host is MNIST-1D's (the 5,210-parameter static host is sized for it)
MNIST1D_ONLY = ("static_small", "static_5k", "bare")


def _trainer_config(settings: Settings, seed: int, *, growing: bool = False, steps_per_pass: int = 0) -> Any:
    """Tolaria's config for an arm; the growing arm's short epochs add up to ``settings.epochs`` passes of
    ``steps_per_pass`` steps (the task's training rows over :data:`BATCH`)."""
    from esper.tolaria.config import TrainerConfig
    from esper.tolaria.governor import GovernorConfig

    steps = settings.steps_per_epoch if growing else None
    if steps is not None and steps_per_pass < 1:
        raise ValueError(f"steps_per_pass must be >= 1 with --steps-per-epoch (value {steps_per_pass!r})")
    return TrainerConfig(
        epochs=settings.epochs if steps is None else -(-settings.epochs * steps_per_pass // steps),
        steps_per_epoch=steps,
        lengthen_settled=settings.lengthen_settled,
        health_every=settings.health_every,
        batch_size=BATCH,
        lr=1e-2,
        lr_schedule=settings.schedule,
        seed=seed,
        governor=GovernorConfig(sigma=settings.spike_sigma, min_ratio=settings.governor_min_ratio),
        isolated_seed_pass=settings.isolated_pass,
        merge_fossilized=settings.merge_fossilized,
        seed_init="zero" if settings.seed_init == "default" else settings.seed_init,
        checkpoint_every=settings.checkpoint_every,
        host_wait_steps=settings.host_wait_steps if growing else 0,
    )


def _growth_configs(settings: Settings) -> tuple[Any, Any]:
    """Kasmina's config and the heuristic's, with the ablation flags applied."""
    from esper.leyline import TrainingJob
    from esper.tamiyo.policies import heuristic_config
    from esper.tolaria.runs import KASMINA

    kasmina = KASMINA
    heuristic = heuristic_config(TrainingJob(param_budget=BUDGET))
    if settings.isolation_epochs is not None:
        import msgspec

        thresholds = msgspec.structs.replace(kasmina.thresholds, min_training_epochs=settings.isolation_epochs)
        kasmina = replace(kasmina, thresholds=thresholds)
        heuristic = replace(heuristic, thresholds=thresholds)
    if settings.blend_epochs is not None:
        kasmina = replace(kasmina, blend_epochs=settings.blend_epochs)
    if settings.alpha_schedule is not None:
        kasmina = replace(kasmina, alpha_schedule=settings.alpha_schedule)
    if settings.germinate_epoch is not None:
        heuristic = replace(heuristic, min_epoch_to_germinate=settings.germinate_epoch)
    if settings.max_active_seeds is not None:
        heuristic = replace(heuristic, max_active_seeds=settings.max_active_seeds)
    if settings.slot_order is not None:
        heuristic = replace(heuristic, slot_order=settings.slot_order)
    heuristic = replace(heuristic, cull_needs_loss_harm=settings.cull_needs_loss_harm)
    if settings.isolate_seeds is not None:
        kasmina = replace(kasmina, isolate_seeds=settings.isolate_seeds)
    return kasmina, heuristic


def _heuristic(config: Any, per_slot: bool) -> Any:
    """The heuristic arm's policy; ``per_slot``: one decision per slot at a boundary instead of one."""
    from esper.tamiyo.heuristic import HeuristicTamiyo

    return HeuristicTamiyo(replace(config, per_slot=per_slot))


def _growing_policy(settings: Settings, heuristic: Any, seed: int, steps_per_pass: int) -> Any:
    """The policy that grows the ``heuristic`` arm: the benchmark's heuristic, or ``settings.policy``."""
    if settings.policy == "heuristic":
        return _heuristic(heuristic, settings.per_slot)
    from esper.leyline import TrainingJob
    from esper.tamiyo.policies import make_policy

    epochs = _trainer_config(settings, seed, growing=True, steps_per_pass=steps_per_pass).epochs
    return make_policy(settings.policy, TrainingJob(epochs=epochs, param_budget=BUDGET, seed=seed))


def _growing_hooks(settings: Settings) -> Any:
    """The heuristic arm's ``on_trainer`` hooks (the seed-init and shrink-and-perturb ablations), as one."""
    from growth_arms import chain_hooks, default_init_hook, shrink_perturb_once_grown

    init = default_init_hook() if settings.seed_init == "default" else None  # else: the trainer's seed_init
    sp = shrink_perturb_once_grown(*settings.shrink_perturb) if settings.shrink_perturb is not None else None
    return chain_hooks(init, sp)


def _record(arm: str, seed: int, run: Any) -> dict[str, Any]:
    result = {"arm": arm, "seed": seed, **asdict(run)}
    result["seconds"] = round(result["seconds"], 2)
    result["cpu_seconds"] = round(result["cpu_seconds"], 2)
    print(json.dumps(result), file=sys.stderr, flush=True)
    return result


def one(arm: str, seed: int, settings: Settings, with_oracle: bool) -> list[dict[str, Any]]:
    """Train ``arm`` for ``seed`` (the heuristic arm followed by its oracle when asked)."""
    import torch

    torch.set_num_threads(1)
    from growth_arms import bare_run, blend_steps, late_seeds, oracle_host, oracle_task, tolaria_run, warm_up

    from esper.tamiyo.policy import StaticPolicy
    from esper.tolaria.runs import KASMINA
    from esper.tolaria.tasks import load_task

    task = load_task(settings.task, host_channels=HOST_CHANNELS.get(arm))
    per_pass = math.ceil(len(task.train) / BATCH)
    config = _trainer_config(settings, seed)
    warm_up()
    if arm == "bare":
        return [_record(arm, seed, bare_run(task, config))]
    with tempfile.TemporaryDirectory() as out:
        if arm != "heuristic":
            _, run = tolaria_run(task, config, Path(out), kasmina=KASMINA, policy=lambda _m: StaticPolicy())
            return [_record(arm, seed, run)]
        kasmina, heuristic = _growth_configs(settings)
        trainer, run = tolaria_run(
            task,
            _trainer_config(settings, seed, growing=True, steps_per_pass=per_pass),
            Path(out),
            kasmina=kasmina,
            policy=lambda _model: _growing_policy(settings, heuristic, seed, per_pass),
            param_budget=BUDGET,
            on_trainer=_growing_hooks(settings),
        )
        results = [_record(arm, seed, run)]
    if with_oracle:
        build = oracle_host(trainer.model, zero_seed_outputs=settings.oracle_init == "zero")
        late = late_seeds(blend_steps(trainer)) if settings.oracle_late else None
        with tempfile.TemporaryDirectory() as out:
            _, oracle = tolaria_run(
                oracle_task(task, build),
                config,
                Path(out),
                kasmina=KASMINA,
                policy=lambda _m: StaticPolicy(),
                on_trainer=late,
            )
        results.append(_record(ORACLE_LATE if settings.oracle_late else "oracle", seed, oracle))
    return results


def _shrink_perturb(parser: argparse.ArgumentParser, value: str | None) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        shrink, noise = (float(v) for v in value.split(","))
    except ValueError:
        parser.error(f"--shrink-perturb: expected SHRINK,NOISE, two numbers (value {value!r})")
    if not (0.0 < shrink <= 1.0 and noise >= 0.0):
        parser.error(f"--shrink-perturb: SHRINK must be in (0, 1] and NOISE >= 0 (value {value!r})")
    return shrink, noise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=158)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of " + ", ".join(ARMS))
    parser.add_argument(
        "--task", default="mnist1d", help="a built-in task (other than mnist1d: --arms heuristic,oracle only)"
    )
    parser.add_argument("--schedule", default="anneal", help="LR schedule of every arm (cosine, constant, anneal)")
    parser.add_argument("--checkpoint-every", type=int, default=1, help="Tolaria arms checkpoint every N epochs")
    parser.add_argument("--spike-sigma", type=float, default=6.0, help="the governor's spike threshold (Tolaria arms)")
    ablation = parser.add_argument_group("ablations (heuristic arm)")
    ablation.add_argument("--isolation-epochs", type=int, help="epochs a seed trains isolated before G2 (gate minimum)")
    ablation.add_argument(
        "--no-isolated-pass",
        dest="isolated_pass",
        action="store_false",
        help="isolated seeds follow the straight-through gradient only (no extra forward/backward at alpha 1)",
    )
    ablation.add_argument(
        "--separate-optimizers",
        dest="merge_fossilized",
        action="store_false",
        help="a fossilized seed keeps its own optimizer (and clipping norm) instead of joining the host's",
    )
    ablation.add_argument("--blend-epochs", type=int, help="epochs the alpha ramp takes")
    ablation.add_argument("--alpha-schedule", choices=("linear", "cosine", "sigmoid"))
    ablation.add_argument(
        "--seed-init",
        choices=SEED_INITS,
        default="gradmax",
        help="gradmax (first layer from the host's gradient), zero (random first, zero last layer), "
        "default (PyTorch's init of both: not the identity)",
    )
    ablation.add_argument("--germinate-epoch", type=int, help="first epoch the heuristic may germinate")
    ablation.add_argument("--max-active-seeds", type=int, help="seeds live at once")
    ablation.add_argument("--slot-order", help="comma-separated slots in the order the heuristic fills them")
    ablation.add_argument("--oracle-init", choices=ORACLE_INITS, default="default", help="the oracle's seed layers")
    ablation.add_argument(
        "--oracle-late",
        action="store_true",
        help="each of the oracle's seeds joins its forward at the step its seed began blending in the grown run",
    )
    ablation.add_argument(
        "--shrink-perturb",
        metavar="SHRINK,NOISE",
        help="once every slot holds a fossilized seed, shrink every parameter by SHRINK and add NOISE times a "
        "fresh init of it (Ash & Adams), once",
    )
    ablation.add_argument(
        "--host-wait-steps",
        type=int,
        default=0,
        help="the grown run's host does not learn until every slot's seed is in the forward, for up to this many "
        "steps from the start (TrainerConfig.host_wait_steps; 76 = two passes)",
    )
    ablation.add_argument(
        "--isolate-seeds",
        action=argparse.BooleanOptionalAction,
        help="a seed trains isolated on detached host features until it blends in (KasminaConfig.isolate_seeds; "
        "default: off, it learns jointly with the host from TRAINING on, in the forward at full weight)",
    )
    ablation.add_argument(
        "--joint",
        dest="isolate_seeds",
        action="store_false",
        help="the same as --no-isolate-seeds (the default since session 23; earlier commands name it)",
    )
    ablation.add_argument(
        "--steps-per-epoch",
        type=int,
        help="the heuristic arm's epoch (decision round) in steps; the same total steps (other arms: one pass)",
    )
    ablation.add_argument(
        "--health-every", type=int, help="layer health every N epochs, every arm (default: once per pass)"
    )
    ablation.add_argument(
        "--governor-min-ratio", type=float, default=3.0, help="a spike is also this many times the mean (1: off)"
    )
    ablation.add_argument(
        "--cull-on-accuracy",
        dest="cull_needs_loss_harm",
        action="store_false",
        help="cull on accuracy harm alone, even when the seed lowers validation loss",
    )
    ablation.add_argument(
        "--per-slot",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the heuristic decides once per slot at a boundary, as the default job's policy heuristic-per-slot "
        "does (default); --no-per-slot: once per boundary (the policy heuristic)",
    )
    ablation.add_argument(
        "--policy",
        default="heuristic",
        help="the growing arm's policy: the heuristic (default, with the flags above) or a policy a job may name "
        "(learned, heuristic-per-slot, PATH.pt)",
    )
    ablation.add_argument(
        "--no-lengthen-settled",
        dest="lengthen_settled",
        action="store_false",
        help="with --steps-per-epoch: a boundary after every epoch, also once every seed is fossilized",
    )
    parser.add_argument(
        "--summarize",
        nargs="+",
        metavar="LOG[:ARM=NAME,...]",
        help="train nothing: summarize the per-run lines of earlier runs' stderr logs (e.g. two seed ranges); "
        "ARM=NAME renames that log's arm (an ablation's heuristic runs beside the defaults')",
    )
    parser.add_argument(
        "--pair",
        action="append",
        default=[],
        metavar="NUM,DEN",
        help="with --summarize: also report NUM - DEN, paired by seed (repeatable)",
    )
    args = parser.parse_args()
    if args.summarize:
        try:
            results = [r for item in args.summarize for r in read_renamed(item)]
            pairs = [pair(p) for p in args.pair]
        except ValueError as exc:
            parser.error(str(exc))
        present = {r["arm"] for r in results}
        known = [a for a in (*ARMS, ORACLE_LATE) if a in present]
        print(json.dumps(summarize([*known, *sorted(present - set(known))], results, pairs=pairs)))
        return
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        parser.error(f"unknown arms {unknown} (known: {', '.join(ARMS)})")
    if args.task != "mnist1d" and set(arms) & set(MNIST1D_ONLY):
        parser.error(
            f"--task {args.task}: arms {', '.join(MNIST1D_ONLY)} are sized for mnist1d; use --arms heuristic,oracle"
        )
    if args.policy != "heuristic":
        from esper.tamiyo.policies import check_policy

        try:
            check_policy(args.policy)
        except ValueError as exc:
            parser.error(str(exc))
    if "oracle" in arms and "heuristic" not in arms:
        parser.error("the oracle arm is built from the heuristic arm's runs: add 'heuristic' to --arms")
    settings = Settings(
        epochs=args.epochs,
        schedule=args.schedule,
        checkpoint_every=args.checkpoint_every,
        spike_sigma=args.spike_sigma,
        isolation_epochs=args.isolation_epochs,
        isolated_pass=args.isolated_pass,
        merge_fossilized=args.merge_fossilized,
        blend_epochs=args.blend_epochs,
        alpha_schedule=args.alpha_schedule,
        seed_init=args.seed_init,
        germinate_epoch=args.germinate_epoch,
        max_active_seeds=args.max_active_seeds,
        slot_order=tuple(args.slot_order.split(",")) if args.slot_order else None,
        oracle_init=args.oracle_init,
        oracle_late=args.oracle_late,
        steps_per_epoch=args.steps_per_epoch,
        health_every=args.health_every,
        governor_min_ratio=args.governor_min_ratio,
        cull_needs_loss_harm=args.cull_needs_loss_harm,
        per_slot=args.per_slot,
        policy=args.policy,
        lengthen_settled=args.lengthen_settled,
        shrink_perturb=_shrink_perturb(parser, args.shrink_perturb),
        host_wait_steps=args.host_wait_steps,
        isolate_seeds=args.isolate_seeds,
        task=args.task,
    )
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    # heuristic runs first: each carries its oracle, so they are the longest jobs
    order = sorted((a for a in arms if a != "oracle"), key=lambda a: a != "heuristic")
    jobs = [(arm, seed) for arm in order for seed in seeds]
    with_oracle = "oracle" in arms
    print(json.dumps({"settings": asdict(settings), "arms": arms}), file=sys.stderr, flush=True)
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = [pool.submit(one, arm, seed, settings, with_oracle) for arm, seed in jobs]
        results = [r for f in futures for r in f.result()]
    recorded = [ORACLE_LATE if a == "oracle" and settings.oracle_late else a for a in arms]
    print(json.dumps(summarize(recorded, results)))


if __name__ == "__main__":
    main()
