import pytest
import torch

import searchmorph_lite as sm
from searchmorph_lite import (
    ContextEncoder,
    ConvGRU,
    FeatureEncoder,
    SearchMorph,
    SearchMorphConfig,
    SharedEncoder,
    VoxelMorph,
    dice,
    grad_l2_loss,
    mse_loss,
    warp,
)

from conftest import disc_pair

SMALL = dict(widths=(8, 16, 16, 16), hidden_dim=16, motion_dim=16, context_dim=16)


def test_searchmorph_defaults_follow_the_paper():
    cfg = SearchMorphConfig()
    assert (cfg.levels, cfg.radius, cfg.iterations, cfg.feature_dim, cfg.context_dim) == (4, 3, 4, 4, 32)
    assert not cfg.all_pairs  # the memory-lean search is the default


def test_searchmorph_outputs_full_resolution_fields_per_iteration(pair):
    moving, fixed, *_ = pair
    model = SearchMorph(SearchMorphConfig(**SMALL))
    out = model(moving, fixed)
    assert out.flow.shape == (1, 2, 64, 64) and out.warped.shape == (1, 1, 64, 64)
    assert len(out.flows) == 4 and out.flows[-1] is out.flow
    assert torch.allclose(out.warped, warp(moving, out.flow))


def test_iterations_override_at_inference(pair):
    moving, fixed, *_ = pair
    model = SearchMorph(SearchMorphConfig(**SMALL)).eval()
    with torch.no_grad():
        out2 = model(moving, fixed, iterations=2)
        out6 = model(moving, fixed, iterations=6)
    assert len(out2.flows) == 2 and len(out6.flows) == 6
    assert torch.allclose(out6.flows[1], out2.flows[1])  # the same first steps


def test_all_pairs_switch_gives_the_same_model_output(pair):
    moving, fixed, *_ = pair
    lean = SearchMorph(SearchMorphConfig(**SMALL)).eval()
    full = SearchMorph(SearchMorphConfig(**SMALL, all_pairs=True)).eval()
    full.load_state_dict(lean.state_dict())
    for p in lean.iterator.flow_head[-1].parameters():  # make the field non-trivial
        torch.nn.init.normal_(p, std=0.5)
    full.load_state_dict(lean.state_dict())
    with torch.no_grad():
        a, b = lean(moving, fixed), full(moving, fixed)
    assert a.flow.abs().max() > 0.1
    assert torch.allclose(a.flow, b.flow, atol=1e-4)


