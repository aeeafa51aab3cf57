import math

import pytest
import torch

from searchmorph_lite import (
    bilinear_sample,
    correlation_pyramid,
    cost_volume,
    diamond_offsets,
    search_features,
    search_pyramid,
)
from searchmorph_lite.brute_force import bilinear_at, cost_volume_naive, diamond_naive, pool_naive, search_naive


def _features(b=2, d=3, h=6, w=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, d, h, w, generator=g, dtype=torch.float64),
        torch.randn(b, d, h, w, generator=g, dtype=torch.float64),
    )


def test_cost_volume_is_eq1():
    fm, ff = _features()
    assert torch.allclose(cost_volume(fm, ff), cost_volume_naive(fm, ff))


def test_cost_volume_normalize_divides_by_sqrt_channels():
    fm, ff = _features(d=4)
    assert torch.allclose(cost_volume(fm, ff, normalize=True), cost_volume_naive(fm, ff) / 2)


def test_cost_volume_first_axes_are_moving():
    fm, ff = _features(b=1, d=1, h=3, w=3)
    fm.zero_()
    fm[0, 0, 1, 2] = 1.0  # only moving pixel (1, 2) is non-zero
    vol = cost_volume(fm, ff)
    assert torch.allclose(vol[0, 1, 2], ff[0, 0])
    assert vol[0, 0, 0].abs().sum() == 0


@pytest.mark.parametrize("shape", [(8, 8), (9, 7), (16, 12)])
def test_correlation_pyramid_levels_match_loop_pooling(shape):
    fm, ff = _features(b=1, d=2, h=shape[0], w=shape[1])
    vol = cost_volume(fm, ff)
    pyr = correlation_pyramid(vol, levels=4 if min(shape) >= 8 else 3)
    for level, p in enumerate(pyr):
        assert p.shape == (1, *shape, shape[0] // 2**level, shape[1] // 2**level)
        assert torch.allclose(p, pool_naive(vol, level))


def test_pyramid_level_zero_is_the_volume():
    fm, ff = _features()
    vol = cost_volume(fm, ff)
    assert torch.equal(correlation_pyramid(vol, 2)[0], vol)


@pytest.mark.parametrize("radius", [0, 1, 2, 3, 4])
def test_diamond_offsets_are_the_l1_ball(radius):
    off = diamond_offsets(radius)
    assert off.dtype == torch.long
    assert off.shape == (2 * radius**2 + 2 * radius + 1, 2)
    assert {tuple(o) for o in off.tolist()} == diamond_naive(radius)


def test_diamond_offsets_3d_is_the_octahedron():
    off = diamond_offsets(2, ndim=3)
    brute = {
        (a, b, c) for a in range(-2, 3) for b in range(-2, 3) for c in range(-2, 3) if abs(a) + abs(b) + abs(c) <= 2
    }
    assert {tuple(o) for o in off.tolist()} == brute and len(off) == 25


def test_bilinear_sample_matches_hand_interpolation_and_zero_outside():
    g = torch.Generator().manual_seed(3)
    vals = torch.randn(2, 1, 4, 5, generator=g, dtype=torch.float64)
    coords = torch.rand(2, 30, 2, generator=g, dtype=torch.float64) * 8 - 2
    out = bilinear_sample(vals, coords)
    for n in range(2):
        for p in range(30):
            y, x = coords[n, p].tolist()
            assert out[n, 0, p].item() == pytest.approx(bilinear_at(vals[n, 0], y, x), abs=1e-12)


def test_search_pyramid_integer_flow_reads_volume_directly():
    fm, ff = _features(b=1, d=2, h=8, w=8)
    pyr = correlation_pyramid(cost_volume(fm, ff), levels=1)
    flow = torch.zeros(1, 2, 8, 8, dtype=torch.float64)
    flow[:, 0], flow[:, 1] = 1.0, -2.0  # different on the two axes: catches an x/y swap
    out = search_pyramid(pyr, flow, radius=1)
    off = diamond_offsets(1).tolist()
    i, j = 4, 5
    for k, (dy, dx) in enumerate(off):
        assert out[0, k, i, j].item() == pytest.approx(pyr[0][0, i, j, i + 1 + dy, j - 2 + dx].item())


def test_search_pyramid_fractional_flow_matches_naive_bilinear():
    fm, ff = _features(b=2, d=2, h=8, w=8, seed=4)
    pyr = correlation_pyramid(cost_volume(fm, ff), levels=3)
    g = torch.Generator().manual_seed(5)
    flow = torch.empty(2, 2, 8, 8, dtype=torch.float64)
    flow[:, 0] = torch.rand(2, 8, 8, generator=g, dtype=torch.float64) * 4 - 2
    flow[:, 1] = torch.rand(2, 8, 8, generator=g, dtype=torch.float64) * 6 + 1
    out = search_pyramid(pyr, flow, radius=2)
    ref = search_naive(pyr, flow, [tuple(o) for o in diamond_offsets(2).tolist()])
    assert out.shape == (2, 3 * 13, 8, 8)
    assert torch.allclose(out, ref, atol=1e-12)


def test_search_pyramid_is_zero_far_outside():
    fm, ff = _features(b=1, d=2, h=8, w=8)
    pyr = correlation_pyramid(cost_volume(fm, ff), levels=2)
    flow = torch.full((1, 2, 8, 8), 100.0, dtype=torch.float64)
    assert search_pyramid(pyr, flow, 2).abs().max() == 0


@pytest.mark.parametrize(
    "shape,levels,radius,normalize", [((8, 8), 4, 3, False), ((9, 7), 3, 2, True), ((12, 10), 4, 1, True)]
)
def test_search_features_equals_all_pairs_path(shape, levels, radius, normalize):
    fm, ff = _features(b=2, d=4, h=shape[0], w=shape[1], seed=6)
    g = torch.Generator().manual_seed(7)
    flow = torch.randn(2, 2, *shape, generator=g, dtype=torch.float64) * 3
    ref = search_pyramid(correlation_pyramid(cost_volume(fm, ff, normalize), levels), flow, radius)
    out = search_features(fm, ff, flow, radius, levels, normalize)
    assert out.shape == (2, levels * (2 * radius**2 + 2 * radius + 1), *shape)
    assert torch.allclose(out, ref, atol=1e-10)


def test_search_features_gradients_match_all_pairs_path():
    fm, ff = _features(b=1, d=3, h=8, w=8, seed=8)
    flow = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    grads = []
    for all_pairs in (True, False):
        a, b = fm.clone().requires_grad_(), ff.clone().requires_grad_()
        if all_pairs:
            out = search_pyramid(correlation_pyramid(cost_volume(a, b), 3), flow, 2)
        else:
            out = search_features(a, b, flow, 2, 3)
        (out * torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out)).sum().backward()
        grads.append((a.grad, b.grad))
    assert torch.allclose(grads[0][0], grads[1][0]) and torch.allclose(grads[0][1], grads[1][1])


def test_search_map_channel_count_is_levels_times_k():
    fm, ff = _features(b=1, d=2, h=16, w=16)
    out = search_features(fm, ff, torch.zeros(1, 2, 16, 16, dtype=torch.float64), radius=3, levels=4)
    assert out.shape[1] == 4 * 25 == 4 * math.prod([1]) * 25
