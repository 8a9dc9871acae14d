"""One run across several processes with ``torch.distributed``: data parallel training (gloo on CPU, NCCL on GPU).

Every rank builds the same run (same job, same seed, so the same host and the
same data), then :class:`DataParallel` keeps the ranks one model:

* every global batch (the job's ``batch_size``) is split into contiguous
  shards, one per rank; each rank's loss is reduced to the global batch's mean
  before the governor judges it (so every rank trips, or not, together), and
  the gradients of every stepped parameter are all-reduced - weighted by shard
  size, so the step is the one a single process takes on the whole batch -
  before clipping and the optimizer steps;
* validation and test passes are sharded and their sums reduced; the
  counterfactual seed measurements and layer health, which gate the seeds'
  lifecycle, run on every rank over the same rows (so the gates agree);
* rank 0 alone publishes telemetry, receives commands (in the service: from
  the bus; in ``esper train``: from its in-process policy), checkpoints and
  writes the report; at each boundary it broadcasts the commands it applies,
  so every rank applies the same commands at the same step, and after them
  its parameters and buffers (a germinated seed's initial weights), so seeds
  are synchronized when created.

:func:`launch` starts ``nproc`` processes on this machine with
``torch.multiprocessing`` and a TCP rendezvous (``torchrun`` sets the same
environment variables, and :func:`init_from_env` reads them).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from esper.leyline import SeedStage, TrainingJob
from esper.tolaria.device import configured_device
from esper.tolaria.evaluation import Evaluation
from esper.tolaria.objective import CLASSIFICATION, Objective
from esper.tolaria.tasks import Split


class DataParallel:
    """This process's part in a data parallel run over the default process group (module docstring)."""

    def __init__(self) -> None:
        if not dist.is_initialized():
            raise RuntimeError("DataParallel needs torch.distributed initialized (see init_from_env / launch)")
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        #: where this rank's scalar collectives run: NCCL reduces only CUDA tensors (this rank's device), gloo CPU ones
        self.device = (
            torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        )

    @property
    def leader(self) -> bool:
        """Rank 0: the rank that publishes, receives commands and writes the run's files."""
        return self.rank == 0

    def bounds(self, n: int) -> tuple[int, int]:
        """This rank's contiguous share ``[start, end)`` of ``n`` rows (a batch smaller than the world is
        trained whole by every rank: the weighted gradient mean is then that batch's gradient)."""
        if n < self.world:
            return 0, n
        return n * self.rank // self.world, n * (self.rank + 1) // self.world

    def shard(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's shard of one global batch ``x`` (N, ...), ``y`` (N, ...)."""
        start, end = self.bounds(int(y.shape[0]))
        return x[start:end], y[start:end]

    def mean_loss(self, value: float, count: int) -> float:
        """The global batch's mean loss from this rank's shard mean ``value`` over ``count`` rows."""
        t = torch.tensor([value * count, float(count)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t[0] / t[1])

    def reduce_gradients(self, params: Sequence[nn.Parameter], count: int) -> None:
        """Replace each parameter's gradient by the shard-size weighted mean over the ranks (one all-reduce).

        ``params`` must be the same list, in the same order, on every rank; a
        parameter without a gradient counts as zero.
        """
        if not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        device = grads[0].device
        flat = torch.cat([g.detach().reshape(-1).to(torch.float32) * count for g in grads])
        flat = torch.cat([flat, torch.tensor([float(count)], device=device)])
        dist.all_reduce(flat)
        total = flat[-1]
        offset = 0
        for p, g in zip(params, grads, strict=True):
            n = g.numel()
            p.grad = (flat[offset : offset + n] / total).view_as(g).to(g.dtype)
            offset += n

    def sums(self, *values: float) -> list[float]:
        """Each value summed over the ranks."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return [float(v) for v in t.tolist()]

    def broadcast_module(self, module: nn.Module) -> None:
        """Give every rank rank 0's parameters and buffers (after a seed was created, at the start)."""
        with torch.no_grad():
            tensors = [t for t in (*module.parameters(), *module.buffers()) if t.numel()]
            if not tensors:
                return
            flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors])
            dist.broadcast(flat, src=0)
            offset = 0
            for t in tensors:
                n = t.numel()
                t.copy_(flat[offset : offset + n].view_as(t).to(t.dtype))
                offset += n

    def agree(self, value: Any) -> Any:
        """Rank 0's ``value`` (any picklable object), on every rank."""
        box = [value if self.leader else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, split: Split, batch_size: int = 1000, objective: Objective = CLASSIFICATION
    ) -> Evaluation:
        """:func:`esper.tolaria.evaluation.evaluate` over this rank's shard of ``split``, reduced over the ranks."""
        start, end = self.bounds(len(split))
        if len(split) < self.world:
            start, end = (0, len(split)) if self.leader else (0, 0)
        was_training = model.training
        model.eval()
        loss, score = 0.0, 0.0
        for s in range(start, end, batch_size):
            x, y = split.x[s : min(s + batch_size, end)], split.y[s : min(s + batch_size, end)]
            logits = model(x)
            loss += float(objective.loss_sum(logits, y))
            score += float(objective.score_sum(logits, y))
        model.train(was_training)
        loss, score, n = self.sums(loss, score, float(end - start))
        n = max(n, 1.0)
        return Evaluation(loss / n, score / n)

    def max_divergence(self, module: nn.Module) -> float:
        """Largest absolute difference of any parameter between this rank and rank 0, maxed over the ranks."""
        with torch.no_grad():
            mine = torch.cat([p.detach().reshape(-1).to(torch.float64) for p in module.parameters()])
            leader = mine.clone()
            dist.broadcast(leader, src=0)
            gap = (mine - leader).abs().max() if mine.numel() else mine.new_zeros(())
            gap = gap.reshape(1)
            dist.all_reduce(gap, op=dist.ReduceOp.MAX)
            return float(gap[0])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def backend() -> str:
    """NCCL where the ranks train on CUDA (the process's device, :func:`esper.tolaria.device.configured_device`,
    resolves to a CUDA device), else gloo."""
    return "nccl" if torch.cuda.is_available() and configured_device() != "cpu" else "gloo"


