import pytest
import torch

from searchmorph_lite import SpatialTransformer, identity_grid, upsample_flow, warp
from searchmorph_lite.brute_force import warp_naive


def test_zero_flow_returns_input_exactly():
    img = torch.rand(2, 3, 11, 9)
    assert torch.equal(warp(img, torch.zeros(2, 2, 11, 9), exact=True), img)


@pytest.mark.parametrize("shift", [(0, 3), (2, 0), (-1, 2)])
def test_integer_shift_moves_content_on_each_axis(shift):
    img = torch.rand(1, 1, 12, 10)
    flow = torch.zeros(1, 2, 12, 10)
    flow[:, 0], flow[:, 1] = shift[0], shift[1]
    out = warp(img, flow)
    dy, dx = shift
    # out(p) = img(p + shift): compare on the region where p + shift stays inside
    ys = slice(max(0, -dy), 12 - max(0, dy))
    xs = slice(max(0, -dx), 10 - max(0, dx))
    expected = img[..., max(0, dy) : 12 + min(0, dy), max(0, dx) : 10 + min(0, dx)]
    assert torch.allclose(out[..., ys, xs], expected, atol=1e-6)


def test_shift_reads_zero_outside_the_image():
    img = torch.ones(1, 1, 5, 5)
    flow = torch.zeros(1, 2, 5, 5)
    flow[:, 1] = 10.0
    assert torch.all(warp(img, flow) == 0)


def test_warp_matches_naive_bilinear_with_different_flows_per_axis():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 2, 7, 6, generator=g, dtype=torch.float64)
    flow = torch.empty(2, 2, 7, 6, dtype=torch.float64)
    flow[:, 0] = torch.rand(2, 7, 6, generator=g, dtype=torch.float64) * 3 - 1.5
    flow[:, 1] = torch.rand(2, 7, 6, generator=g, dtype=torch.float64) * 5 - 2.5
    assert torch.allclose(warp(img, flow), warp_naive(img, flow), atol=1e-10)


def test_nearest_mode_keeps_label_values():
    labels = torch.randint(0, 4, (1, 1, 9, 9)).float()
    flow = torch.rand(1, 2, 9, 9) * 2 - 1
    out = warp(labels, flow, mode="nearest")
    assert set(out.unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}


def test_spatial_transformer_module_equals_warp_and_has_no_parameters():
    img, flow = torch.rand(1, 1, 8, 8), torch.randn(1, 2, 8, 8)
    st = SpatialTransformer()
    assert list(st.parameters()) == []
    assert torch.equal(st(img, flow), warp(img, flow))


def test_warp_3d_shift_along_depth():
    img = torch.rand(1, 1, 6, 5, 4)
    flow = torch.zeros(1, 3, 6, 5, 4)
    flow[:, 0] = 1.0
    out = warp(img, flow)
    assert torch.allclose(out[:, :, :-1], img[:, :, 1:], atol=1e-6)


def test_identity_grid_channels_are_row_and_column_indices():
    g = identity_grid((3, 4))
    assert torch.equal(g[0, :, 0], torch.arange(3.0))
    assert torch.equal(g[1, 0, :], torch.arange(4.0))


def test_upsample_flow_doubles_a_constant_field():
    flow = torch.zeros(1, 2, 4, 5)
    flow[:, 0], flow[:, 1] = 1.5, -2.0
    up = upsample_flow(flow, 2)
    assert up.shape == (1, 2, 8, 10)
    assert torch.allclose(up[:, 0], torch.full((1, 8, 10), 3.0))
    assert torch.allclose(up[:, 1], torch.full((1, 8, 10), -4.0))


def test_upsampled_linear_field_maps_points_consistently():
    # a coarse field u(i) = 0.5 * i (rows): coarse pixel i sits at fine 2i + 0.5, so the fine field should be
    # factor * 0.5 * (y - 0.5) / 2 at interior fine rows y
    coarse = torch.zeros(1, 2, 8, 6)
    coarse[:, 0] = 0.5 * torch.arange(8.0).view(8, 1)
    fine = upsample_flow(coarse, 2)
    y = torch.arange(16.0)
    expected = 2 * 0.5 * (y - 0.5) / 2
    assert torch.allclose(fine[0, 0, 1:-1, 3], expected[1:-1], atol=1e-5)


def test_upsample_flow_factor_one_is_identity():
    flow = torch.randn(1, 2, 4, 4)
    assert torch.equal(upsample_flow(flow, 1), flow)
