import math

import pytest
import torch

from searchmorph_lite import dice, folding_ratio, jacobian_determinant
from searchmorph_lite.brute_force import dice_naive, jacobian_naive


def test_dice_matches_naive_per_label():
    g = torch.Generator().manual_seed(2)
    a = torch.randint(0, 4, (3, 1, 10, 10), generator=g)
    b = torch.randint(0, 4, (3, 1, 10, 10), generator=g)
    d = dice(a, b)
    assert d.shape == (3, 3)
    for n in range(3):
        for k, lab in enumerate([1, 2, 3]):
            assert d[n, k].item() == pytest.approx(dice_naive(a[n], b[n], lab))


def test_dice_is_one_for_identical_and_zero_for_disjoint():
    a = torch.zeros(1, 6, 6, dtype=torch.long)
    a[0, :3] = 1
    b = torch.zeros(1, 6, 6, dtype=torch.long)
    b[0, 3:] = 1
    assert dice(a, a).item() == 1.0
    assert dice(a, b).item() == 0.0


def test_dice_absent_label_is_nan():
    a = torch.ones(1, 1, 4, 4, dtype=torch.long)
    d = dice(a, a, labels=[1, 5])
    assert d[0, 0].item() == 1.0 and math.isnan(d[0, 1].item())


def test_jacobian_of_zero_flow_is_one():
    assert torch.allclose(jacobian_determinant(torch.zeros(2, 2, 7, 5)), torch.ones(2, 7, 5))


def test_jacobian_of_affine_field_is_det_of_identity_plus_matrix():
    a = torch.tensor([[0.2, -0.3], [0.1, 0.4]], dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(torch.arange(6.0), torch.arange(7.0), indexing="ij")).double()
    flow = torch.einsum("kj,jhw->khw", a, grid)[None] + torch.tensor([1.0, -2.0]).view(1, 2, 1, 1)
    expected = torch.linalg.det(torch.eye(2, dtype=torch.float64) + a)
    assert torch.allclose(jacobian_determinant(flow), expected.expand(1, 6, 7))


def test_jacobian_matches_naive_finite_differences():
    flow = torch.randn(2, 2, 6, 5, dtype=torch.float64)
    assert torch.allclose(jacobian_determinant(flow), jacobian_naive(flow))


def test_jacobian_negative_for_a_folding_field():
    # u0 = -2 * row maps row i to -i: the field folds (det = 1 - 2 = -1)
    flow = torch.zeros(1, 2, 5, 5)
    flow[:, 0] = -2.0 * torch.arange(5.0).view(5, 1)
    det = jacobian_determinant(flow)
    assert torch.allclose(det, torch.full_like(det, -1.0))
    assert folding_ratio(flow).item() == 100.0


def test_jacobian_3d_of_zero_flow_is_one():
    assert torch.allclose(jacobian_determinant(torch.zeros(1, 3, 4, 4, 4)), torch.ones(1, 4, 4, 4))


def test_folding_ratio_counts_percent_of_nonpositive_pixels():
    flow = torch.zeros(1, 2, 10, 10)
    # a sharp local swap between two columns folds a few pixels only
    flow[0, 1, :, 4] = 3.0
    flow[0, 1, :, 5] = -3.0
    det = jacobian_determinant(flow)
    expected = 100.0 * (det <= 0).float().mean().item()
    assert 0 < expected < 100
    assert folding_ratio(flow).item() == pytest.approx(expected)


def test_folding_ratio_inside_mask():
    flow = torch.zeros(1, 2, 4, 4)
    flow[:, 0] = -2.0 * torch.arange(4.0).view(4, 1)
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, :2] = True
    assert folding_ratio(flow, mask).item() == 100.0
