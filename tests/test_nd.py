"""N-D from end to end: 3D models, 3D search, 3D warp and Jacobian, 3D register, and the one sampler."""

import numpy as np
import pytest
import torch

from searchmorph_lite import (
    AllPairsLookup,
    OnTheFlyLookup,
    SearchMorph,
    SearchMorphConfig,
    VoxelMorph,
    VoxelMorphConfig,
    bilinear_sample,
    correlation_pyramid,
    cost_volume,
    diamond_offsets,
    folding_ratio,
    grad_l2_loss,
    jacobian_determinant,
    mse_loss,
    register,
    sample_grid,
    search_features,
    search_pyramid,
    warp,
)
from searchmorph_lite.brute_force import warp_naive_3d

TINY_3D = dict(ndim=3, widths=(4, 8, 8), feature_dim=4, context_dim=8, hidden_dim=8, motion_dim=8, levels=2,
               radius=1, iterations=2)  # fmt: skip


def _volume_pair(size=(16, 16, 16), seed=0):
    g = torch.Generator().manual_seed(seed)
    moving = torch.rand(1, 1, *size, generator=g)
    fixed = torch.roll(moving, shifts=1, dims=2)
    return moving, fixed


def test_searchmorph_3d_forward_and_backward_shapes():
    moving, fixed = _volume_pair()
    model = SearchMorph(SearchMorphConfig(**TINY_3D))
    assert model.size_multiple == 4 and diamond_offsets(1, 3).shape[0] == 7  # the octahedron of radius 1
    out = model(moving, fixed)
    assert out.flow.shape == (1, 3, 16, 16, 16) and out.warped.shape == moving.shape and len(out.flows) == 2
    (mse_loss(out.warped, fixed) + grad_l2_loss(out.flow)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


@pytest.mark.parametrize("all_pairs", [False, True])
def test_searchmorph_3d_all_pairs_switch_gives_the_same_output(all_pairs):
    moving, fixed = _volume_pair((8, 8, 8))
    lean = SearchMorph(SearchMorphConfig(**TINY_3D)).eval()
    for p in lean.iterator.flow_head[-1].parameters():  # a non-trivial field
        torch.nn.init.normal_(p, std=0.3)
    other = SearchMorph(SearchMorphConfig(**TINY_3D, all_pairs=all_pairs)).eval()
    other.load_state_dict(lean.state_dict())
    with torch.no_grad():
        a, b = lean(moving, fixed).flow, other(moving, fixed).flow
    assert a.abs().max() > 0.05
    assert torch.allclose(a, b, atol=1e-4)


def test_voxelmorph_3d_forward_and_backward_shapes():
    moving, fixed = _volume_pair()
    model = VoxelMorph(VoxelMorphConfig(ndim=3, enc_widths=(4, 8), dec_widths=(8, 8, 4)))
    out = model(moving, fixed)
    assert out.flow.shape == (1, 3, 16, 16, 16) and len(out.flows) == 1
    (mse_loss(out.warped, fixed) + grad_l2_loss(out.flow)).backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("levels,radius", [(1, 1), (2, 1), (2, 2)])
def test_search_features_3d_equals_the_all_pairs_path(levels, radius):
    g = torch.Generator().manual_seed(levels + radius)
    f_m = torch.randn(1, 3, 5, 4, 6, generator=g, dtype=torch.float64)
    f_f = torch.randn(1, 3, 5, 4, 6, generator=g, dtype=torch.float64)
    flow = torch.randn(1, 3, 5, 4, 6, generator=g, dtype=torch.float64) * 1.5
    lean = search_features(f_m, f_f, flow, radius, levels=levels, normalize=True)
    full = search_pyramid(correlation_pyramid(cost_volume(f_m, f_f, normalize=True), levels), flow, radius)
    k = diamond_offsets(radius, 3).shape[0]
    assert lean.shape == (1, levels * k, 5, 4, 6)
    assert torch.allclose(lean, full, atol=1e-10)


def test_search_3d_at_integer_flow_reads_the_volume_at_each_octahedron_offset():
    g = torch.Generator().manual_seed(0)
    f_m, f_f = torch.randn(1, 2, 4, 5, 3, generator=g), torch.randn(1, 2, 4, 5, 3, generator=g)
    flow = torch.zeros(1, 3, 4, 5, 3)
    flow[:, 0], flow[:, 2] = 1.0, -1.0
    vol = cost_volume(f_m, f_f)
    out = search_features(f_m, f_f, flow, radius=1, levels=1)
    for k, (dz, dy, dx) in enumerate(diamond_offsets(1, 3).tolist()):
        for z, y, x in [(0, 0, 1), (2, 3, 2), (1, 4, 1)]:
            q = (z + 1 + dz, y + dy, x - 1 + dx)
            inside = all(0 <= c < n for c, n in zip(q, (4, 5, 3)))
            expected = vol[0, z, y, x][q] if inside else 0.0
            assert torch.isclose(out[0, k, z, y, x], torch.as_tensor(expected), atol=1e-5)


@pytest.mark.parametrize("shift", [(1, 0, 0), (0, -2, 0), (0, 0, 1), (1, 1, -1)])
def test_warp_3d_by_integer_shifts_moves_content_on_each_axis(shift):
    img = torch.rand(1, 2, 6, 5, 7)
    flow = torch.zeros(1, 3, 6, 5, 7)
    for a, s in enumerate(shift):
        flow[:, a] = s
    out = warp(img, flow, exact=True)
    src = tuple(slice(max(0, s), n + min(0, s)) for s, n in zip(shift, (6, 5, 7)))
    dst = tuple(slice(max(0, -s), n - max(0, s)) for s, n in zip(shift, (6, 5, 7)))
    assert torch.equal(out[(..., *dst)], img[(..., *src)])


def test_warp_3d_matches_naive_trilinear_at_fractional_positions():
    g = torch.Generator().manual_seed(2)
    img = torch.rand(1, 1, 5, 4, 6, generator=g, dtype=torch.float64)
    flow = (torch.rand(1, 3, 5, 4, 6, generator=g, dtype=torch.float64) - 0.5) * 3
    assert torch.allclose(warp(img, flow), warp_naive_3d(img, flow), atol=1e-10)


def test_jacobian_3d_of_an_affine_field_is_det_of_identity_plus_matrix():
    a = torch.tensor([[0.1, -0.2, 0.05], [0.3, -0.1, 0.0], [0.02, 0.1, 0.2]], dtype=torch.float64)
    coords = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in (5, 6, 4)], indexing="ij"))
    flow = torch.einsum("kj,j...->k...", a, coords)[None] + 0.7  # u(x) = A x + b
    det = jacobian_determinant(flow)
    assert det.shape == (1, 5, 6, 4)
    assert torch.allclose(det, torch.linalg.det(torch.eye(3, dtype=torch.float64) + a).expand_as(det))
    assert folding_ratio(flow).item() == 0.0


