import pytest
import torch

from searchmorph_lite import grad_l2_loss, lncc_loss, local_ncc, mse_loss, registration_loss
from searchmorph_lite.brute_force import local_ncc_naive


def test_mse_loss_value():
    a = torch.zeros(1, 1, 2, 2)
    b = torch.tensor([[[[1.0, 2.0], [0.0, 1.0]]]])
    assert mse_loss(a, b).item() == pytest.approx(6 / 4)


@pytest.mark.parametrize("window", [3, 5])
def test_local_ncc_matches_sliding_window(window):
    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 1, 9, 8, generator=g, dtype=torch.float64)
    b = 0.5 * a + 0.5 * torch.rand(2, 1, 9, 8, generator=g, dtype=torch.float64)
    assert torch.allclose(local_ncc(a, b, window), local_ncc_naive(a, b, window), atol=1e-9)


def test_local_ncc_is_per_channel():
    # the box sums of every channel run in one grouped convolution: each channel must still see only itself
    g = torch.Generator().manual_seed(2)
    a = torch.rand(2, 3, 9, 8, generator=g, dtype=torch.float64)
    b = 0.5 * a + 0.5 * torch.rand(2, 3, 9, 8, generator=g, dtype=torch.float64)
    out = local_ncc(a, b, 3)
    for c in range(3):
        expected = local_ncc_naive(a[:, c : c + 1], b[:, c : c + 1], 3)
        assert torch.allclose(out[:, c : c + 1], expected, atol=1e-9)


def test_lncc_is_minus_one_for_identical_textured_images():
    a = torch.rand(1, 1, 16, 16, dtype=torch.float64)
    assert lncc_loss(a, a, 5).item() == pytest.approx(-1.0, abs=1e-3)


def test_local_ncc_invariant_to_affine_intensity_change_inside():
    a = torch.rand(1, 1, 16, 16, dtype=torch.float64)
    b = torch.rand(1, 1, 16, 16, dtype=torch.float64)
    # away from the zero-padded border, NCC ignores gain and offset
    inner = (..., slice(4, -4), slice(4, -4))
    assert torch.allclose(local_ncc(a, b)[inner], local_ncc(3 * a + 1, b)[inner], atol=1e-6)


def test_lncc_is_finite_on_constant_images():
    a = torch.ones(1, 1, 12, 12)
    loss = lncc_loss(a, torch.zeros(1, 1, 12, 12))
    assert torch.isfinite(loss) and loss.item() == 0.0


def test_lncc_has_finite_gradient_on_constant_images():
    a = torch.ones(1, 1, 12, 12, requires_grad=True)
    lncc_loss(a, torch.full((1, 1, 12, 12), 0.5)).backward()
    assert torch.isfinite(a.grad).all()


def test_grad_l2_zero_for_constant_field_and_known_for_linear():
    assert grad_l2_loss(torch.full((1, 2, 6, 6), 3.0)).item() == 0.0
    flow = torch.zeros(1, 2, 6, 6)
    flow[:, 0] = 2.0 * torch.arange(6.0).view(6, 1)  # d u0 / d row = 2, everything else 0
    # mean over each axis' differences, averaged over 2 axes: channel 0 row-diffs = 4, others 0
    # axis rows: mean over (1,2,5,6) of diffs^2 = (4 * 30 + 0 * 30) / 60 = 2 ; axis cols: 0  -> (2 + 0) / 2
    assert grad_l2_loss(flow).item() == pytest.approx(1.0)


def test_registration_loss_is_similarity_plus_alpha_times_smoothness():
    warped, fixed = torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8)
    flow = torch.randn(1, 2, 8, 8)
    expected = mse_loss(warped, fixed) + 0.01 * grad_l2_loss(flow)
    assert torch.allclose(registration_loss(warped, fixed, flow, "mse", 0.01), expected)


@pytest.mark.parametrize("window", [1, 3, 5])
def test_local_ncc_3d_matches_a_sliding_window_loop(window):
    """The separable 3D box sums against an explicit loop over every box (zero padding)."""
    from searchmorph_lite.losses import box_sum

    gen = torch.Generator().manual_seed(window)
    a, b = torch.rand(2, 1, 2, 5, 6, 7, dtype=torch.float64, generator=gen)
    loop = loop_sum(a, window)
    assert torch.allclose(box_sum(a, window), loop, atol=1e-12)
    n = window**3
    sums = [loop_sum(t, window) for t in (a, b, a * a, b * b, a * b)]
    cross = sums[4] - sums[0] * sums[1] / n
    var_a, var_b = (sums[2] - sums[0] ** 2 / n).clamp_min(0), (sums[3] - sums[1] ** 2 / n).clamp_min(0)
    assert torch.allclose(local_ncc(a, b, window), cross * cross / (var_a * var_b + 1e-5), atol=1e-9)


def loop_sum(t: torch.Tensor, window: int) -> torch.Tensor:
    r = window // 2
    pad = torch.nn.functional.pad(t, (r,) * 6)
    out = torch.zeros_like(t)
    for z in range(t.shape[2]):
        for y in range(t.shape[3]):
            for x in range(t.shape[4]):
                out[:, :, z, y, x] = pad[:, :, z : z + window, y : y + window, x : x + window].sum((2, 3, 4))
    return out


def test_folding_barrier_is_zero_for_area_preserving_fields_and_brute_force_elsewhere():
    from searchmorph_lite import folding_barrier, jacobian_determinant

    assert folding_barrier(torch.zeros(1, 2, 16, 16)).item() == 0.0
    affine = torch.zeros(1, 2, 16, 16)
    affine[:, 0] = -0.95 * torch.arange(16.0)[:, None]  # det J = 0.05 everywhere: inside the margin
    assert torch.allclose(folding_barrier(affine), torch.tensor(0.05))
    g = torch.Generator().manual_seed(0)
    u = 2.0 * torch.randn(2, 3, 6, 7, 5, generator=g, dtype=torch.float64)
    det = jacobian_determinant(u)
    brute = sum(max(0.1 - v, 0.0) for v in det.flatten().tolist()) / det.numel()
    assert abs(folding_barrier(u).item() - brute) < 1e-12