def init_from_env() -> DataParallel:
    """Join the process group ``torchrun`` (or :func:`launch`) describes in ``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR`` and ``MASTER_PORT``."""
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise RuntimeError(f"environment variable {name} is not set: start with torchrun or esper train --nproc")
    if torch.cuda.is_available():  # before the group: "auto" and "cuda" then mean this rank's own GPU
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", os.environ["RANK"])) % torch.cuda.device_count())
    if not dist.is_initialized():
        dist.init_process_group(backend())
    return DataParallel()


def _spawned(rank: int, world: int, port: int, target: Callable[..., Any], args: tuple[Any, ...]) -> None:
    os.environ.update(
        {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
         "MASTER_PORT": str(port)}
    )  # fmt: skip
    parallel = init_from_env()
    try:
        target(parallel, *args)
        # every rank past its last collective before any tears the group down: a gloo rank whose peer had
        # already closed its pairs was seen to abort at exit ("terminate called without an active exception")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def launch(nproc: int, target: Callable[..., Any], *args: Any) -> None:
    """Run ``target(parallel, *args)`` in ``nproc`` processes on this machine (``torch.multiprocessing``);
    returns when all have, raises when any failed. ``target`` must be importable (a module-level function)."""
    if not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc must be an integer >= 1, got {nproc!r}")
    import torch.multiprocessing as mp

    mp.spawn(_spawned, args=(nproc, free_port(), target, args), nprocs=nproc, join=True)


#: What rank 0 writes beside the report: world size, per-epoch divergence of the ranks, seed events per rank.
RANKS_NAME = "ranks.json"


