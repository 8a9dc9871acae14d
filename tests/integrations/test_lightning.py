"""EsperCallback grows a small LightningModule trained by a real ``lightning.Trainer`` on CPU.

One fit (scikit-learn digits as 64 features, an MLP with two slots, eight epochs) is shared by the
tests; each checks one behaviour: the policy decided at every validation end, seeds germinated
through Kasmina's gates and trained through the optimizer the callback extended (jointly with the
host, the default), no isolation violation, the messages went to the events file, and the export is
a plain module equal to the grown model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")

from esper.integrations.lightning import EsperCallback  # noqa: E402
from esper.kasmina import get_blueprint  # noqa: E402

EPOCHS = 8


class DigitsMLP(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=3e-3)


@dataclass
class Fit:
    callback: EsperCallback
    module: DigitsMLP
    val: TensorDataset
    events: list[dict]
    seed_params_at_germination: dict[str, list[torch.Tensor]]


@pytest.fixture(scope="module")
def fit(tmp_path_factory: pytest.TempPathFactory) -> Fit:
    from sklearn.datasets import load_digits

    torch.set_num_threads(1)
    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    order = torch.as_tensor(np.random.default_rng(0).permutation(len(y)))
    train = TensorDataset(x[order[:600]], y[order[:600]])
    val = TensorDataset(x[order[600:900]], y[order[600:900]])
    out = tmp_path_factory.mktemp("lightning")
    callback = EsperCallback(
        slots={"s1": "net.1", "s2": "net.3"}, events_path=out / "events.jsonl", export_path=out / "grown.pt"
    )
    snapshots: dict[str, list[torch.Tensor]] = {}

    class Snapshot(pl.Callback):
        """Copies each seed's parameters the first validation end after it appears."""

        def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            if callback.session is None:
                return
            for sid, slot in callback.session.model.slots.items():
                if slot.seed is not None and sid not in snapshots:
                    snapshots[sid] = [p.detach().clone() for p in slot.seed.parameters()]

    module = DigitsMLP()
    trainer = pl.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback, Snapshot()],
    )
    trainer.fit(module, DataLoader(train, batch_size=50, shuffle=True), DataLoader(val, batch_size=300))
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    return Fit(callback, module, val, events, snapshots)


def test_the_policy_decides_at_every_validation_end(fit: Fit) -> None:
    decisions = [e for e in fit.events if e["type"] == "adaptation_decision"]
    assert sorted({d["epoch"] for d in decisions}) == list(range(1, EPOCHS + 1))
    # each validation end decided whole: the default heuristic asks once per slot, each decision says which
    by_epoch: dict[int, list[tuple[int, int]]] = {}
    for d in decisions:
        by_epoch.setdefault(d["epoch"], []).append((d["index"], d["count"]))
    assert all(sorted(b) == [(i, len(b)) for i in range(len(b))] for b in by_epoch.values()), by_epoch
    assert any(len(b) > 1 for b in by_epoch.values()), "the two slots were asked about at one validation end"
    assert fit.callback.report is not None and fit.callback.report["epochs"] == EPOCHS


def test_seeds_germinate_at_vector_slots_with_dense_blueprints_priced_exactly(fit: Fit) -> None:
    report = fit.callback.report
    assert report is not None
    germinated = [e for e in report["seed_events"] if e["to"] == "GERMINATED"]
    assert germinated and {e["blueprint"] for e in germinated} <= {"mlp", "lowrank"}
    model = fit.callback.session.model
    seeded = [s for s in model.slots.values() if s.seed is not None]
    live = sum(get_blueprint(s.blueprint).param_count((24,), s.blueprint_config) for s in seeded)
    assert report["params_final"] - report["params_initial"] == live


def test_germinated_seeds_join_the_optimizer_and_train(fit: Fit) -> None:
    model = fit.callback.session.model
    grown = [sid for sid, s in model.slots.items() if s.seed is not None]
    assert grown
    for sid in grown:
        before = fit.seed_params_at_germination[sid]
        after = list(model.slots[sid].seed.parameters())
        assert any(not torch.equal(b, a.detach()) for b, a in zip(before, after, strict=True)), sid