@pytest.mark.parametrize("shape", [(16, 16, 16), (13, 17, 10)])
def test_register_3d_pads_and_crops_back(shape):
    model = SearchMorph(SearchMorphConfig(**TINY_3D)).eval()
    rng = np.random.default_rng(0)
    moving, fixed = rng.random(shape), rng.random(shape)
    for p in model.iterator.flow_head[-1].parameters():
        torch.nn.init.normal_(p, std=0.3)
    warped, flow = register(moving, fixed, model, normalize=False)
    assert warped.shape == shape and flow.shape == (3, *shape)
    # the same as running the model on the centred zero-padded volume and cropping its field
    pad = [((-n) % 4 // 2, (-n) % 4 - (-n) % 4 // 2) for n in shape]
    padded = [torch.from_numpy(np.pad(x, pad)).float()[None, None] for x in (moving, fixed)]
    with torch.no_grad():
        full = model(*padded).flow[0].double().numpy()
    crop = tuple(slice(b, b + n) for (b, _), n in zip(pad, shape))
    assert np.allclose(flow, full[(slice(None), *crop)], atol=1e-6)


def test_register_3d_equals_the_model_on_a_size_that_needs_no_padding():
    model = SearchMorph(SearchMorphConfig(**TINY_3D)).eval()
    for p in model.iterator.flow_head[-1].parameters():
        torch.nn.init.normal_(p, std=0.3)
    moving, fixed = _volume_pair()
    _, flow = register(moving[0, 0], fixed[0, 0], model, normalize=False)
    with torch.no_grad():
        expected = model(moving, fixed).flow[0].double().numpy()
    assert np.abs(flow).max() > 0.05
    assert np.allclose(flow, expected, atol=1e-6)


def test_a_2d_model_refuses_a_volume_and_a_3d_model_an_image():
    model_2d = SearchMorph(SearchMorphConfig(widths=(4, 8, 8), levels=2))
    model_3d = SearchMorph(SearchMorphConfig(**TINY_3D))
    with pytest.raises(ValueError, match="must be a 2D image"):
        register(np.zeros((16, 16, 16)), np.zeros((16, 16, 16)), model_2d)
    with pytest.raises(ValueError, match="must be a 3D volume"):
        register(np.zeros((16, 16)), np.zeros((16, 16)), model_3d)
    with pytest.raises(ValueError, match="has 2 spatial axes .* but the model is 3D"):
        model_3d(torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 16))


def test_register_refuses_something_that_is_not_a_registration_model():
    with pytest.raises(ValueError, match="registration model"):
        register(np.zeros((16, 16)), np.zeros((16, 16)), None)


@pytest.mark.parametrize("ndim", [2, 3])
def test_fast_sampling_path_equals_the_exact_gather(ndim):
    g = torch.Generator().manual_seed(ndim)
    shape = (7, 6, 5)[:ndim]
    img = torch.rand(2, 3, *shape, generator=g, dtype=torch.float64)
    coords = (
        torch.rand(2, ndim, *shape, generator=g, dtype=torch.float64)
        * torch.tensor(shape).view(ndim, 1, 1, *[1] * (ndim - 2))
        * 1.2
        - 0.5
    )
    fast = sample_grid(img, coords)
    exact = bilinear_sample(img, coords.flatten(2).transpose(1, 2)).reshape(fast.shape)
    assert not torch.equal(coords, coords.round())  # the fast path was taken
    assert torch.allclose(fast, exact, atol=1e-12)


def test_fast_warp_gradients_equal_the_exact_ones():
    g = torch.Generator().manual_seed(5)
    img = torch.rand(1, 1, 9, 8, generator=g, dtype=torch.float64, requires_grad=True)
    flow = (torch.rand(1, 2, 9, 8, generator=g, dtype=torch.float64) * 4 - 2).requires_grad_()
    grads_fast = torch.autograd.grad(warp(img, flow).square().sum(), (img, flow))
    coords = torch.stack(torch.meshgrid(torch.arange(9.0), torch.arange(8.0), indexing="ij")).double() + flow
    exact = bilinear_sample(img, coords.flatten(2).transpose(1, 2))
    grads_exact = torch.autograd.grad(exact.square().sum(), (img, flow))
    for a, b in zip(grads_fast, grads_exact):
        assert torch.allclose(a, b, atol=1e-10)


def test_lookups_share_one_signature_and_agree():
    g = torch.Generator().manual_seed(3)
    q, t = torch.randn(1, 4, 8, 6, generator=g), torch.randn(1, 4, 8, 6, generator=g)
    flow = torch.randn(1, 2, 8, 6, generator=g)
    a = AllPairsLookup(q, t, radius=2, levels=3, normalize=True)(flow)
    b = OnTheFlyLookup(q, t, radius=2, levels=3, normalize=True)(flow)
    assert a.shape[1] == AllPairsLookup.channels(4, 2, 3, 2) == OnTheFlyLookup.channels(4, 2, 3, 2) == 3 * 13
    assert torch.allclose(a, b, atol=1e-5)
