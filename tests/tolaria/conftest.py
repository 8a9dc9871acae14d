import pytest

from esper.kasmina import GateThresholds, KasminaConfig
from esper.tamiyo.heuristic import BlueprintChoice, HeuristicConfig, HeuristicTamiyo
from esper.tolaria.tasks import Task, load_task
from esper.tolaria.trainer import Trainer, TrainerConfig

FAST_KASMINA = KasminaConfig(
    thresholds=GateThresholds(min_training_epochs=1, min_shadowing_epochs=1, min_probation_epochs=1),
    blend_epochs=2,
    embargo_epochs=1,
    isolate_seeds=True,  # the machinery of isolated seeds; tests of joint ones (the default) replace it
)


@pytest.fixture(scope="session")
def small_task() -> Task:
    """MNIST-1D with 400 training rows: real data, a few hundred ms an epoch."""
    return load_task("mnist1d", max_train_samples=400)


def eager_heuristic() -> HeuristicTamiyo:
    """A heuristic that germinates at once, so short runs exercise the whole lifecycle."""
    return HeuristicTamiyo(
        HeuristicConfig(
            plateau_patience=0,
            candidates=(BlueprintChoice("conv_light"),),
            cull_patience=3,
            thresholds=FAST_KASMINA.thresholds,
        )
    )


def make_trainer(task: Task, *, epochs: int = 4, seed: int = 0, policy=None, **config) -> Trainer:
    cfg = TrainerConfig(epochs=epochs, seed=seed, **config)
    return Trainer(task, policy or eager_heuristic(), cfg, kasmina=FAST_KASMINA)


def comparable(trainer: Trainer) -> dict:
    """Everything a run produced except wall-clock times."""
    history = [{k: v for k, v in vars_(r).items() if k != "epoch_seconds"} for r in trainer.history]
    return {
        "history": history,
        "decisions": [d.to_dict() for d in trainer.decisions],
        "events": [e.to_dict() for e in trainer.model.events],
        "params": trainer.model.param_count(),
        "weights": {k: v.clone() for k, v in trainer.model.state_dict().items()},
    }


def vars_(record) -> dict:
    from dataclasses import asdict

    return asdict(record)
