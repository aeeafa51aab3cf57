"""SearchMorphConfig.feature_stride: the paper's 1/2-resolution search (2) and a full-resolution one (1)."""

import pytest
import torch

from searchmorph_lite import SearchMorph, SearchMorphConfig, grad_l2_loss, mse_loss

TINY = dict(widths=(4, 8, 8), feature_dim=4, context_dim=8, hidden_dim=8, motion_dim=8, levels=2, radius=1,
            iterations=2)  # fmt: skip


@pytest.mark.parametrize("ndim", [2, 3])
def test_stride_1_searches_at_full_resolution(ndim):
    model = SearchMorph(SearchMorphConfig(ndim=ndim, feature_stride=1, **TINY))
    size = (16,) * ndim
    moving, fixed = torch.rand(2, 1, *size), torch.rand(2, 1, *size)
    h_m, h_f, context = model.encoder(moving, fixed)
    assert h_m.shape == h_f.shape == (2, 4, *size) and context.shape == (2, 8, *size)
    out = model(moving, fixed)
    assert out.flow.shape == (2, ndim, *size) and out.warped.shape == moving.shape
    assert len(out.flows) == 2 and all(f.shape == (2, ndim, *size) for f in out.flows)


def test_stride_1_adds_one_up_block_and_stride_2_is_todays_model():
    a = SearchMorph(SearchMorphConfig())
    b = SearchMorph(SearchMorphConfig(feature_stride=1))
    assert len(b.encoder.trunk.up) == len(a.encoder.trunk.up) + 1
    assert len(list(a.state_dict())) == 92 - 36  # the keys test_checkpoint_format pins for the default model
    assert a.encoder.trunk.out_channels == 32 and b.encoder.trunk.out_channels == 16


def test_size_multiple_follows_the_stride():
    # trunk: 2^(len(widths)-1) = 8; pyramid: stride * 2^(levels-1)
    assert SearchMorph(SearchMorphConfig()).size_multiple == 16
    assert SearchMorph(SearchMorphConfig(feature_stride=1)).size_multiple == 8
    assert SearchMorph(SearchMorphConfig(feature_stride=1, widths=(8, 8))).size_multiple == 8
    assert SearchMorph(SearchMorphConfig(feature_stride=2, widths=(8, 8), levels=2)).size_multiple == 4
    model = SearchMorph(SearchMorphConfig(feature_stride=1, **TINY)).eval()  # size_multiple 4: 12 x 20 works
    assert model.size_multiple == 4
    with torch.no_grad():
        assert model(torch.rand(1, 1, 12, 20), torch.rand(1, 1, 12, 20)).flow.shape == (1, 2, 12, 20)
    with pytest.raises(ValueError, match="divisible by 4"):
        model(torch.rand(1, 1, 14, 20), torch.rand(1, 1, 14, 20))


def test_all_pairs_equals_on_the_fly_at_stride_1():
    torch.manual_seed(0)
    moving, fixed = torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16)
    lean = SearchMorph(SearchMorphConfig(feature_stride=1, **TINY)).eval()
    full = SearchMorph(SearchMorphConfig(feature_stride=1, all_pairs=True, **TINY)).eval()
    for p in lean.iterator.flow_head[-1].parameters():  # make the field non-trivial
        torch.nn.init.normal_(p, std=0.5)
    full.load_state_dict(lean.state_dict())
    with torch.no_grad():
        a, b = lean(moving, fixed), full(moving, fixed)
    assert a.flow.abs().max() > 0.1
    assert torch.allclose(a.flow, b.flow, atol=1e-4)


@pytest.mark.parametrize("flags", [{}, {"joint_encoder": False}, {"diffeomorphic": True}])
def test_every_parameter_gets_a_gradient_at_stride_1(flags):
    torch.manual_seed(0)
    model = SearchMorph(SearchMorphConfig(feature_stride=1, **TINY, **flags))
    moving, fixed = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    out = model(moving, fixed)
    (mse_loss(out.warped, fixed) + grad_l2_loss(out.flow)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


def test_feature_stride_must_be_1_or_2():
    with pytest.raises(ValueError, match="feature_stride"):
        SearchMorphConfig(feature_stride=4)
