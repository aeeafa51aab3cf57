"""brain2d: MNI152 slices as atlas-based pairs (shapes, ranges, labels, determinism, splits, warp consistency)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from searchmorph_lite.data import load_dataset
from searchmorph_lite.data.brain2d import SPLIT_OFFSETS, load_mni152_slab
from searchmorph_lite.data.summary import summarize
from searchmorph_lite.transform import warp


@pytest.fixture(autouse=True)
def shared_data_root(tmp_path_factory, monkeypatch):
    """One data root per test session, so the MNI slab is built once and then read from its cache."""
    root = tmp_path_factory.getbasetemp() / "searchmorph_data"
    root.mkdir(exist_ok=True)
    monkeypatch.setenv("SEARCHMORPH_DATA", str(root))
    return root


def jacobian_determinant(flow: torch.Tensor) -> np.ndarray:
    """det(I + grad u) (H, W) by central differences: a brute-force reference for folding checks."""
    f = flow.double().numpy()
    dr, dc = np.gradient(f[0]), np.gradient(f[1])
    return (1 + dr[0]) * (1 + dc[1]) - dr[1] * dc[0]


def test_items_have_paper_size_ranges_and_label_set():
    ds = load_dataset("brain2d", "train", num_pairs=5)
    assert len(ds) == 5
    for i in range(len(ds)):
        item = ds[i]
        for key in ("moving", "fixed"):
            assert item[key].shape == (1, 192, 160) and item[key].dtype == torch.float32
            assert 0.0 <= item[key].min() and item[key].max() <= 1.0 and item[key].max() > 0.5
        for key in ("moving_labels", "fixed_labels"):
            assert item[key].shape == (1, 192, 160) and item[key].dtype == torch.int64
            assert set(item[key].unique().tolist()) == {0, 1, 2, 3}


def test_fixed_image_has_t1_contrast_in_its_labels():
    item = load_dataset("brain2d", "val", num_pairs=1)[0]
    image, labels = item["fixed"][0], item["fixed_labels"][0]
    mean = [image[labels == k].mean().item() for k in range(4)]
    assert mean[0] < 0.02  # background is black
    assert mean[1] < mean[2] < mean[3]  # T1: CSF < grey < white matter


def test_fixed_label_fractions_are_brain_like():
    labels = load_dataset("brain2d", "test", num_pairs=1)[0]["fixed_labels"]
    fractions = torch.bincount(labels.flatten(), minlength=4).double() / labels.numel()
    assert 0.25 < fractions[0] < 0.5
    assert fractions[1] > 0.02 and fractions[2] > 0.15 and fractions[3] > 0.15


def test_same_seed_gives_same_items_and_other_seed_differs():
    a = load_dataset("brain2d", "train", num_pairs=3, seed=7)
    b = load_dataset("brain2d", "train", num_pairs=3, seed=7)
    c = load_dataset("brain2d", "train", num_pairs=3, seed=8)
    assert torch.equal(a[2]["moving"], b[2]["moving"])
    assert torch.equal(a[2]["moving_labels"], b[2]["moving_labels"])
    assert not torch.allclose(a[2]["moving"], c[2]["moving"], atol=1e-3)


def test_item_does_not_depend_on_access_order():
    ds = load_dataset("brain2d", "train", num_pairs=4)
    first = ds[3]["moving"]
    _ = [ds[i] for i in range(4)]
    assert torch.equal(first, ds[3]["moving"])


def test_splits_share_no_source_slice_and_no_subject():
    sets = {s: set(v) for s, v in SPLIT_OFFSETS.items()}
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    assert 0 not in sets["train"] | sets["val"] | sets["test"]  # the atlas slice is never a moving subject
    items = {s: [load_dataset("brain2d", s, num_pairs=3)[i] for i in range(3)] for s in ("train", "val", "test")}
    subjects = [it["subject"] for its in items.values() for it in its]
    assert len(set(subjects)) == len(subjects)
    for s, its in items.items():
        assert {it["slice_offset_mm"] for it in its} <= sets[s]
    assert not torch.allclose(items["val"][0]["moving"], items["test"][0]["moving"], atol=1e-3)


def test_moving_labels_are_the_source_labels_warped_with_the_images_field():
    ds = load_dataset("brain2d", "train", num_pairs=4)
    slab = load_mni152_slab()
    for i in range(4):
        item = ds.sample(i, with_flow=True)
        k = int(np.nonzero(slab["offsets"] == item["slice_offset_mm"])[0][0])
        source = torch.from_numpy(slab["images"][k])[None, None]
        source_labels = torch.from_numpy(slab["labels"][k].astype(np.float32))[None, None]
        flow = item["flow"][None]
        expected_labels = warp(source_labels, flow, mode="nearest")[0].long()
        assert torch.equal(item["moving_labels"], expected_labels)
        # The image went through the same field: it matches the warped source far better than the unwarped one.
        warped = warp(source, flow)[0].flatten()
        moving = item["moving"].flatten()
        corr_warped = torch.corrcoef(torch.stack([warped, moving]))[0, 1]
        corr_source = torch.corrcoef(torch.stack([source.flatten(), moving]))[0, 1]
        assert corr_warped > 0.95 and corr_warped > corr_source + 0.02
        # and its labels still mark T1 tissue classes in the moving image
        mean = [item["moving"][item["moving_labels"] == c].mean().item() for c in (1, 2, 3)]
        assert mean[0] < mean[1] < mean[2]


def test_generated_fields_are_smooth_and_do_not_fold():
    ds = load_dataset("brain2d", "train", num_pairs=8)
    for i in range(8):
        flow = ds.sample(i)["flow"]
        assert jacobian_determinant(flow).min() > 0.2
        assert 1.0 < flow.norm(dim=0).max() < 16.0


def test_image_size_option_scales_images_and_labels():
    item = load_dataset("brain2d", "val", num_pairs=1, image_size=(96, 80))[0]
    assert item["moving"].shape == item["fixed"].shape == (1, 96, 80)
    assert set(item["moving_labels"].unique().tolist()) <= {0, 1, 2, 3}
    assert item["fixed"].max() > 0.5


@pytest.mark.parametrize(
    "options", [{"num_pairs": 0}, {"image_size": (4, 4)}, {"max_displacement": -1.0}, {"seed": -3}]
)
def test_bad_options_raise_value_error(options):
    with pytest.raises(ValueError):
        load_dataset("brain2d", "train", **options)


def test_index_past_the_end_raises_index_error():
    ds = load_dataset("brain2d", "val", num_pairs=2)
    with pytest.raises(IndexError, match="out of range"):
        ds[2]


def test_summary_counts_pairs_and_label_fractions():
    s = summarize("brain2d", "val", num_pairs=2)
    assert s["pairs"] == 2 and s["sequences"] is None and s["size"] == (192, 160)
    assert len(s["label_fractions"]) == 4 and sum(s["label_fractions"]) == pytest.approx(1.0, abs=1e-3)
    assert min(s["label_fractions"]) > 0.02
