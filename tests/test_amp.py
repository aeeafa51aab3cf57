"""Mixed precision (TrainConfig.amp) on the CPU: the config's check, the CPU's refusal, the float32 path unchanged,
the float32 islands under autocast, and fp16's loss scaler through a resume.

CPU autocast stands in for CUDA's where a test needs autocast on: it lowers convolutions and matrix products as
CUDA's does. Two training steps with amp on a GPU are in tests/test_devices.py (skipped without CUDA).
"""

from __future__ import annotations

import copy

import pytest
import torch

import searchmorph_lite as sm
import searchmorph_lite.train as train_module
from searchmorph_lite import read_checkpoint
from searchmorph_lite.cli import main
from searchmorph_lite.losses import registration_loss
from searchmorph_lite.train import TrainConfig, registration_loss_all, restore_run, train, training_step

TINY = dict(
    dataset="brain2d",
    dataset_options={"num_pairs": 4, "image_size": [32, 32]},
    model="SearchMorph",
    model_config={"radius": 2, "iterations": 2, "widths": [8, 16, 16, 16], "hidden_dim": 16, "motion_dim": 16},
    epochs=1,
    batch_size=2,
    val_pairs=0,
)

MODELS = {
    "on-the-fly search": lambda: sm.SearchMorph(sm.SearchMorphConfig(radius=2, iterations=2)),
    "all-pairs volume": lambda: sm.SearchMorph(sm.SearchMorphConfig(radius=2, iterations=2, all_pairs=True)),
    "w/o search": lambda: sm.SearchMorph(sm.SearchMorphConfig(radius=2, iterations=2, use_search=False)),
    "diffeomorphic": lambda: sm.SearchMorph(sm.SearchMorphConfig(radius=2, iterations=2, diffeomorphic=True)),
    "VoxelMorph": lambda: sm.VoxelMorph(sm.VoxelMorphConfig()),
}


def pair(batch: int = 2, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(batch, 1, size, size, generator=g), torch.rand(batch, 1, size, size, generator=g)


def test_amp_is_off_bf16_or_fp16():
    assert TrainConfig().amp == "off"
    assert TrainConfig(amp="bf16").amp == "bf16" and TrainConfig(amp="fp16").amp == "fp16"
    for bad in ("fp32", "BF16", "on"):
        with pytest.raises(ValueError, match="TrainConfig.amp must be one of"):
            TrainConfig(amp=bad)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_on_a_cpu_is_refused_in_one_line_before_any_work(amp, tmp_path):
    with pytest.raises(ValueError) as err:
        train(TrainConfig(**TINY, amp=amp), tmp_path / "run", device="cpu", progress=False)
    assert "CUDA only" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


def test_cli_amp_overrides_the_config_and_a_cpu_refuses_it(tmp_path, capsys):
    import yaml

    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(TINY))
    code = main(["train", "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "r"), "--device", "cpu",
                 "--amp", "bf16"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "CUDA only" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("grad_clip", [0.0, 0.5])
def test_a_training_step_with_amp_off_is_plain_float32_adam(grad_clip):
    """amp off: no autocast, the scaler a pass-through; the step equals forward, loss, backward, clip, Adam."""
    cfg = TrainConfig(**TINY, grad_clip=grad_clip)
    torch.manual_seed(0)
    run = restore_run(cfg, None, None, {}, torch.device("cpu"), 1)
    model = copy.deepcopy(run.model)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    moving, fixed = pair()
    autocast_seen = []
    run.model.register_forward_pre_hook(lambda *_: autocast_seen.append(torch.is_autocast_enabled("cpu")))
    for _ in range(2):
        loss = training_step(run.model, run, moving, fixed, cfg)
        expected = registration_loss_all(model(moving, fixed), moving, fixed, cfg)
        optimizer.zero_grad()
        expected.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        assert torch.equal(loss, expected.detach())
    assert autocast_seen == [False, False] and not run.scaler.is_enabled()
    for (name, p), q in zip(run.model.named_parameters(), model.parameters()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_under_autocast_the_field_the_search_and_the_loss_stay_float32(kind, dtype):
    torch.manual_seed(0)
    model = MODELS[kind]().train()
    moving, fixed = pair()
    search_maps = []
    if isinstance(model, sm.SearchMorph):
        model.iterator.register_forward_pre_hook(lambda _, args: search_maps.append(args[1].dtype))
    with torch.autocast("cpu", dtype=dtype):
        out = model(moving, fixed)
        cfg = TrainConfig(model="VoxelMorph" if kind == "VoxelMorph" else "SearchMorph", fold_weight=1.0)
        loss = registration_loss_all(out, moving, fixed, cfg)
        assert torch.is_autocast_enabled("cpu")  # the float32 regions inside did not leave autocast off
    assert out.flow.dtype == out.warped.dtype == loss.dtype == torch.float32
    assert all(f.dtype == torch.float32 for f in out.flows) and set(search_maps) <= {torch.float32}
    # the loss under autocast is the float32 loss of the same field, to the bit (no part of it was lowered)
    assert torch.equal(loss, registration_loss_all(out, moving, fixed, cfg))
    # and a lowered loss is not: local NCC's box sums in reduced precision move it (the test can fail)
    with torch.autocast("cpu", dtype=dtype):
        lowered = sm.losses.lncc_loss(out.warped.to(dtype), fixed.to(dtype))
    assert not torch.equal(lowered.float(), registration_loss(out.warped, fixed, out.flow, alpha=0.0))


def test_fp16_keeps_its_loss_scale_through_a_resume(tmp_path, monkeypatch):
    """fp16's scaler state is in the checkpoint and a resume starts from it (CPU autocast, the CUDA check lifted)."""
    monkeypatch.setattr(train_module, "check_amp", lambda amp, device: None)
    restored = []

    def recording_restore(*args, **kwargs):
        run = restore_run(*args, **kwargs)
        restored.append(run.scaler.state_dict())
        return run

    monkeypatch.setattr(train_module, "restore_run", recording_restore)
    cfg = TrainConfig(**{**TINY, "amp": "fp16"})
    history = train(cfg, tmp_path, device="cpu", progress=False, max_steps=2)
    saved = read_checkpoint(tmp_path / "checkpoint.pt")["scaler"]
    assert saved["scale"] > 0 and history["loss"][0] == history["loss"][0]  # a number, not NaN
    train(TrainConfig(**{**TINY, "amp": "fp16", "epochs": 2}), tmp_path, resume=True, device="cpu", progress=False,
          max_steps=1)  # fmt: skip
    assert restored[0]["_growth_tracker"] == 0 and restored[1] == saved
    assert saved["_growth_tracker"] > 0 or saved["scale"] < restored[0]["scale"]  # the first run stepped it


def test_a_float32_checkpoint_has_no_scaler(tmp_path):
    train(TrainConfig(**TINY), tmp_path, device="cpu", progress=False, max_steps=1)
    assert "scaler" not in read_checkpoint(tmp_path / "checkpoint.pt")
