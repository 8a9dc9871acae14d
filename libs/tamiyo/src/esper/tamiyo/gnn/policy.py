"""The learned Tamiyo as a :class:`~esper.tamiyo.policy.Policy`: :class:`GNNTamiyo`.

It keeps what a decision needs across epochs of one run (the newest graph, the
validation loss and accuracy histories, the host's initial size) and asks
:class:`TamiyoNetwork` for the most likely legal action (greedy, so a run
reproduces). The decision's confidence is the probability the network gives
the chosen operation, shrunk by the value ensemble's disagreement:
``p_op / (1 + value_std)``, so the safety monitor's confidence floor rejects
operations the network is unsure of, or decided in states unlike its training
data. (Where among equally good slots or blueprints it grows is a preference,
not doubt about the decision: those probabilities are in the reason.)

Policy files (``torch.save``) hold the network's weights, sizes and running
statistics, and the policy settings (:meth:`GNNTamiyo.save`, :meth:`GNNTamiyo.load`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import msgspec
import torch

from esper.leyline import AdaptationDecision, DecisionAction, LayerHealth, ModelGraph, TrainingSignals
from esper.leyline.observation import HISTORY_LENGTH
from esper.tamiyo.gnn.features import exclude_slots
from esper.tamiyo.gnn.inference import LoopedEdges, decide_one
from esper.tamiyo.gnn.network import NetworkConfig, TamiyoNetwork
from esper.tamiyo.gnn.observation import OPERATIONS, GraphObservation
from esper.tamiyo.policy import decision_id, wait


@dataclass(frozen=True, slots=True)
class GNNPolicyConfig:
    """Run settings the policy decides under: planned epochs (for ``epoch_progress``) and the parameter budget.

    ``sample``: draw the action from the policy's distribution (as in training) instead of taking the
    most likely one, with a generator seeded by ``sample_seed`` and the epoch, so a run still reproduces.
    A policy trained with PPO expresses "grow about now" as a per-epoch probability; greedy decoding of
    a probability below one half never acts on it.
    """

    epochs_total: int = 40
    param_budget: int | None = None
    sample: bool = False
    sample_seed: int = 0
    per_slot: bool = True


class GNNTamiyo:
    """Decides with a trained :class:`TamiyoNetwork` (see the module docstring).

    With ``config.per_slot`` (the default) it is a slotwise policy
    (:class:`~esper.tamiyo.policy.SlotwisePolicy`): at one boundary the decide
    step asks it again about the slots it has not acted on, so seeds in
    different slots can start in the same epoch, as the heuristic's do (asked
    once per epoch, it needed three epochs to seed three slots). A repeated
    question folds nothing into the run's history and masks the slots already
    acted on.
    """

    name = "gnn"

    @property
    def slotwise(self) -> bool:
        return self.config.per_slot

    def __init__(self, network: TamiyoNetwork | None = None, config: GNNPolicyConfig | None = None) -> None:
        self.network = network or TamiyoNetwork()
        self.network.eval()
        self.config = config or GNNPolicyConfig()
        self._graph: ModelGraph | None = None
        self._losses: list[float] = []
        self._accuracies: list[float] = []
        self._params_initial: int | None = None
        self._edges: LoopedEdges | None = None  # the graph's self-looped edges, while its structure holds

    def observe(
        self, signals: TrainingSignals, graph: ModelGraph | None, health: LayerHealth | None
    ) -> GraphObservation | None:
        """Fold one epoch into the run's history; the observation to decide on (None without any graph)."""
        if graph is not None and (self._graph is None or graph.revision >= self._graph.revision):
            self._graph = graph
        if self._params_initial is None and self._graph is not None:
            self._params_initial = self._graph.params_total
        self._losses = [*self._losses, signals.val_loss][-HISTORY_LENGTH:]
        self._accuracies = [*self._accuracies, signals.val_accuracy][-HISTORY_LENGTH:]
        if self._graph is None:
            return None
        return self._observation(signals, health)

    def decide(
        self,
        signals: TrainingSignals,
        *,
        graph: ModelGraph | None = None,
        health: LayerHealth | None = None,
        exclude: frozenset[str] = frozenset(),
    ) -> AdaptationDecision:
        """The decision on the epoch ``signals`` ends; with ``exclude`` the same boundary asked again about
        the other slots (``signals`` already show the pending commands' stages)."""
        if exclude and self._graph is not None:
            obs = self._observation(signals, health)  # this epoch is already in the histories
        else:
            obs = self.observe(signals, graph, health)
        if obs is None:
            return wait(self.name, signals.epoch, "gnn: no model graph received yet", confidence=1.0)
        return self.decision_for(obs, exclude=exclude)

    def _observation(self, signals: TrainingSignals, health: LayerHealth | None) -> GraphObservation:
        assert self._graph is not None
        return GraphObservation(
            graph=self._graph,
            signals=signals,
            health=health,
            loss_history=tuple(self._losses),
            accuracy_history=tuple(self._accuracies),
            params_initial=self._params_initial or self._graph.params_total,
            epochs_total=self.config.epochs_total,
            param_budget=self.config.param_budget,
        )

    def decision_for(self, obs: GraphObservation, *, exclude: frozenset[str] = frozenset()) -> AdaptationDecision:
        """The decision on ``obs`` (greedy, or drawn with ``config.sample``), with its reason and confidence;
        slots in ``exclude`` are not acted on."""
        graph = exclude_slots(self.network.encode([obs])[0], obs, exclude)
        if self.config.sample:
            with torch.random.fork_rng(devices=[]), torch.inference_mode():
                torch.manual_seed(self.config.sample_seed * 100_003 + obs.signals.epoch + 7_919 * len(exclude))
                drawn = self.network.evaluate([graph])
            out = {
                "action": tuple(int(v) for v in drawn["action"][0]),
                **{k: float(drawn[k][0]) for k in ("p_op", "p_slot", "p_option", "value", "value_std")},
            }
        else:
            out, self._edges = decide_one(self.network, graph, self._edges)
        op, slot_number, option_number = out["action"]
        action = OPERATIONS[op]
        p = out["p_op"]
        value, spread = out["value"], out["value_std"]
        confidence = min(1.0, max(0.0, p / (1.0 + spread)))
        why = (
            f"p={p:.2f} (slot {out['p_slot']:.2f}, blueprint {out['p_option']:.2f}), value {value:+.3f} +- {spread:.3f}"
        )
        epoch = obs.signals.epoch
        if action is DecisionAction.WAIT:
            return wait(self.name, epoch, f"gnn: wait ({why})", confidence=confidence)
        slot = obs.graph.slots[slot_number]
        blueprint, config = None, {}
        target = f"slot {slot.slot_id}"
        if action is DecisionAction.GERMINATE:
            option = slot.options[option_number]
            blueprint, config = option.blueprint, dict(option.config)
            target += f" with {blueprint} (+{option.params} params)"
        return AdaptationDecision(
            decision_id=decision_id(self.name, epoch),
            epoch=epoch,
            action=action,
            reason=f"gnn: {action.value} {target} ({why})",
            confidence=confidence,
            slot_id=slot.slot_id,
            blueprint=blueprint,
            blueprint_config=config,
            policy=self.name,
        )

    # -- run state (JSON-able, for Tolaria's checkpoints) ----------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "losses": list(self._losses),
            "accuracies": list(self._accuracies),
            "params_initial": self._params_initial,
            "graph": None if self._graph is None else msgspec.to_builtins(self._graph),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._losses = [float(v) for v in state.get("losses", [])]
        self._accuracies = [float(v) for v in state.get("accuracies", [])]
        self._params_initial = state.get("params_initial")
        graph = state.get("graph")
        self._graph = None if graph is None else msgspec.convert(graph, ModelGraph)

    # -- policy files ----------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the network and the policy settings to ``path`` (a torch file)."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"kind": "esper.tamiyo.gnn", **self.network.checkpoint(), "policy": asdict(self.config)}, out)
        return out

    @classmethod
    def load(cls, path: str | Path, config: GNNPolicyConfig | None = None, *, field: str = "policy") -> GNNTamiyo:
        """A policy from a file :meth:`save` (or a Simic checkpoint) wrote; ``config`` overrides its settings.

        The file is read with ``weights_only`` (tensors and plain values, no pickled code). A missing,
        truncated or foreign file is a ValueError naming ``field`` and the path.
        """
        where = f"field {field!r}: {str(path)!r}"
        try:
            state = torch.load(Path(path), map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise ValueError(f"{where} does not exist") from None
        except Exception as exc:  # torch raises many kinds for a file that is not a torch file
            raise ValueError(f"{where} is not a readable policy file ({type(exc).__name__}: {exc})") from None
        if not isinstance(state, dict) or "network" not in state or "network_config" not in state:
            raise ValueError(f"{where} is not a GNN policy file (no network in it)")
        try:
            network = TamiyoNetwork.from_checkpoint(state)
            settings = config or GNNPolicyConfig(**state.get("policy", {}))
        except (TypeError, KeyError, RuntimeError) as exc:  # sizes or weights that do not fit this network
            raise ValueError(f"{where} does not fit this network ({type(exc).__name__}: {exc})") from None
        return cls(network, settings)


__all__ = ["GNNPolicyConfig", "GNNTamiyo", "NetworkConfig", "TamiyoNetwork"]
