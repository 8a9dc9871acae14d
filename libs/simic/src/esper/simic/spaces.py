"""What the Simic environment observes: a :class:`GraphObservation`, or per slot a :class:`SlotQuestion`
(the question and the slots already acted on at this boundary); the Gymnasium space of either, and the
legal actions of a repeated question."""

from __future__ import annotations

from typing import Any, NamedTuple

import gymnasium as gym

from esper.tamiyo.gnn.observation import GraphObservation, LegalActions, legal_actions


class SlotQuestion(NamedTuple):
    """A per-slot environment's observation: the question and the slots already acted on at this boundary.

    ``observation`` is what :class:`~esper.tamiyo.gnn.policy.GNNTamiyo` builds when asked: on a repeated
    question its signals are the decide step's view (each slot in ``exclude`` at the stage its command
    leads to, a germination's parameters added). ``exclude`` names slots (``slot_id``) the answer must
    leave alone, as the deployed policy's ``exclude``.
    """

    observation: GraphObservation
    exclude: frozenset[str] = frozenset()


def legal_for(obs: GraphObservation, exclude: frozenset[str], *, max_active_seeds: int = 3) -> LegalActions:
    """:func:`legal_actions` with the slots in ``exclude`` allowing nothing (a repeated question's mask)."""
    legal = legal_actions(obs, max_active_seeds=max_active_seeds)
    if not exclude:
        return legal
    rows = [
        [False] * len(row) if slot.slot_id in exclude else row
        for slot, row in zip(obs.graph.slots, legal.slot_ops, strict=True)
    ]
    return LegalActions(slot_ops=rows, options=legal.options)


class GraphObservationSpace(gym.Space[GraphObservation]):
    """Observations are :class:`GraphObservation` values, or per slot :class:`SlotQuestion` values
    (vector envs batch them as tuples)."""

    def __init__(self, per_slot: bool = False) -> None:
        super().__init__(shape=None, dtype=None)
        self.per_slot = per_slot

    def contains(self, x: Any) -> bool:
        if self.per_slot:
            return isinstance(x, SlotQuestion) and isinstance(x.observation, GraphObservation)
        return isinstance(x, GraphObservation)

    def sample(self, mask: Any = None, probability: Any = None) -> GraphObservation:
        raise NotImplementedError("graph observations come from training runs, they cannot be sampled")

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GraphObservationSpace) and other.per_slot == self.per_slot

    def __hash__(self) -> int:
        return hash((GraphObservationSpace, self.per_slot))
