"""brain2d-subjects: honest splits (slabs with a gap), two virtual subjects per pair, exact labels, contrasts."""

import pytest
import torch

from searchmorph_lite.data import load_dataset
from searchmorph_lite.data.brain_subjects import FAR_Z_MM, GAP_MM, Z_RANGE_MM, split_slices, subject_deformation
from searchmorph_lite.metrics import jacobian_determinant


def test_splits_are_slabs_with_a_gap_and_far_slices_lie_outside_training():
    train, val, test = (set(split_slices(s)) for s in ("train", "val", "test"))
    assert train.isdisjoint(val) and train.isdisjoint(test) and val.isdisjoint(test)
    held = val | test
    assert min(abs(z - h) for z in train for h in held) > GAP_MM
    assert len(train) > 40 and len(val) >= 9 and len(test) >= 9
    assert all(z < Z_RANGE_MM[0] or z > Z_RANGE_MM[1] for z in FAR_Z_MM)


@pytest.fixture(scope="module")
def small():
    return load_dataset("brain2d-subjects", "test", num_pairs=6, image_size=(96, 80))


def test_items_are_deterministic_and_pair_two_subjects_of_one_slab(small):
    a, b = small[3], small[3]
    assert torch.equal(a["moving"], b["moving"]) and torch.equal(a["fixed_labels"], b["fixed_labels"])
    assert a["moving"].shape == (1, 96, 80) and a["moving_labels"].dtype == torch.int64
    for i in range(len(small)):
        it = small[i]
        assert {it["moving_z_mm"], it["fixed_z_mm"]} <= set(split_slices("test"))
        assert abs(it["moving_z_mm"] - it["fixed_z_mm"]) <= 1
        assert not torch.equal(it["moving_labels"], it["fixed_labels"])  # both subjects are deformed
        assert 0.0 <= it["moving"].min() and it["moving"].max() <= 1.0


def test_labels_follow_the_image_brain_outline(small):
    it = small[0]
    inside = it["moving_labels"] > 0
    assert it["moving"][inside].mean() > 5 * it["moving"][~inside].mean()


@pytest.mark.parametrize("contrast", ["t1", "synthetic", "inverted"])
def test_contrasts_change_intensities_not_labels(contrast):
    ds = load_dataset("brain2d-subjects", "val", num_pairs=2, image_size=(64, 48), contrast=contrast, artifacts=False)
    ref = load_dataset("brain2d-subjects", "val", num_pairs=2, image_size=(64, 48), contrast="t1", artifacts=False)
    assert ds[1]["contrast"] == contrast
    assert torch.equal(ds[1]["moving_labels"], ref[1]["moving_labels"])
    if contrast == "inverted":  # CSF is bright and white matter dark, the opposite of T1
        it = ds[1]
        lab, img = it["moving_labels"], it["moving"]
        assert img[lab == 1].mean() > img[lab == 3].mean()


def test_subject_deformations_never_fold():
    rng = __import__("numpy").random.default_rng(0)
    for _ in range(10):
        flow = subject_deformation(rng, (96, 80), 20.0)
        assert float(jacobian_determinant(flow[None]).min()) > 0.2


def test_moving_only_deformation_keeps_the_fixed_subject_undeformed():
    ds = load_dataset("brain2d-subjects", "train", num_pairs=2, image_size=(64, 48), deform="moving", artifacts=False)
    assert ds[0]["fixed"].shape == (1, 64, 48)


@pytest.mark.parametrize(
    "options",
    [{"contrast": "t3"}, {"deform": "fixed"}, {"slices": "near"}, {"artifacts": "yes"}, {"max_displacement": 99}],
)
def test_bad_options_are_refused_with_a_clear_message(options):
    with pytest.raises(ValueError):
        load_dataset("brain2d-subjects", "val", **options)


@pytest.mark.parametrize("dataset", ["brain2d", "brain2d-subjects"])
def test_near_copy_table_equals_the_brute_force_over_every_pair_of_images(dataset):
    from searchmorph_lite import dice
    from searchmorph_lite.data import load_dataset
    from searchmorph_lite.data.brain_subjects import near_copy_table

    options = {"image_size": [64, 48]}
    table = near_copy_table(("val", "test"), pairs=3, train_pairs=5, dataset=dataset, **options)
    if dataset == "brain2d-subjects":
        options.update(contrast="t1", artifacts=False)
    train = load_dataset(dataset, "train", num_pairs=5, **options)
    for split in ("val", "test"):
        held = load_dataset(dataset, split, num_pairs=3, **options)
        best_dice, best_mse = 0.0, float("inf")
        for i in range(3):
            for j in range(5):
                a, b = held[i], train[j]
                d = torch.nanmean(dice(a["moving_labels"][None], b["moving_labels"][None], [1, 2, 3])[0]).item()
                best_dice = max(best_dice, d)
                best_mse = min(best_mse, ((a["moving"] - b["moving"]) ** 2).mean().item())
        assert table[split]["max_label_dice"] == pytest.approx(best_dice, abs=1e-6)
        assert table[split]["min_mse"] == pytest.approx(best_mse, abs=1e-6)


def test_sample_returns_the_item_and_the_fields_that_made_its_labels(small):
    from searchmorph_lite.transform import warp

    for i in range(3):
        item, s = small[i], small.sample(i)
        assert all(torch.equal(item[k], s[k]) for k in ("moving", "fixed", "moving_labels", "fixed_labels"))
        for side in ("moving", "fixed"):
            source = small.source_labels(s[f"{side}_z_mm"])[None].float()
            rebuilt = warp(source, s[f"{side}_flow"][None], mode="nearest")[0].long()
            assert torch.equal(rebuilt, s[f"{side}_labels"]), (i, side)
    with pytest.raises(ValueError, match="z_mm must be one of this split's slices"):
        small.source_labels(1000)
    with pytest.raises(IndexError, match="out of range"):
        small.sample(len(small))
