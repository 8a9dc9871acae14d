"""``EsperCallback``: grow a PyTorch Lightning ``LightningModule`` while ``Trainer.fit`` trains it.

    from esper.integrations.lightning import EsperCallback

    callback = EsperCallback(slots={"s1": "net.1"})       # dotted names inside your LightningModule
    lightning.Trainer(max_epochs=20, callbacks=[callback]).fit(module, train_loader, val_loader)
    grown = callback.exported                               # a plain nn.Module, no Esper inside

What happens when (a :class:`~esper.integrations.growth.GrowthSession` does the work):

- fit start: the slots are attached to the module (no hook while dormant: the
  module runs exactly as before); the first training batch probes their
  shapes and layouts;
- every training batch: seeds learn jointly with the host by default; with
  ``KasminaConfig.isolate_seeds`` each TRAINING seed gets its isolated
  gradient after the backward (the host learns nothing from it) and one batch
  per epoch is watched by Kasmina's isolation monitor;
- every validation end (not the sanity check): the model is evaluated on the
  validation batches, with each live seed on and off, Tamiyo's decide step
  runs, its command goes through Kasmina's gates; a germinated seed's
  parameters join the first optimizer as a new parameter group, a culled
  seed's group leaves it. The seed group copies the first group's settings;
  its base rate is ``seed_lr``, else the first group's. The module's
  learning-rate schedulers on that optimizer drive the seed group as they drive
  the first, scaled to its base rate, from where the schedule stands
  (``esper.integrations.schedulers``);
- fit end: the grown model is exported (:attr:`EsperCallback.exported`, saved to
  ``export_path`` when given) and the report and every message are kept
  (:attr:`EsperCallback.report`, ``events_path`` as JSON lines);
- checkpoints: the callback's state (lifecycle, seed weights, tracker, policy,
  which optimizer groups are seeds) travels in Lightning's checkpoint, and
  ``fit(..., ckpt_path=...)`` restores the seeds and their optimizer groups
  before Lightning reloads the optimizer state.

Batches are ``(x, y)`` pairs (``batch_to_xy`` adapts others); the loss and
score default to cross-entropy and accuracy. Not covered yet: the report's
history before a resume (it starts at the resumed epoch), and multi-device
strategies.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn import functional as F

from esper.integrations.growth import DEFAULT_POLICY, Batch, Changes, GrowthSession, Loss, accuracy_sum
from esper.integrations.schedulers import add_group, remove_groups
from esper.kasmina import KasminaConfig
from esper.leyline import Message
from esper.tamiyo.policy import Policy

#: How many of an epoch's last training batches are re-scored at the boundary (the train score Tamiyo reads).
TRAIN_SCORE_BATCHES = 4


def _pair(batch: Any) -> Batch:
    if isinstance(batch, tuple | list) and len(batch) == 2:
        return batch[0], batch[1]
    raise ValueError(f"EsperCallback: batches must be (x, y) pairs or pass batch_to_xy (got {type(batch).__name__})")


class EsperCallback(pl.Callback):
    """Grow seeds in a LightningModule during ``fit`` (see the module docstring).

    ``slots`` maps slot ids to dotted submodule names of the LightningModule,
    ``layouts`` declares layouts where inference could be wrong; ``policy``,
    ``param_budget`` and ``kasmina`` as for Tolaria's runs.
    """

    def __init__(
        self,
        slots: Mapping[str, str],
        *,
        layouts: Mapping[str, str] | None = None,
        policy: str | Policy = DEFAULT_POLICY,
        param_budget: int | None = None,
        kasmina: KasminaConfig | None = None,
        loss: Loss = F.cross_entropy,
        score: Loss = accuracy_sum,
        batch_to_xy: Callable[[Any], Batch] = _pair,
        seed_lr: float | None = None,
        export_path: str | Path | None = None,
        events_path: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.slots, self.layouts = dict(slots), dict(layouts or {})
        self.policy, self.param_budget, self.kasmina = policy, param_budget, kasmina
        self.loss, self.score, self.batch_to_xy, self.seed_lr = loss, score, batch_to_xy, seed_lr
        self.export_path = Path(export_path) if export_path is not None else None
        self.events_path = Path(events_path) if events_path is not None else None
        self.session: GrowthSession | None = None
        self.exported: nn.Module | None = None
        self.report: dict[str, Any] | None = None
        self._recent: list[Batch] = []
        self._losses: list[float] = []
        self._events: Any = None
        #: slot ids of the seed parameter groups in the first optimizer, in group order (checkpointed)
        self._groups: list[str] = []
        self._restore: dict[str, Any] | None = None

    # -- Lightning checkpoints ------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.session is None:
            return {}
        return {"session": self.session.state_dict(), "groups": list(self._groups)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning restores callbacks before on_fit_start and the optimizer after it: apply at fit start
        self._restore = dict(state_dict) if state_dict else None

    # -- Lightning hooks --------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sinks = []
        if self.events_path is not None:
            self.events_path.parent.mkdir(parents=True, exist_ok=True)
            self._events = self.events_path.open("w", encoding="utf-8")
            sinks.append(self._write_event)
        self.session = GrowthSession(
            pl_module,
            self.slots,
            layouts=self.layouts,
            policy=self.policy,
            param_budget=self.param_budget,
            kasmina=self.kasmina,
            loss=self.loss,
            score=self.score,
            run_id=f"lightning-{id(self):x}",
            sinks=sinks,
        )
        self.session.model.to(pl_module.device)  # the slots' anchors: new seeds are built where the module lives
        if self._restore is not None:
            self.session.load_state_dict(self._restore["session"])
            optimizer = trainer.optimizers[0] if trainer.optimizers else None
            self._groups = []
            for slot_id in self._restore["groups"]:  # the order the saved optimizer state has them in
                seed = self.session.model.slot(slot_id).seed
                if optimizer is not None and seed is not None:
                    changes = Changes(added={slot_id: list(seed.parameters())})
                    self._update_optimizer(trainer, optimizer, changes)
            self._restore = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        session = self._session()
        x, y = self.batch_to_xy(batch)
        if session.example is None:
            session.probe(x)
        session.watch()
        self._recent = [*self._recent[-(TRAIN_SCORE_BATCHES - 1) :], (x, y)]

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._recent:
            self._session().train_batch(self._recent[-1])

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor):
            self._losses.append(float(loss.detach()))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.session is None or self.session.example is None:
            return
        # Lightning validates under inference mode: seeds built here must be ordinary tensors that can train
        with torch.inference_mode(False), torch.no_grad():
            self._boundary(trainer, pl_module)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        session = self._session()
        if session.example is not None:
            self.exported = session.export()
            if self.export_path is not None:
                self.export_path.parent.mkdir(parents=True, exist_ok=True)
                torch.save(self.exported, self.export_path)
        self.report = session.report()
        if self._events is not None:
            self._events.close()
            self._events = None

    # -- the boundary -----------------------------------------------------------
    def _boundary(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        session = self._session()
        device = pl_module.device
        loaders = trainer.val_dataloaders
        loaders = loaders if isinstance(loaders, list | tuple) else [loaders]
        val = [self._to(self.batch_to_xy(b), device) for loader in loaders if loader is not None for b in loader]
        train_loss = sum(self._losses) / len(self._losses) if self._losses else float("nan")
        was_training = session.model.training
        session.model.eval()
        seen = sum(len(y) for _, y in self._recent)
        train_score = sum(float(self.score(session.model(x), y)) for x, y in self._recent) / max(seen, 1)
        session.model.train(was_training)
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        lr = float(optimizer.param_groups[0]["lr"]) if optimizer is not None else 0.0
        changes = session.boundary(
            val, train_loss=train_loss, train_score=train_score, learning_rate=lr, step=trainer.global_step
        )
        if optimizer is not None:
            self._update_optimizer(trainer, optimizer, changes)
        self._losses.clear()

    def _update_optimizer(self, trainer: pl.Trainer, optimizer: torch.optim.Optimizer, changes: Changes) -> None:
        schedulers = [config.scheduler for config in trainer.lr_scheduler_configs]
        host = optimizer.param_groups[0]
        ratio = 1.0 if self.seed_lr is None else self.seed_lr / float(host.get("initial_lr", host["lr"]))
        for slot_id, params in changes.added.items():
            add_group(optimizer, params, schedulers, ratio=ratio)
            self._groups.append(slot_id)
        for slot_id, params in changes.removed.items():
            if slot_id in self._groups:
                self._groups.remove(slot_id)
            remove_groups(optimizer, params, schedulers)

    @staticmethod
    def _to(batch: Batch, device: torch.device) -> Batch:
        return batch[0].to(device), batch[1].to(device)

    def _session(self) -> GrowthSession:
        if self.session is None:
            raise RuntimeError("EsperCallback: fit has not started")
        return self.session

    def _write_event(self, message: Message) -> None:
        record = {"type": message.message_type, **message.to_dict()}
        self._events.write(json.dumps(record, allow_nan=True, default=str) + "\n")
        self._events.flush()
