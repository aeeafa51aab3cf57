"""The library on every device present: the CPU always, CUDA where torch sees a GPU (the test ids say which).

On each device: SearchMorph's and VoxelMorph's forward pass and gradients agree with the CPU's to a tolerance,
two training steps (`train`, max_steps=2, the device's budget clock) lower nothing to NaN and move the weights
(and on CUDA with mixed precision, TrainConfig.amp bf16 and fp16, their loss stays near float32's), and
`register` on numpy arrays gives the CPU's field. On the CPU the comparisons are with itself (they still run
the code path); on a GPU they are the real check (`bash .ci/gpu_check.sh` runs this file there).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import searchmorph_lite as sm
from searchmorph_lite.train import TrainConfig, registration_loss_all, seed_everything, train

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# float32 on a GPU (TF32 off below) against the CPU: sums in another order, so ~1e-5 relative per op
ATOL, RTOL = 1e-4, 1e-3

MODELS = {
    "SearchMorph": lambda: sm.SearchMorph(sm.SearchMorphConfig(radius=2, iterations=2)),
    "VoxelMorph": lambda: sm.VoxelMorph(sm.VoxelMorphConfig()),
}


@pytest.fixture(autouse=True)
def _no_tf32():
    """TF32 matmuls (the default on some GPUs for convolutions) are 1e-3 relative: off for the comparison."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def pair(size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth moving/fixed pair (1, 1, size, size): a blob and the same blob shifted."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")
    c = size / 2 + torch.rand(2, generator=g)
    blob = torch.exp(-((yy - c[0]) ** 2 + (xx - c[1]) ** 2) / (2 * (size / 6) ** 2))
    moved = torch.exp(-((yy - c[0] - 2) ** 2 + (xx - c[1] + 1.5) ** 2) / (2 * (size / 6) ** 2))
    return moved[None, None], blob[None, None]


def forward_backward(kind: str, device: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(flow, {parameter name: gradient}) of one eq.-9 forward and backward pass, on the CPU."""
    torch.manual_seed(0)
    model = MODELS[kind]().to(device).train()
    moving, fixed = (t.to(device) for t in pair())
    out = model(moving, fixed)
    loss = registration_loss_all(out, moving, fixed, TrainConfig(model=kind))
    loss.backward()
    grads = {n: p.grad.detach().cpu() for n, p in model.named_parameters() if p.grad is not None}
    return out.flow.detach().cpu(), grads


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_forward_and_backward_agree_with_the_cpu(kind, device):
    flow_cpu, grads_cpu = forward_backward(kind, "cpu")
    flow_dev, grads_dev = forward_backward(kind, device)
    assert flow_cpu.abs().max() > 0, "an all-zero field would agree trivially"
    torch.testing.assert_close(flow_dev, flow_cpu, atol=ATOL, rtol=RTOL)
    assert grads_dev.keys() == grads_cpu.keys() and len(grads_cpu) > 0
    for name in grads_cpu:
        scale = grads_cpu[name].abs().max().item() + 1e-12
        torch.testing.assert_close(grads_dev[name] / scale, grads_cpu[name] / scale, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("device", DEVICES)
def test_two_training_steps_move_the_weights(device, tmp_path):
    cfg = TrainConfig(
        dataset="brain2d",
        dataset_options={"num_pairs": 4, "image_size": (32, 32)},
        model="SearchMorph",
        model_config={"radius": 2, "iterations": 2},
        epochs=1,
        batch_size=2,
        val_pairs=0,
        seed=0,
    )
    seed_everything(cfg.seed)  # as train() does before it builds the model: the same initial weights
    before = dict(sm.SearchMorph(sm.SearchMorphConfig(**cfg.model_config)).named_parameters())
    history = train(cfg, tmp_path / "run", device=torch.device(device), progress=False, max_steps=2)
    assert all(np.isfinite(history["loss"]))
    after = dict(sm.load_checkpoint(tmp_path / "run" / "checkpoint.pt", device="cpu").named_parameters())
    steps = {k: (after[k] - before[k].detach()).abs().max().item() for k in before}
    assert max(steps.values()) > 0, "two Adam steps changed no weight"
    # Adam moves a weight by at most about lr per step: 2 steps of 1e-3 (a larger change: other initial weights)
    assert max(steps.values()) <= 2 * cfg.lr * 1.01, f"a weight moved {max(steps.values()):.2e} in 2 steps"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_two_training_steps_with_mixed_precision(kind, amp, device, tmp_path):
    """TrainConfig.amp on a GPU: finite losses near float32's, weights moved and still float32, fp16's scaler kept."""
    if device != "cuda":
        pytest.skip("mixed precision runs on CUDA only; the CPU refuses it (tests/test_amp.py)")
    losses = {}
    for mode in ("off", amp):
        cfg = TrainConfig(
            dataset="brain2d",
            dataset_options={"num_pairs": 4, "image_size": (64, 64)},
            model=kind,
            model_config={"radius": 2, "iterations": 2} if kind == "SearchMorph" else {},
            epochs=1,
            batch_size=2,
            val_pairs=0,
            amp=mode,
        )
        losses[mode] = train(cfg, tmp_path / mode, device=torch.device(device), progress=False, max_steps=2)["loss"][0]
        ckpt = sm.read_checkpoint(tmp_path / mode / "checkpoint.pt")
        assert ("scaler" in ckpt) == (mode == "fp16")
    # the same two batches from the same weights: reduced precision moves the loss by far less than 5 %
    assert np.isfinite(losses[amp]) and losses[amp] == pytest.approx(losses["off"], rel=0.05)
    seed_everything(cfg.seed)  # as train() does before it builds the model: the same initial weights
    start = sm.build_model(kind, cfg.model_config).state_dict()
    after = ckpt["state_dict"]
    assert max((after[k].float() - start[k].float()).abs().max().item() for k in start) > 0, "no weight moved"
    assert all(after[k].dtype == start[k].dtype for k in start), "the weights must stay float32"


@pytest.mark.parametrize("device", DEVICES)
def test_register_on_arrays_matches_the_cpu(device):
    torch.manual_seed(0)
    model = sm.SearchMorph(sm.SearchMorphConfig(radius=2, iterations=2)).eval()
    moving, fixed = (t[0, 0].numpy() for t in pair(40))  # not a multiple of the model's size: padded inside
    warped_cpu, flow_cpu = sm.register(moving, fixed, model)
    warped_dev, flow_dev = sm.register(moving, fixed, model.to(device))
    assert isinstance(flow_dev, np.ndarray) and flow_dev.shape == (2, 40, 40) and warped_dev.shape == (40, 40)
    np.testing.assert_allclose(flow_dev, flow_cpu, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(warped_dev, warped_cpu, atol=ATOL, rtol=RTOL)
