"""Diffeomorphic SearchMorph: exp(v) by scaling and squaring, and the model that integrates its velocity."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from searchmorph_lite import (
    SearchMorph,
    SearchMorphConfig,
    folding_ratio,
    integrate_velocity,
    load_checkpoint,
    warp,
)

DATA = Path(__file__).parent / "data"
TINY = dict(widths=(4, 8, 8), feature_dim=4, context_dim=8, hidden_dim=8, motion_dim=8, levels=2, radius=1,
            iterations=2)  # fmt: skip


def _smooth_field(shape, max_px, seed, grid=4):
    """Random smooth field (1, ndim, *shape): a coarse random grid, upsampled, scaled to max |v| = max_px."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, len(shape), *([grid] * len(shape)), generator=g, dtype=torch.float64)
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    v = F.interpolate(coarse, size=shape, mode=mode, align_corners=True)
    return v * (max_px / v.abs().max())


def test_exp_of_zero_is_the_identity():
    v = torch.zeros(2, 2, 16, 16)
    assert torch.equal(integrate_velocity(v, 7), v)


@pytest.mark.parametrize("ndim", [2, 3])
def test_exp_of_a_constant_field_is_that_translation(ndim):
    shape = (16,) * ndim
    t = torch.tensor([1.5, -2.25, 0.75][:ndim], dtype=torch.float64)
    v = t.view(1, ndim, *([1] * ndim)).expand(1, ndim, *shape).contiguous()
    u = integrate_velocity(v, 7)
    inside = (slice(None), slice(None)) + (slice(4, -4),) * ndim
    assert (u[inside] - v[inside]).abs().max() < 1e-5


def test_exp_v_composed_with_exp_minus_v_is_close_to_the_identity():
    v = _smooth_field((64, 64), 3.0, seed=0)
    a, b = integrate_velocity(v, 7), integrate_velocity(-v, 7)
    residual = a + warp(b, a, padding_mode="border")  # x -> x + a(x) -> ... + b(x + a(x)) should be x
    # Tolerance: the integration and bilinear sampling errors of a smooth 3 px field stay well below 0.05 px.
    assert residual[..., 8:-8, 8:-8].abs().mean() < 0.05
    assert a.abs().max() > 1.0  # not trivially small


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("max_px", [2.0, 8.0])
def test_exp_of_a_smooth_velocity_does_not_fold(seed, max_px):
    v = _smooth_field((64, 64), max_px, seed=seed, grid=8)
    if max_px == 8.0:  # sanity: read as a displacement, the velocity itself folds; its exponential must not
        assert folding_ratio(v.float()).item() > 0
    assert folding_ratio(integrate_velocity(v.float(), 7)).item() == 0.0


def test_integration_steps_must_be_a_non_negative_integer():
    with pytest.raises(ValueError):
        integrate_velocity(torch.zeros(1, 2, 8, 8), -1)
    with pytest.raises(ValueError):
        SearchMorphConfig(integration_steps=-1)


@pytest.mark.parametrize("ndim", [2, 3])
def test_diffeomorphic_model_shapes_and_gradients(ndim):
    torch.manual_seed(0)
    model = SearchMorph(SearchMorphConfig(ndim=ndim, diffeomorphic=True, **TINY))
    size = (16,) * ndim
    moving, fixed = torch.rand(2, 1, *size), torch.rand(2, 1, *size)
    out = model(moving, fixed)
    assert out.flow.shape == out.velocity.shape == (2, ndim, *size)
    assert out.warped.shape == moving.shape and len(out.flows) == 2
    assert torch.allclose(out.flows[-1], integrate_velocity(out.velocity, 7))
    out.flow.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    lean = model(moving, fixed, keep_flows=False)
    assert torch.allclose(lean.flow, out.flow, atol=1e-6) and len(lean.flows) == 1


def test_default_model_has_no_velocity_and_old_checkpoints_keep_their_field():
    model = load_checkpoint(DATA / "searchmorph_v0_1_tiny.pt", device="cpu")
    assert model.config.diffeomorphic is False and model.config.integration_steps == 7
    expected = torch.load(DATA / "searchmorph_v0_1_tiny_expected.pt", weights_only=True)
    with torch.no_grad():
        out = model(expected["moving"], expected["fixed"])
    assert out.velocity is None
    # stored by the 0.1 code: the default path is unchanged (up to the order of float sums, which the number of
    # threads changes)
    torch.testing.assert_close(out.flow, expected["flow"], rtol=0, atol=1e-3)


def test_a_diffeomorphic_checkpoint_round_trips(tmp_path):
    from searchmorph_lite import save_checkpoint

    torch.manual_seed(0)
    model = SearchMorph(SearchMorphConfig(diffeomorphic=True, integration_steps=5, **TINY)).eval()
    save_checkpoint(tmp_path / "d.pt", model)
    again = load_checkpoint(tmp_path / "d.pt", device="cpu")
    assert again.config.diffeomorphic and again.config.integration_steps == 5
    x, y = torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(again(x, y).flow, model(x, y).flow)