def test_no_isolation_violation_and_the_gates_saw_measured_contributions(fit: Fit) -> None:
    report = fit.callback.report
    assert report is not None and report["isolation_violations"] == 0
    signals = [e for e in fit.events if e["type"] == "training_signals"]
    measured = [s for e in signals for s in e["seeds"] if s["stage"] != "DORMANT" and s["improvement"] is not None]
    assert measured, "no live seed was ever measured"


def test_every_message_kind_reaches_the_events_file(fit: Fit) -> None:
    kinds = {e["type"] for e in fit.events}
    assert {"model_graph", "training_signals", "adaptation_decision", "seed_transition"} <= kinds


def test_the_export_is_plain_and_equals_the_grown_model(fit: Fit) -> None:
    exported = fit.callback.exported
    assert exported is not None
    assert not any(type(m).__module__.startswith("esper") for m in exported.modules())
    x = fit.val.tensors[0]
    model = fit.callback.session.model
    model.eval()
    exported.eval()
    with torch.no_grad():
        assert torch.allclose(exported(x), model(x), atol=1e-5)
    loaded = torch.load(fit.callback.export_path, weights_only=False)
    with torch.no_grad():
        assert torch.equal(loaded(x), exported(x))


def test_a_fit_resumed_from_a_lightning_checkpoint_keeps_its_seeds_and_their_optimizer_groups(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    torch.manual_seed(1)
    digits = load_digits()
    x, y = torch.tensor(digits.data[:600] / 16.0, dtype=torch.float32), torch.tensor(digits.target[:600])
    train, val = DataLoader(TensorDataset(x[:500], y[:500]), batch_size=50), DataLoader(TensorDataset(x[500:], y[500:]))

    def trainer(epochs: int, *callbacks: pl.Callback) -> pl.Trainer:
        return pl.Trainer(
            max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks),
        )  # fmt: skip

    first = EsperCallback(slots={"s1": "net.1", "s2": "net.3"})
    before = trainer(4, first)
    before.fit(DigitsMLP(), train, val)
    before.save_checkpoint(tmp_path / "esper.ckpt")
    saved = {sid: (s.stage, s.seed_id) for sid, s in first.session.model.slots.items()}
    weights = {k: v.clone() for k, v in first.session.model.slots.state_dict().items()}
    assert any(seed_id for _, seed_id in saved.values()), "nothing germinated before the checkpoint"

    resumed = EsperCallback(slots={"s1": "net.1", "s2": "net.3"})
    seen: dict[str, object] = {}

    class AtStart(pl.Callback):
        def on_fit_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            model = resumed.session.model
            seen["slots"] = {sid: (s.stage, s.seed_id) for sid, s in model.slots.items()}
            seen["weights"] = {k: v.clone() for k, v in model.slots.state_dict().items()}
            seen["groups"] = len(trainer.optimizers[0].param_groups)

    after = trainer(7, resumed, AtStart())
    after.fit(DigitsMLP(), train, val, ckpt_path=tmp_path / "esper.ckpt")
    assert seen["slots"] == saved
    assert seen["weights"].keys() == weights.keys()
    assert all(torch.equal(seen["weights"][k], weights[k]) for k in weights)
    assert seen["groups"] == 1 + len(first._groups)
    assert resumed.session.epoch == 7 and resumed.session.model.events[: len(first.session.model.events)] == (
        first.session.model.events
    )


