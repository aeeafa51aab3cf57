"""Test-time refinement: never raises the loss, zero steps is the network, a perfect field stays put."""

import pytest
import torch

from searchmorph_lite import warp
from searchmorph_lite.refine import refine_flow, refinement_loss

from conftest import disc_pair


def _shifted_pair(shift=(1.5, -2.0), size=48):
    moving, *_ = disc_pair(size=size, shift=0.0, r_moving=12.0, r_fixed=12.0)
    true = torch.zeros(1, 2, size, size)
    true[:, 0], true[:, 1] = shift
    fixed = warp(moving, true)  # fixed(p) = moving(p + shift): the true field is the constant shift
    return moving, fixed, true


@pytest.mark.parametrize("similarity,alpha", [("lncc", 2.0), ("mse", 0.01)])
def test_refinement_never_raises_the_loss_and_lowers_it_from_a_bad_start(similarity, alpha):
    moving, fixed, true = _shifted_pair()
    start = 0.5 * true  # half way there
    before = refinement_loss(moving, fixed, start, similarity, alpha).item()
    for steps in (1, 5, 40):
        refined = refine_flow(moving, fixed, start, steps, similarity, alpha, lr=0.2)
        after = refinement_loss(moving, fixed, refined, similarity, alpha).item()
        assert after <= before
    assert after < before - 0.05 * abs(before)  # 40 steps really lower the loss
    if similarity == "mse":  # MSE sees every textured pixel, so the field itself must approach the shift
        assert (refined - true).abs().mean().item() < 0.5 * (start - true).abs().mean().item()


def test_zero_steps_return_the_network_field_exactly():
    moving, fixed, true = _shifted_pair()
    start = 0.3 * true + 0.01 * torch.randn_like(true)
    assert torch.equal(refine_flow(moving, fixed, start, 0), start)


def test_refining_a_perfect_field_stays_put():
    moving, fixed, true = _shifted_pair(shift=(0.0, 0.0))
    refined = refine_flow(moving, fixed, true, 30, "mse", 0.0, lr=0.5)  # loss 0 already: nothing to gain
    assert torch.equal(refined, true)


def test_refinement_works_under_no_grad_and_in_3d():
    g = torch.Generator().manual_seed(0)
    moving = torch.rand(1, 1, 9, 8, 7, generator=g)
    fixed = torch.roll(moving, 1, dims=2)
    with torch.no_grad():
        refined = refine_flow(moving, fixed, torch.zeros(1, 3, 9, 8, 7), 10, "mse", 0.01, lr=0.2)
    assert refined.shape == (1, 3, 9, 8, 7) and not refined.requires_grad
    assert refinement_loss(moving, fixed, refined, "mse", 0.01) <= refinement_loss(
        moving, fixed, torch.zeros(1, 3, 9, 8, 7), "mse", 0.01
    )


@pytest.mark.parametrize("bad", [-1, 2.5, True])
def test_refine_steps_must_be_a_non_negative_integer(bad):
    moving, fixed, true = _shifted_pair()
    with pytest.raises(ValueError, match="refine steps"):
        refine_flow(moving, fixed, true, bad)


def test_register_with_refinement_lowers_the_loss_and_zero_steps_is_the_network():
    import numpy as np

    from searchmorph_lite import SearchMorph, SearchMorphConfig, register
    from searchmorph_lite.inference import normalize_intensity

    moving, fixed, _ = _shifted_pair(size=64)
    torch.manual_seed(0)
    model = SearchMorph(SearchMorphConfig(widths=(8, 8, 8), hidden_dim=8, motion_dim=8, context_dim=8, levels=2))
    model.metadata = {"train_config": {"similarity": "mse", "alpha": 0.01}, "refine_steps": 25}
    m, f = moving[0, 0].numpy(), fixed[0, 0].numpy()
    _, net = register(m, f, model)
    _, zero = register(m, f, model, refine_steps=0)
    _, auto = register(m, f, model, refine_steps="auto")
    _, thirty = register(m, f, model, refine_steps=25)
    assert np.array_equal(net, zero) and np.array_equal(auto, thirty)
    mn, fn = (normalize_intensity(torch.from_numpy(x).double())[None, None].float() for x in (m, f))

    def loss(flow):
        return refinement_loss(mn, fn, torch.from_numpy(flow)[None].float(), "mse", 0.01).item()

    assert loss(thirty) < loss(net)
    with pytest.raises(ValueError, match="refine_steps"):
        register(m, f, model, refine_steps=-3)


