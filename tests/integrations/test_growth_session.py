"""GrowthSession's step in a loop it does not own: isolated seeds get their own gradient, joint ones the loop's."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from esper.integrations.growth import GrowthSession
from esper.kasmina import KasminaConfig
from esper.leyline import SeedStage


def _session(isolate: bool) -> tuple[GrowthSession, nn.Module]:
    """A session whose slot holds a TRAINING seed that is not the identity, and a copy of the bare host."""
    torch.manual_seed(0)
    host = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    bare = copy.deepcopy(host)  # before wrapping: a copy made later would carry the slot's hook
    session = GrowthSession(host, {"s1": "1"}, policy="none", kasmina=KasminaConfig(isolate_seeds=isolate))
    session.probe(torch.randn(4, 8))
    model = session.model
    model.germinate("s1", "mlp", epoch=0, reason="test")
    with torch.no_grad():
        for p in model.seed_parameters("s1"):
            p.add_(0.3 * torch.randn_like(p))  # no longer the identity
    model.advance("s1", epoch=0, reason="test")
    assert model.slot("s1").stage is SeedStage.TRAINING
    return session, bare


def _loop_step(session: GrowthSession, x: torch.Tensor, y: torch.Tensor) -> int:
    """What the user's loop does: forward, loss, backward; then the session's step. Returns the forwards
    the session's step ran of its own."""
    session.model.zero_grad(set_to_none=True)
    session.watch()
    F.cross_entropy(session.model(x), y).backward()
    forwards = []
    handle = session.model.host.register_forward_hook(lambda *_: forwards.append(1))
    session.train_batch((x, y))
    handle.remove()
    return len(forwards)


@pytest.mark.parametrize("isolate", [True, False], ids=["isolated", "joint"])
def test_a_training_seed_learns_and_the_host_learns_through_it_only_when_joint(isolate: bool) -> None:
    session, bare = _session(isolate)
    model = session.model
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    F.cross_entropy(bare(x), y).backward()  # the host alone, no seed
    assert _loop_step(session, x, y) == (1 if isolate else 0), "an isolated seed's extra pass; none for a joint one"
    host_grad = model.host[0].weight.grad
    assert torch.equal(host_grad, bare[0].weight.grad) is isolate, "only a joint seed's gradient reaches the host"
    seed = [p.grad for p in model.seed_parameters("s1")]
    assert all(g is not None for g in seed) and sum(float(g.norm()) for g in seed) > 0
    assert session._seed_norms["s1"] and session._seed_norms["s1"][0] > 0
    assert session._violations == 0
    if not isolate:
        # the loop's own backward taught the joint seed: the session's step left those gradients as they were
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        assert all(torch.equal(a, b) for a, b in zip(seed, [p.grad for p in model.seed_parameters("s1")], strict=True))


@pytest.mark.parametrize("worse", ["host", "mark"])
def test_culling_a_joint_seed_keeps_whichever_host_does_better_on_the_validation_batches(worse: str) -> None:
    from esper.integrations.growth import Changes
    from esper.leyline import AdaptationCommand, CommandAction

    session, _ = _session(isolate=False)
    model = session.model
    with torch.no_grad():  # one of the two hosts made plainly worse: the cull must keep the other
        damaged = model.host.parameters() if worse == "host" else model.host_marks["s1"].values()
        for t in damaged:
            t.add_(3.0 * torch.randn_like(t))
    expected = copy.deepcopy(model.host_marks["s1"] if worse == "host" else model.host.state_dict())
    torch.manual_seed(1)
    batches = [(torch.randn(64, 8), torch.randint(0, 3, (64,)))]
    cull = AdaptationCommand(command_id="c", action=CommandAction.CULL, slot_id="s1")
    session._apply(cull, Changes(), batches)
    assert model.slot("s1").stage is SeedStage.CULLED and "s1" not in model.host_marks
    reason = model.events[-1].reason
    assert ("host restored" if worse == "host" else "host kept as it is") in reason, reason
    assert all(torch.equal(v, expected[k]) for k, v in model.host.state_dict().items())