def run_parallel(
    job: TrainingJob, out_dir: str | Path, *, resume: bool = False, progress: bool = True, stop_after: int | None = None
) -> dict[str, Any]:
    """Train ``job`` in ``job.world_size`` processes on this machine into ``out_dir`` (rank 0 writes what
    :func:`esper.tolaria.runs.run` writes, plus :data:`RANKS_NAME`); returns the report."""
    from esper.tolaria.report import REPORT_NAME  # report -> trainer -> this module

    launch(job.world_size, _train_rank, job.to_dict(), str(out_dir), resume, progress, stop_after)
    report: dict[str, Any] = json.loads((Path(out_dir) / REPORT_NAME).read_text())
    return report


def _train_rank(
    parallel: DataParallel,
    job_data: dict[str, Any],
    out_dir: str,
    resume: bool,
    progress: bool,
    stop_after: int | None,
) -> None:
    """One rank of :func:`run_parallel`: rank 0 runs the run's folder and policy, the others follow."""
    from esper.tolaria.checkpoint import read_checkpoint, restore_checkpoint
    from esper.tolaria.runs import RunFolder, build_trainer, job_from_dict

    job = job_from_dict(job_data)
    # Ranks share the machine's cores (each would otherwise start one thread per core).
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // parallel.world))
    folder = None
    if parallel.leader:
        folder = RunFolder.open(job, out_dir, resume=resume, run_id="local", parallel=parallel)
        trainer = folder.trainer
    else:
        if resume:
            state = read_checkpoint(Path(out_dir))
            job = job_from_dict({**state["meta"], "epochs": job.epochs})
        trainer = build_trainer(job, decide_in_process=False, parallel=parallel)
        if resume:
            restore_checkpoint(trainer, state)
    divergence: list[float] = []

    def on_epoch(t: Any, record: Any) -> None:
        divergence.append(parallel.max_divergence(t.model))
        if folder is not None:
            folder.checkpoint()
            if progress:
                print(f"epoch {record.epoch}: val acc {100 * record.val_accuracy:.1f}%", flush=True)

    try:
        trainer.fit(stop_after=stop_after, on_epoch=on_epoch)
    except BaseException:
        if folder is not None:
            folder.close()
        raise
    events = [
        (e.epoch, e.slot_id, SeedStage(e.from_stage).name, SeedStage(e.to_stage).name) for e in trainer.model.events
    ]
    gathered: list[Any] = [None] * parallel.world
    dist.all_gather_object(gathered, events)
    if folder is not None:
        folder.finish()
        summary = {"world_size": parallel.world, "max_divergence_per_epoch": divergence, "seed_events": gathered}
        (Path(out_dir) / RANKS_NAME).write_text(json.dumps(summary, indent=1))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m esper.tolaria.distributed --job JSON --out DIR``: this process's rank of one run, with the
    process group from the environment (``torchrun``, or a Kubernetes indexed Job setting ``RANK`` from
    ``JOB_COMPLETION_INDEX``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``); rank 0 writes the run folder
    (shared storage) and decides with the job's policy, as ``esper train --nproc`` does on one machine."""
    import argparse

    from esper.tolaria.runs import has_checkpoint, job_from_dict

    p = argparse.ArgumentParser(prog="python -m esper.tolaria.distributed", description=main.__doc__)
    p.add_argument("--job", required=True, help="the TrainingJob as JSON")
    p.add_argument("--out", required=True, type=Path, help="the run folder (shared by every rank)")
    args = p.parse_args(argv)
    try:
        job = job_from_dict(json.loads(args.job))
    except (ValueError, json.JSONDecodeError) as exc:
        raise SystemExit(f"--job: {exc}") from None
    if "RANK" not in os.environ and "JOB_COMPLETION_INDEX" in os.environ:
        os.environ["RANK"] = os.environ["JOB_COMPLETION_INDEX"]
    parallel = init_from_env()
    try:
        if parallel.world != job.world_size:
            raise SystemExit(f"field 'world_size': the job says {job.world_size}, WORLD_SIZE is {parallel.world}")
        _train_rank(parallel, job.to_dict(), str(args.out), has_checkpoint(args.out), False, None)
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
