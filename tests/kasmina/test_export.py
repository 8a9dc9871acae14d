"""Export: a plain module with fossilized seeds merged in, same outputs, torch.export-able, Esper-free."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from esper.kasmina import ConvHost1D, MLPHost, export, wrap
from esper.leyline import SeedStage

# Run in a fresh interpreter where importing anything named esper fails.
_NO_ESPER = textwrap.dedent(
    """
    import sys
    class _BlockEsper:
        def find_spec(self, name, path=None, target=None):
            if name == "esper" or name.startswith("esper."):
                raise ModuleNotFoundError(f"esper is blocked in this process: {name}")
            return None
    sys.meta_path.insert(0, _BlockEsper())
    import torch
    x = torch.load(sys.argv[1])
    module = torch.load(sys.argv[2], weights_only=False)
    program = torch.export.load(sys.argv[3])
    torch.save({"pickled": module(x), "program": program.module()(x)}, sys.argv[4])
    assert not any(name.startswith("esper") for name in sys.modules), sorted(sys.modules)
    """
)


def _esper_classes(module: nn.Module) -> list[str]:
    return [type(m).__module__ for m in module.modules() if type(m).__module__.startswith("esper")]


@pytest.fixture
def grown(conv_model, drive_to):
    """ConvHost1D with s1 fossilized (conv_heavy), s2 blending at 0.4 (se_attention), s3 culled."""
    drive_to(conv_model, "s1", SeedStage.FOSSILIZED, blueprint="conv_heavy")
    drive_to(conv_model, "s2", SeedStage.BLENDING, blueprint="se_attention")
    conv_model.set_alpha("s2", 0.4, epoch=3, reason="test")
    conv_model.germinate("s3", "depthwise", epoch=3, reason="test")
    conv_model.cull("s3", epoch=3, reason="test")
    return conv_model.eval()


def test_export_gives_the_same_outputs_without_esper_classes(grown) -> None:
    x = torch.randn(9, 40)
    exported = export(grown, example_inputs=(x,))
    assert _esper_classes(exported) == []
    assert torch.allclose(exported(x), grown(x), atol=1e-5)
    assert sum(p.numel() for p in exported.parameters()) == (
        858 + grown.slot("s1").seed_param_count() + grown.slot("s2").seed_param_count()
    )
    assert grown.slot("s1").hooked and grown.slot("s2").hooked, "export leaves the model untouched"


def test_export_removes_dormant_training_and_culled_slots(conv_model, drive_to) -> None:
    drive_to(conv_model, "s2", SeedStage.TRAINING)
    conv_model.germinate("s3", "conv_light", epoch=0, reason="test")
    conv_model.cull("s3", epoch=0, reason="test")
    exported = export(conv_model)
    x = torch.randn(4, 40)
    assert torch.equal(exported(x), conv_model(x))
    assert sum(p.numel() for p in exported.parameters()) == 858


def test_export_keeps_a_joint_training_seed_at_full_weight(conv_model, drive_to) -> None:
    joint = wrap(
        copy.deepcopy(conv_model.host), ConvHost1D.DEFAULT_SLOTS, config=replace(conv_model.config, isolate_seeds=False)
    )
    joint.probe(torch.randn(2, 40))
    drive_to(joint, "s2", SeedStage.TRAINING)  # perturbed: no longer the identity
    exported = export(joint)
    x = torch.randn(4, 40)
    assert torch.equal(exported(x), joint(x)) and not torch.equal(exported(x), conv_model(x))
    assert sum(p.numel() for p in exported.parameters()) == joint.param_count() > 858


@pytest.mark.slow  # starts a second interpreter that imports torch
def test_export_passes_torch_export_and_runs_where_esper_cannot_be_imported(grown, tmp_path: Path) -> None:
    x = torch.randn(6, 40)
    exported = export(grown)
    program = torch.export.export(exported, (x,))
    assert torch.allclose(program.module()(x), grown(x), atol=1e-5)
    paths = [tmp_path / name for name in ("x.pt", "module.pt", "program.pt2", "out.pt")]
    torch.save(x, paths[0])
    torch.save(exported, paths[1])
    torch.export.save(program, paths[2])
    script = tmp_path / "run.py"
    script.write_text(_NO_ESPER)
    done = subprocess.run(
        [sys.executable, str(script), *map(str, paths)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = torch.load(paths[3])
    assert torch.allclose(out["pickled"], grown(x), atol=1e-5)
    assert torch.allclose(out["program"], grown(x), atol=1e-5)


def test_export_of_a_user_host_keeps_its_class(drive_to, fast_config) -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(5, 8)
            self.act = nn.Tanh()
            self.out = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.act(self.fc(x)))

    model = wrap(Net(), {"s": "act"}, config=fast_config)
    model.probe(torch.randn(2, 5))
    drive_to(model, "s", SeedStage.FOSSILIZED, blueprint="mlp")
    x = torch.randn(3, 5)
    exported = export(model, example_inputs=(x,))
    assert type(exported) is Net and isinstance(exported.act, nn.Sequential)
    assert _esper_classes(exported) == []
    torch.export.export(exported, (x,))


def test_export_of_a_transformer_layer_in_train_mode(drive_to, fast_config) -> None:
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True)
    model = wrap(layer, {"s": "linear2"}, config=fast_config)
    x = torch.randn(2, 7, 16)
    model.probe(x)
    drive_to(model, "s", SeedStage.FOSSILIZED, blueprint="lowrank")
    exported = export(model, example_inputs=(x,))
    assert torch.allclose(exported(x), model(x), atol=1e-5)
    assert torch.allclose(torch.export.export(exported, (x,)).module()(x), model(x), atol=1e-5)


def test_export_checks_example_inputs_and_refuses_a_host_whose_fast_path_skips_the_seed(drive_to, fast_config):
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True)
    model = wrap(layer, {"s": "dropout1"}, config=fast_config)
    x = torch.randn(2, 7, 16)
    model.probe(x)
    drive_to(model, "s", SeedStage.FOSSILIZED, blueprint="mlp")
    model.eval()
    with torch.no_grad(), pytest.raises(ValueError, match="differs from the model on example_inputs"):
        export(model, example_inputs=(x,))


def test_export_of_mlp_host_traces_it(drive_to, fast_config) -> None:
    host = MLPHost(10, 12, 3)
    model = wrap(host, host.default_slots, config=fast_config)
    model.probe(torch.randn(2, 10))
    drive_to(model, "s2", SeedStage.FOSSILIZED, blueprint="lowrank")
    x = torch.randn(4, 10)
    exported = export(model, example_inputs=(x,))
    assert isinstance(exported, torch.fx.GraphModule) and _esper_classes(exported) == []


def test_export_needs_a_morphogenetic_model() -> None:
    with pytest.raises(TypeError, match="export needs a MorphogeneticModel, got ConvHost1D"):
        export(ConvHost1D())
