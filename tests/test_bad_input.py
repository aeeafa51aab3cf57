"""Every public function rejects bad arrays with a ValueError that names the problem."""

import numpy as np
import pytest
import torch

from searchmorph_lite import (
    SearchMorph,
    SearchMorphConfig,
    VoxelMorph,
    correlation_pyramid,
    cost_volume,
    diamond_offsets,
    dice,
    folding_ratio,
    jacobian_determinant,
    lncc_loss,
    mse_loss,
    register,
    search_features,
    search_pyramid,
    upsample_flow,
    warp,
)
from searchmorph_lite.refine import refine_flow

SMALL = SearchMorphConfig(widths=(8, 16, 16, 16), hidden_dim=16, motion_dim=16, context_dim=16)


def inf_flow():
    return torch.full((1, 2, 8, 8), float("inf"))


def nan_image():
    x = torch.rand(1, 1, 8, 8)
    x[0, 0, 2, 3] = float("nan")
    return x


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: warp(torch.rand(8, 8), torch.zeros(1, 2, 8, 8)), "image must have shape"),
        (lambda: warp(torch.rand(1, 1, 8, 8), torch.zeros(1, 3, 8, 8)), "must have 2 channels"),
        (lambda: warp(torch.rand(1, 1, 8, 8), torch.zeros(1, 2, 8, 9)), "spatial shapes differ"),
        # values are checked at the edges (a model's entry, refinement, register), not in warp or the losses
        (lambda: refine_flow(nan_image(), torch.rand(1, 1, 8, 8), torch.zeros(1, 2, 8, 8), 1), "NaN or inf"),
        (
            lambda: refine_flow(
                torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), torch.full((1, 2, 8, 8), float("inf")), 1
            ),
            "flow contains NaN",
        ),
        (lambda: warp(torch.rand(1, 1, 8, 8), torch.zeros(1, 2, 8, 8), mode="cubic"), "mode must be"),
        (lambda: upsample_flow(torch.zeros(1, 3, 4, 4)), "must have 2 channels"),
        (lambda: mse_loss(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 5)), "shapes differ"),
        (lambda: refine_flow(torch.rand(1, 1, 8, 8), nan_image(), torch.zeros(1, 2, 8, 8), 1), "NaN or inf"),
        (lambda: lncc_loss(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), window=4), "odd"),
        (lambda: dice(torch.zeros(1, 4, 4), torch.zeros(1, 4, 5)), "differ in shape"),
        (lambda: dice(torch.full((1, 4, 4), 0.5), torch.zeros(1, 4, 4)), "integer labels"),
        (lambda: jacobian_determinant(torch.zeros(1, 1, 4, 4)), "must have 2 channels"),
        (lambda: folding_ratio(torch.zeros(2, 4, 4)), "flow must have shape"),
        (lambda: cost_volume(torch.rand(1, 4, 8, 8), torch.rand(1, 3, 8, 8)), "channel counts differ"),
        (lambda: cost_volume(torch.rand(1, 4, 8, 8), torch.rand(1, 4, 8, 6)), "spatial shapes differ"),
        (lambda: correlation_pyramid(torch.rand(1, 8, 8, 8), 2), "volume must have shape"),
        (lambda: correlation_pyramid(torch.rand(1, 4, 4, 4, 4), 4), "need fixed axes of at least 8"),
        (lambda: diamond_offsets(-1), "non-negative integer"),
        (lambda: diamond_offsets(1.5), "non-negative integer"),
        (lambda: search_pyramid([torch.rand(1, 8, 8, 8, 8)], torch.zeros(1, 2, 4, 4), 1), "pyramid level 0"),
        (
            lambda: search_features(torch.rand(1, 4, 8, 8), torch.rand(1, 4, 8, 8), torch.zeros(1, 3, 8, 8), 1),
            "2 channels",
        ),
    ],
)
def test_bad_arrays_raise_value_error_naming_the_problem(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_inner_functions_check_shapes_but_leave_values_to_the_edges():
    out = warp(nan_image(), torch.zeros(1, 2, 8, 8))  # no isfinite scan: on a GPU it would wait on every call
    assert torch.isnan(out).any() and torch.isnan(lncc_loss(nan_image(), torch.rand(1, 1, 8, 8)))


@pytest.mark.parametrize("model_cls", [lambda: SearchMorph(SMALL), VoxelMorph])
def test_models_reject_bad_pairs(model_cls):
    model = model_cls()
    with pytest.raises(ValueError, match="spatial shapes differ"):
        model(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 48))
    with pytest.raises(ValueError, match="channel"):
        model(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="divisible by"):
        model(torch.rand(1, 1, 30, 32), torch.rand(1, 1, 30, 32))
    with pytest.raises(ValueError, match="NaN"):
        model(torch.full((1, 1, 32, 32), float("nan")), torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="spatial axes|shape"):
        model(torch.rand(32, 32), torch.rand(32, 32))


def test_register_rejects_bad_arrays():
    model = VoxelMorph()
    with pytest.raises(ValueError, match="2D image"):
        register(np.zeros((4, 16, 16)), np.zeros((4, 16, 16)), model)
    with pytest.raises(ValueError, match="differ in shape"):
        register(np.zeros((16, 16)), np.zeros((16, 20)), model)
    with pytest.raises(ValueError, match="NaN"):
        register(np.full((16, 16), np.nan), np.zeros((16, 16)), model)
    with pytest.raises(ValueError, match="numpy array or torch tensor"):
        register([[0.0]], np.zeros((16, 16)), model)


def test_config_rejects_nonsense():
    with pytest.raises(ValueError, match="iterations"):
        SearchMorphConfig(iterations=0)
    with pytest.raises(ValueError, match="radius"):
        SearchMorphConfig(radius=-1)