def test_cli_register_takes_refine_steps(tmp_path, capsys):
    import nibabel as nib
    import numpy as np

    from searchmorph_lite.cli import main

    moving, fixed, _ = _shifted_pair(size=64)
    for name, img in (("m", moving), ("f", fixed)):
        nib.save(nib.Nifti1Image(img[0, 0].numpy(), np.eye(4)), tmp_path / f"{name}.nii.gz")
    args = ["register", "--moving", str(tmp_path / "m.nii.gz"), "--fixed", str(tmp_path / "f.nii.gz")]
    args += ["--checkpoint", "brain2d", "--out", str(tmp_path / "w.nii.gz"), "--device", "cpu"]
    assert main(args + ["--refine", "5"]) == 0 and (tmp_path / "w.nii.gz").exists()
    with pytest.raises(SystemExit) as exit_info:  # argparse's usage errors exit, as for every other flag
        main(args + ["--refine", "lots"])
    assert exit_info.value.code == 2
    assert "--refine takes a number of steps (0, 30, 100, ...) or auto, got 'lots'" in capsys.readouterr().err


def test_the_pyramid_finds_a_large_shift_that_the_finest_level_alone_does_not():
    moving, fixed, true = _shifted_pair(shift=(7.0, -6.0), size=64)
    start = torch.zeros_like(true)
    one = refine_flow(moving, fixed, start, 45, "mse", 0.01, levels=1)
    three = refine_flow(moving, fixed, start, 45, "mse", 0.01, levels=3)
    error = {name: (f - true)[:, :, 16:48, 16:48].abs().mean().item() for name, f in (("one", one), ("three", three))}
    assert error["three"] < 0.5 * error["one"], error
    assert refinement_loss(moving, fixed, three, "mse", 0.01, 10.0) < refinement_loss(
        moving, fixed, one, "mse", 0.01, 10.0
    )


def test_the_folding_barrier_unfolds_a_folded_start():
    from searchmorph_lite import folding_ratio

    moving, fixed, true = _shifted_pair(shift=(0.0, 0.0), size=48)
    yy = torch.arange(48.0)[:, None].expand(48, 48)
    folded = true.clone()
    folded[:, 0] = 3.0 * torch.sin(yy / 1.5)  # d u_y / d y reaches -2: det J < 0 on stripes
    assert folding_ratio(folded).item() > 10
    refined = refine_flow(moving, fixed, folded, 60, "mse", 0.0, fold_weight=10.0)
    assert folding_ratio(refined).item() < 0.5 * folding_ratio(folded).item()
    kept = refine_flow(moving, fixed, folded, 60, "mse", 0.0, fold_weight=10.0)
    assert torch.equal(kept, refined)  # deterministic


@pytest.mark.parametrize(
    "option,bad,match",
    [("levels", 0, "refine levels"), ("levels", 2.0, "refine levels"), ("smoothing", 4, "refine smoothing"),
     ("smoothing", 0, "refine smoothing"), ("fold_weight", -1.0, "refine fold_weight"), ("lr", 0, "refine lr")],
)  # fmt: skip
def test_refine_options_are_checked(option, bad, match):
    moving, fixed, true = _shifted_pair()
    with pytest.raises(ValueError, match=match):
        refine_flow(moving, fixed, true, 5, **{option: bad})