@pytest.mark.parametrize(
    "flags", [{}, {"use_context": False}, {"use_search": False}, {"use_pyramid": False}, {"joint_encoder": False}]
)
def test_every_parameter_gets_a_gradient(pair, flags):
    moving, fixed, *_ = pair
    model = SearchMorph(SearchMorphConfig(**SMALL, **flags))
    out = model(moving, fixed)
    (mse_loss(out.warped, fixed) + grad_l2_loss(out.flow)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


def test_ablation_flags_change_the_architecture():
    base = SearchMorph(SearchMorphConfig(**SMALL))
    no_context = SearchMorph(SearchMorphConfig(**SMALL, use_context=False))
    assert no_context.encoder.context_head is None and no_context.iterator.init_hidden is None
    assert SearchMorph(SearchMorphConfig(**SMALL, use_pyramid=False)).levels == 1
    no_search = SearchMorph(SearchMorphConfig(**SMALL, use_search=False))
    first = no_search.iterator.motion_encoder[0]
    assert first.in_channels == 2 * 4 + 2  # features of both images + the field
    assert base.iterator.motion_encoder[0].in_channels == 4 * 25 + 2


def test_encoders_share_the_trunk():
    model = SearchMorph(SearchMorphConfig(**SMALL))
    assert isinstance(model.encoder, SharedEncoder)
    assert model.encoder.feature_head is not model.encoder.context_head
    # the trunk is stored once: every state-dict key of a trunk tensor lives under encoder.trunk
    trunk_keys = [k for k in model.state_dict() if ".trunk." in k or k.startswith("trunk.")]
    assert trunk_keys and all(k.startswith("encoder.trunk.") for k in trunk_keys)
    assert len(trunk_keys) == len(model.encoder.trunk.state_dict())


def test_standalone_encoders_equal_the_shared_one(pair):
    moving, fixed, *_ = pair
    shared = SharedEncoder(widths=(8, 16, 16), feature_dim=4, context_dim=6).eval()
    feature = FeatureEncoder(shared.trunk, feature_dim=4).eval()
    context = ContextEncoder(shared.trunk, context_dim=6).eval()
    feature.head.load_state_dict(shared.feature_head.state_dict())
    context.head.load_state_dict(shared.context_head.state_dict())
    h_m, h_f, ctx = shared(moving, fixed)
    assert torch.equal(feature(moving, fixed)[0], h_m) and torch.equal(feature(moving, fixed)[1], h_f)
    assert torch.equal(context(moving, fixed), ctx)


def test_feature_encoder_splits_eight_channels_into_two_maps_at_half_resolution(pair):
    moving, fixed, *_ = pair
    enc = FeatureEncoder(feature_dim=4, widths=(8, 16, 16))
    h_m, h_f = enc(moving, fixed)
    assert enc.head.conv.out_channels == 8
    assert h_m.shape == h_f.shape == (1, 4, 32, 32)


def test_convgru_follows_eq_4_to_7():
    torch.manual_seed(0)
    gru = ConvGRU(hidden_dim=3, input_dim=2, kernel_size=1)
    h, x = torch.randn(1, 3, 4, 4), torch.randn(1, 2, 4, 4)
    hx = torch.cat([h, x], 1)
    r = torch.sigmoid(gru.conv_r(hx))
    z = torch.sigmoid(gru.conv_z(hx))
    q = torch.tanh(gru.conv_h(torch.cat([r * h, x], 1)))
    assert torch.allclose(gru(h, x), (1 - z) * h + z * q)
    # z -> 0 keeps the old state: push the update gate's bias very negative
    torch.nn.init.constant_(gru.conv_z.bias, -50.0)
    assert torch.allclose(gru(h, x), h, atol=1e-6)


def test_voxelmorph_outputs_one_full_resolution_field(pair):
    moving, fixed, *_ = pair
    model = VoxelMorph()
    out = model(moving, fixed)
    assert out.flow.shape == (1, 2, 64, 64) and len(out.flows) == 1
    assert out.flow.abs().max() < 1e-2  # starts near identity


def _overfit(model, steps, lr=3e-3):
    moving, fixed, moving_lab, fixed_lab = disc_pair()
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def score():
        model.eval()
        with torch.no_grad():
            out = model(moving, fixed)
            lab = warp(moving_lab.float(), out.flow, mode="nearest").long()
            loss = mse_loss(out.warped, fixed).item()
        model.train()
        return loss, dice(lab, fixed_lab).item()

    loss0, dice0 = score()
    for _ in range(steps):
        out = model(moving, fixed)
        loss = sum(mse_loss(warp(moving, f), fixed) + 0.01 * grad_l2_loss(f) for f in out.flows)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (loss0, dice0), score()


def test_searchmorph_overfits_one_pair():
    torch.manual_seed(0)
    model = SearchMorph(SearchMorphConfig(**SMALL, radius=2))
    (loss0, dice0), (loss1, dice1) = _overfit(model, steps=60)
    assert loss1 < 0.5 * loss0
    assert dice1 > dice0 + 0.1 and dice1 > 0.8


def test_voxelmorph_overfits_one_pair():
    torch.manual_seed(0)
    (loss0, dice0), (loss1, dice1) = _overfit(VoxelMorph(), steps=60)
    assert loss1 < 0.5 * loss0 and dice1 > dice0 + 0.1


def test_unet_trunk_names_the_size_it_needs():
    from searchmorph_lite import UNetTrunk

    with pytest.raises(ValueError, match="divisible by 8"):
        UNetTrunk(2)(torch.rand(1, 2, 100, 80))


@pytest.mark.parametrize(
    "bad",
    [{"use_context": "no"}, {"use_search": 0}, {"iterations": 2.5}, {"radius": True}, {"widths": (16, "32")}],
)
def test_config_rejects_values_of_the_wrong_type(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SearchMorphConfig(**bad)


def test_fields_of_a_longer_run_start_with_those_of_a_shorter_one():
    # chapter 11 scores n = 1..8 iterations from one run of 8: the field after n iterations must not depend on
    # how many follow
    torch.manual_seed(0)
    model = SearchMorph(SearchMorphConfig(**SMALL)).eval()
    with torch.no_grad():  # nudge the flow head so that iterations move the field
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    moving, fixed = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        long = model(moving, fixed, iterations=5).flows
        for n in (1, 2, 4):
            short = model(moving, fixed, iterations=n)
            assert torch.equal(short.flow, long[n - 1]) and short.flows[-1].abs().max() > 0


def test_zeroed_input_zeroes_one_input_of_the_gru_and_gives_the_model_back_whole():
    torch.manual_seed(0)
    model = sm.SearchMorph(sm.SearchMorphConfig(iterations=2)).eval()
    moving, fixed = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        before = model(moving, fixed).flow
        for part in ("search", "context"):
            seen = {}
            gru = model.iterator.forward

            def spy(hidden, search, context, flow, seen=seen, gru=gru):
                seen["search"], seen["context"] = search.abs().max(), context.abs().max()
                return gru(hidden, search, context, flow)

            model.iterator.forward = spy
            with sm.zeroed_input(model, part):
                ablated = model(moving, fixed).flow
            del model.iterator.forward
            assert float(seen[part]) == 0.0 and float(seen["context" if part == "search" else "search"]) > 0
            assert not torch.equal(ablated, before)
            for _ in range(2):  # the model comes back whole, pair after pair
                assert torch.equal(model(moving, fixed).flow, before)
    with pytest.raises(ValueError, match="part"), sm.zeroed_input(model, "pyramid"):
        pass
    with pytest.raises(TypeError, match="SearchMorph"), sm.zeroed_input(sm.VoxelMorph(), "search"):
        pass