def test_the_callback_grows_a_model_trained_in_lightnings_bf16_mixed_precision(tmp_path: Path) -> None:
    """Lightning's own autocast (``precision="bf16-mixed"``, what GPU users pick): seeds still germinate,
    train in bfloat16 and fossilize, their parameters stay float32, and the export is the grown model."""
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    digits = load_digits()
    x, y = torch.tensor(digits.data[:900] / 16.0, dtype=torch.float32), torch.tensor(digits.target[:900])
    train, val = DataLoader(TensorDataset(x[:600], y[:600]), batch_size=50), DataLoader(TensorDataset(x[600:], y[600:]))
    callback = EsperCallback(slots={"s1": "net.1", "s2": "net.3"}, export_path=tmp_path / "grown.pt")
    seed_dtypes: set[torch.dtype] = set()

    class SeedOutputs(pl.Callback):
        def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, *_args: object) -> None:
            for slot in callback.session.model.slots.values() if callback.session is not None else ():
                if slot.seed is not None and not getattr(slot.seed, "_dtype_hook", False):
                    slot.seed.register_forward_hook(lambda _m, _i, out: seed_dtypes.add(out.dtype))
                    slot.seed._dtype_hook = True

    trainer = pl.Trainer(
        max_epochs=EPOCHS, accelerator="cpu", precision="bf16-mixed", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback, SeedOutputs()],
    )  # fmt: skip
    module = DigitsMLP()
    trainer.fit(module, train, val)
    slots = callback.session.model.slots
    assert any(s.stage.name == "FOSSILIZED" for s in slots.values()), {k: s.stage for k, s in slots.items()}
    assert torch.bfloat16 in seed_dtypes
    assert {p.dtype for p in module.parameters()} == {torch.float32}
    exported = torch.load(tmp_path / "grown.pt", weights_only=False)
    with torch.no_grad():
        assert torch.equal(exported(x[600:]), callback.session.model(x[600:]))


@pytest.mark.parametrize(
    ("schedule", "seed_lr"),
    [
        (lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 0.8**e), None),  # broke at its next step
        (lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=3), 1.5e-3),  # restarts mid-fit
    ],
)
def test_the_module_s_scheduler_drives_the_seed_groups_too(schedule, seed_lr) -> None:
    from sklearn.datasets import load_digits

    class Scheduled(DigitsMLP):
        def configure_optimizers(self) -> Any:
            optimizer = torch.optim.Adam(self.parameters(), lr=3e-3)
            return {"optimizer": optimizer, "lr_scheduler": schedule(optimizer)}

    torch.manual_seed(0)
    digits = load_digits()
    x, y = torch.tensor(digits.data[:900] / 16.0, dtype=torch.float32), torch.tensor(digits.target[:900])
    train, val = DataLoader(TensorDataset(x[:600], y[:600]), batch_size=50), DataLoader(TensorDataset(x[600:], y[600:]))
    callback = EsperCallback(slots={"s1": "net.1", "s2": "net.3"}, seed_lr=seed_lr)
    trainer = pl.Trainer(
        max_epochs=EPOCHS, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
    )  # fmt: skip
    trainer.fit(Scheduled(), train, val)
    groups = trainer.optimizers[0].param_groups
    assert len(groups) == 1 + len(callback._groups) > 1, "no seed joined the optimizer"
    ratio = 1.0 if seed_lr is None else seed_lr / 3e-3
    host_lr = groups[0]["lr"]
    assert host_lr != 3e-3  # the schedule moved it
    assert [g["lr"] for g in groups[1:]] == pytest.approx([ratio * host_lr] * (len(groups) - 1))


def test_a_scheduled_fit_resumes_with_its_seed_groups_on_the_schedule(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    class Scheduled(DigitsMLP):
        def configure_optimizers(self) -> Any:
            optimizer = torch.optim.Adam(self.parameters(), lr=3e-3)
            return {
                "optimizer": optimizer,
                "lr_scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 0.8**e),
            }

    torch.manual_seed(1)
    digits = load_digits()
    x, y = torch.tensor(digits.data[:600] / 16.0, dtype=torch.float32), torch.tensor(digits.target[:600])
    train, val = DataLoader(TensorDataset(x[:500], y[:500]), batch_size=50), DataLoader(TensorDataset(x[500:], y[500:]))

    def trainer(epochs: int, callback: EsperCallback) -> pl.Trainer:
        return pl.Trainer(
            max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
        )  # fmt: skip

    before = trainer(4, EsperCallback(slots={"s1": "net.1", "s2": "net.3"}))
    before.fit(Scheduled(), train, val)
    assert len(before.optimizers[0].param_groups) > 1, "no seed joined before the checkpoint"
    before.save_checkpoint(tmp_path / "esper.ckpt")
    after = trainer(8, EsperCallback(slots={"s1": "net.1", "s2": "net.3"}))
    after.fit(Scheduled(), train, val, ckpt_path=tmp_path / "esper.ckpt")
    lrs = [g["lr"] for g in after.optimizers[0].param_groups]
    assert len(lrs) > 1 and lrs == pytest.approx([3e-3 * 0.8**8] * len(lrs))
