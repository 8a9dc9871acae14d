"""A service run across processes: the Tolaria service's thread is rank 0, the other ranks are processes on
this machine that follow it (data parallel training is :mod:`esper.tolaria.distributed`'s)."""

from __future__ import annotations

import os
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from esper.leyline import TrainingJob
from esper.tolaria.distributed import DataParallel, free_port

#: What rank 0 tells the other ranks of a service run to do next (they hold no inbox of their own).
EPOCH, APPLY, CHECK, END = "epoch", "apply", "check", "end"
#: How long followers wait for rank 0's next order (a paused run holds them until it resumes).
HELD_FOR = timedelta(days=7)
#: One process group per process: a replica trains one multi-process run at a time.
_GROUP_LOCK = threading.Lock()


def check_ranks(parallel: DataParallel, model: nn.Module) -> float:
    """Rank 0 of a service run: how far the followers' parameters are from its own (0.0: identical)."""
    parallel.agree((CHECK,))
    return parallel.max_divergence(model)


class RankGroup:
    """The ranks of one multi-process run started by a service: this thread is rank 0, the others are
    processes on this machine that follow it (:func:`_follow`). Use as a context manager around the run."""

    def __init__(self, job: TrainingJob, out_dir: Path, resume: bool) -> None:
        self.job, self.out_dir, self.resume = job, out_dir, resume
        self.world = job.world_size
        self.parallel: DataParallel | None = None
        self._followers: list[Any] = []

    def __enter__(self) -> DataParallel:
        import torch.multiprocessing as mp

        _GROUP_LOCK.acquire()
        try:
            port = free_port()
            ctx = mp.get_context("spawn")
            for rank in range(1, self.world):
                proc = ctx.Process(
                    target=_follow,
                    args=(rank, self.world, port, self.job.to_dict(), str(self.out_dir), self.resume),
                    daemon=True,
                )
                proc.start()
                self._followers.append(proc)
            dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=self.world)
            self.parallel = DataParallel()
            return self.parallel
        except BaseException:
            self._reap()
            _GROUP_LOCK.release()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            if self.parallel is not None:
                try:
                    self.parallel.agree((END,))
                except Exception:  # a follower died: it is terminated below
                    pass
                dist.destroy_process_group()
        finally:
            self._reap()
            _GROUP_LOCK.release()

    def _reap(self) -> None:
        for proc in self._followers:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=10)
        self._followers = []


def _follow(rank: int, world: int, port: int, job_data: dict[str, Any], out_dir: str, resume: bool) -> None:
    """A follower rank of a service run: build (or resume) the same run, then do what rank 0 says."""
    from esper.tolaria.checkpoint import read_checkpoint, restore_checkpoint
    from esper.tolaria.runs import build_trainer, job_from_dict

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=HELD_FOR
    )
    try:
        parallel = DataParallel()
        job = job_from_dict(job_data)
        state = read_checkpoint(Path(out_dir)) if resume else None
        if state is not None:
            job = job_from_dict({**state["meta"], "epochs": job.epochs})
        trainer = build_trainer(job, decide_in_process=False, parallel=parallel)
        if state is not None:
            restore_checkpoint(trainer, state)
        while True:
            order = parallel.agree(None)
            if order[0] == EPOCH:
                trainer.run_epoch()
            elif order[0] == APPLY:
                trainer.apply_commands(order[1])
                parallel.broadcast_module(trainer.model)
            elif order[0] == CHECK:
                parallel.max_divergence(trainer.model)
            else:
                break
    finally:
        dist.destroy_process_group()
