"""brain3d: 3D virtual subjects from MNI152 at 2 mm: shapes, determinism, exact labels, no folding, honest splits."""

import numpy as np
import pytest
import torch

from searchmorph_lite.data import load_dataset
from searchmorph_lite.data.brain3d import GRIDS, NATIVE_SIZE, subject_deformation_3d
from searchmorph_lite.metrics import jacobian_determinant


@pytest.fixture(scope="module")
def small():
    return load_dataset("brain3d", "test", num_pairs=2)


def test_items_are_deterministic_volumes_with_labels(small):
    a, b = small[1], small[1]
    assert NATIVE_SIZE == (80, 96, 80) and all(n % 16 == 0 for n in NATIVE_SIZE)
    assert a["moving"].shape == a["fixed"].shape == (1, *NATIVE_SIZE)
    assert a["moving_labels"].dtype == torch.int64 and int(a["moving_labels"].max()) == 3
    assert torch.equal(a["moving"], b["moving"]) and torch.equal(a["fixed_labels"], b["fixed_labels"])
    assert not torch.equal(a["moving_labels"], a["fixed_labels"])  # two subjects, both deformed
    assert 0.0 <= a["moving"].min() and a["moving"].max() <= 1.0
    inside = a["moving_labels"] > 0
    assert a["moving"][inside].mean() > 5 * a["moving"][~inside].mean()


def test_splits_draw_different_subjects_and_test_uses_unseen_control_grids():
    train = load_dataset("brain3d", "train", num_pairs=1, contrast="t1", artifacts=False)[0]
    test = load_dataset("brain3d", "test", num_pairs=1, contrast="t1", artifacts=False)[0]
    assert not torch.equal(train["moving_labels"], test["moving_labels"])
    assert set(GRIDS["test"]).isdisjoint(GRIDS["train"])


def test_out_of_distribution_options_change_only_what_they_name():
    base = dict(num_pairs=1, voxel_mm=4, artifacts=False)
    default, split = (load_dataset("brain3d", "val", **base, **extra)[0] for extra in ({}, {"grids": "split"}))
    assert torch.equal(default["moving"], split["moving"])  # "split" is the default: runs keep their data
    # unseen control grids: neither training's nor test's, the same contrast draw, another deformation
    assert set(GRIDS["unseen"]).isdisjoint(GRIDS["train"]) and set(GRIDS["unseen"]).isdisjoint(GRIDS["test"])
    unseen = load_dataset("brain3d", "val", grids="unseen", **base)[0]
    assert unseen["contrast"] == default["contrast"]
    assert not torch.equal(unseen["moving_labels"], default["moving_labels"])
    # inverted: 1 - T1 inside the brain (before the shared gamma and rescale), so the tissue order flips
    t1, inverted = (load_dataset("brain3d", "val", contrast=c, **base)[0] for c in ("t1", "inverted"))
    assert inverted["contrast"] == "inverted" and torch.equal(inverted["moving_labels"], t1["moving_labels"])
    labels = t1["moving_labels"][0]
    means = {c: [float(item["moving"][0][labels == k].mean()) for k in (1, 2, 3)] for c, item in
             (("t1", t1), ("inverted", inverted))}  # fmt: skip
    assert means["t1"][0] < means["t1"][1] < means["t1"][2]  # T1: CSF < grey < white
    assert means["inverted"][0] > means["inverted"][1] > means["inverted"][2]
    assert float(inverted["moving"][0][labels == 0].max()) == 0.0
    mixed = load_dataset("brain3d", "train", num_pairs=6, voxel_mm=4, artifacts=False)  # training's contrast
    assert {mixed[i]["contrast"] for i in range(6)} == {"t1", "synthetic"}  # never "inverted"
    with pytest.raises(ValueError, match="grids"):
        load_dataset("brain3d", "val", grids="test")


def test_subject_deformations_never_fold():
    rng = np.random.default_rng(0)
    for grids in (GRIDS["train"], GRIDS["test"]):
        flow = subject_deformation_3d(rng, (32, 40, 32), 10.0, grids)
        assert flow.shape == (3, 32, 40, 32)
        assert float(jacobian_determinant(flow[None]).min()) > 0.2


def test_options_are_checked():
    with pytest.raises(ValueError, match="contrast"):
        load_dataset("brain3d", "val", contrast="t2")
    with pytest.raises(ValueError, match="max_displacement"):
        load_dataset("brain3d", "val", max_displacement=50)
    with pytest.raises(ValueError, match="voxel_mm"):
        load_dataset("brain3d", "val", voxel_mm=3)


def test_4mm_volumes_are_block_means_of_the_2mm_ones_and_hold_the_whole_brain():
    from searchmorph_lite.data.brain3d import SIZES, _block_mean, template_volumes

    v4 = template_volumes(4)
    assert v4["t1"].shape == SIZES[4] and all(n % 16 == 0 for n in SIZES[4])
    brain = v4["labels"] > 0
    for axis in range(3):  # a margin of background on every face: the crop cuts no brain
        other = tuple(a for a in range(3) if a != axis)
        assert not brain.any(axis=other)[[0, -1]].any()
    assert np.isclose(_block_mean(np.arange(8.0).reshape(2, 2, 2))[0, 0, 0], 3.5)
    item = load_dataset("brain3d", "test", num_pairs=1, voxel_mm=4)[0]
    assert item["moving"].shape == (1, *SIZES[4]) and int(item["moving_labels"].max()) == 3
    assert load_dataset("brain3d", "test", voxel_mm=4).max_displacement == 2.5  # 10 mm in 4 mm voxels
