"""echo2d-synthetic (generated cine loops with labels) and echo2d-clip (pydicom's real A4C cine)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from searchmorph_lite.data import load_dataset
from searchmorph_lite.data.echo_clip import convex_hull_mask
from searchmorph_lite.data.echo_synthetic import contraction, es_frame, make_echo_sequence, sector_geometry
from searchmorph_lite.transform import warp


@pytest.fixture(autouse=True)
def shared_data_root(tmp_path_factory, monkeypatch):
    root = tmp_path_factory.getbasetemp() / "searchmorph_data"
    root.mkdir(exist_ok=True)
    monkeypatch.setenv("SEARCHMORPH_DATA", str(root))
    return root


@pytest.fixture(scope="module")
def sequences():
    """One short sequence per view (12 frames), made once for the module."""
    return {view: make_echo_sequence((5, k), view, frames=12) for k, view in enumerate(("2CH", "3CH", "4CH"))}


def area(labels: torch.Tensor, value: int) -> torch.Tensor:
    """Pixel count (T,) of ``value`` in each frame of labels (T, 1, H, W)."""
    return (labels == value).flatten(1).sum(1)


def ncc(a: torch.Tensor, b: torch.Tensor) -> float:
    """Global normalised cross-correlation of two images (brute force)."""
    a, b = a.flatten().double(), b.flatten().double()
    return float(((a - a.mean()) * (b - b.mean())).mean() / (a.std() * b.std()))


def jacobian_determinant(flow: torch.Tensor) -> np.ndarray:
    f = flow.double().numpy()
    dr, dc = np.gradient(f[0]), np.gradient(f[1])
    return (1 + dr[0]) * (1 + dc[1]) - dr[1] * dc[0]


def test_contraction_goes_ed_es_ed():
    values = [contraction(t, 20) for t in range(20)]
    assert values[0] == 0.0 and values[-1] == pytest.approx(0.0, abs=1e-12)
    assert values[es_frame(20)] == 1.0 and es_frame(20) == 8
    assert int(np.argmax(values)) == es_frame(20)


def test_synthetic_items_have_shapes_ranges_and_labels():
    ds = load_dataset("echo2d-synthetic", "train", num_sequences=3, frames=6)
    assert len(ds) == 3 * 5 and ds.num_sequences == 3
    assert [ds[k]["view"] for k in (0, 5, 10)] == ["2CH", "3CH", "4CH"]
    item = ds[2]
    assert item["frame"] == 3
    for key in ("moving", "fixed"):
        assert item[key].shape == (1, 160, 160) and item[key].dtype == torch.float32
        assert 0.0 <= item[key].min() and item[key].max() <= 1.0 and item[key].mean() > 0.03
    for key in ("moving_labels", "fixed_labels"):
        assert item[key].dtype == torch.int64 and set(item[key].unique().tolist()) == {0, 1, 2}


@pytest.mark.parametrize("view", ["2CH", "3CH", "4CH"])
def test_blood_pool_shrinks_to_es_and_returns_to_ed(sequences, view):
    seq = sequences[view]
    blood = area(seq["labels"], 1).float()
    assert int(torch.argmin(blood)) == seq["es_frame"]
    assert 0.5 < blood[seq["es_frame"]] / blood[0] < 0.8  # fractional area change 20-50 %
    assert torch.equal(seq["labels"][0], seq["labels"][-1])  # one full cycle


@pytest.mark.parametrize("view", ["2CH", "3CH", "4CH"])
def test_myocardium_keeps_its_area_while_contracting(sequences, view):
    myo = area(sequences[view]["labels"], 2).float()
    assert (myo / myo[0]).min() > 0.8


@pytest.mark.parametrize("view", ["2CH", "3CH", "4CH"])
def test_true_fields_carry_ed_labels_and_image_to_frame_t(sequences, view):
    seq = sequences[view]
    frames, labels, flows = seq["frames"], seq["labels"], seq["flows"]
    t = seq["es_frame"]
    warped_labels = warp(labels[:1].float(), flows[t : t + 1], mode="nearest").long()
    agreement = (warped_labels == labels[t : t + 1]).float().mean()
    assert agreement > 0.999
    warped = warp(frames[:1], flows[t : t + 1])[0]
    assert ncc(warped, frames[t]) > ncc(frames[0], frames[t]) + 0.05


@pytest.mark.parametrize("view", ["2CH", "3CH", "4CH"])
def test_true_fields_do_not_fold(sequences, view):
    for flow in sequences[view]["flows"]:
        assert jacobian_determinant(flow).min() > 0.2
    assert sequences[view]["flows"].norm(dim=1).max() > 3.0  # the heart really moves


def test_echo_contrast_and_sector(sequences):
    seq = sequences["4CH"]
    image, labels = seq["frames"][0, 0], seq["labels"][0, 0]
    assert image[labels == 2].mean() > 3 * image[labels == 1].mean()  # myocardium bright, blood dark
    _, inside = sector_geometry(160)
    assert image[~torch.from_numpy(inside)].abs().max() == 0.0
    assert labels[~torch.from_numpy(inside)].max() == 0


def test_items_are_frames_of_their_sequence_and_deterministic():
    ds = load_dataset("echo2d-synthetic", "val", num_sequences=2, frames=5, seed=3)
    again = load_dataset("echo2d-synthetic", "val", num_sequences=2, frames=5, seed=3)
    seq = ds.sequence(1)
    item = ds[4 + 2]  # sequence 1, frame 3
    assert item["subject"] == seq["subject"] and item["frame"] == 3
    assert torch.allclose(item["moving"], seq["frames"][0], atol=1e-6)
    assert torch.allclose(item["fixed"], seq["frames"][3], atol=1e-6)
    assert torch.equal(item["fixed_labels"], seq["labels"][3])
    assert torch.equal(again[6]["fixed"], item["fixed"])


def test_synthetic_splits_and_seeds_make_different_subjects():
    a = load_dataset("echo2d-synthetic", "train", num_sequences=1, frames=4)[0]
    b = load_dataset("echo2d-synthetic", "test", num_sequences=1, frames=4)[0]
    c = load_dataset("echo2d-synthetic", "train", num_sequences=1, frames=4, seed=1)[0]
    assert a["subject"] != b["subject"]
    assert not torch.allclose(a["moving"], b["moving"], atol=1e-3)
    assert not torch.allclose(a["moving"], c["moving"], atol=1e-3)


def test_synthetic_options_views_num_pairs_and_size():
    ds = load_dataset("echo2d-synthetic", "test", num_sequences=4, frames=5, views=["3CH"], num_pairs=6, image_size=96)
    assert len(ds) == 6
    assert {ds[k]["view"] for k in range(len(ds))} == {"3CH"}
    assert ds[0]["moving"].shape == (1, 96, 96)
    with pytest.raises(ValueError, match="views"):
        load_dataset("echo2d-synthetic", "test", views=["5CH"])
    with pytest.raises(ValueError, match="frames"):
        load_dataset("echo2d-synthetic", "test", frames=2)


def test_default_collate_batches_sequence_items():
    ds = load_dataset("echo2d-synthetic", "train", num_sequences=2, frames=4)
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["moving"].shape == (4, 1, 160, 160) and batch["fixed_labels"].shape == (4, 1, 160, 160)
    assert batch["frame"].tolist() == [1, 2, 3, 1] and len(batch["view"]) == 4


def test_clip_is_thirty_grey_frames_cropped_to_the_sector():
    ds = load_dataset("echo2d-clip", "test")
    assert len(ds) == 29 and ds.num_sequences == 1
    seq = ds.sequence(0)
    frames = seq["frames"]
    assert frames.shape == (30, 1, 160, 160) and "labels" not in seq
    assert seq["view"] == "4CH" and seq["frame_time_ms"] == pytest.approx(33.333, abs=0.01)
    assert frames.min() >= 0.0 and frames.max() == 1.0
    assert 0.05 < frames.mean() < 0.4
    assert frames[:, :, :12, :12].max() == 0.0 and frames[:, :, :12, -12:].max() == 0.0  # outside the sector
    assert (frames[0] - frames[12]).abs().mean() > 0.01  # the heart moves between frames
    item = ds[4]
    assert set(item) == {"moving", "fixed", "view", "subject", "frame"} and item["frame"] == 5
    assert torch.equal(item["moving"], frames[0]) and torch.equal(item["fixed"], frames[5])


def test_clip_frames_option_and_single_split():
    ds = load_dataset("echo2d-clip", "test", frames=10, image_size=64)
    assert len(ds) == 9 and ds[0]["moving"].shape == (1, 64, 64)
    assert ds.sequence(0)["frame_time_ms"] == pytest.approx(33.333 * 29 / 9, abs=0.1)
    with pytest.raises(ValueError, match="only a 'test' split"):
        load_dataset("echo2d-clip", "train")


def test_convex_hull_mask_fills_the_notch_of_an_l_shape():
    mask = np.zeros((12, 12), bool)
    mask[2:10, 2:4] = True  # vertical bar
    mask[8:10, 2:10] = True  # horizontal bar
    hull = convex_hull_mask(mask)
    assert hull[mask].all()  # contains the shape
    assert hull[7, 4] and hull[8, 5]  # the notch next to the corner is filled
    assert not hull[3, 8] and not hull[0, 0]  # beyond the diagonal stays out
    assert hull.sum() == pytest.approx(mask.sum() + 0.5 * 6 * 6, abs=8)


def test_wide_variability_changes_the_scan_but_keeps_exact_labels_and_determinism():
    std = load_dataset("echo2d-synthetic", "train", num_sequences=2, frames=6, image_size=64)
    wide = load_dataset("echo2d-synthetic", "train", num_sequences=2, frames=6, image_size=64, variability="wide")
    a, b, again = std.sequence(1), wide.sequence(1), wide.sequence(1)
    assert torch.equal(b["frames"], again["frames"]) and not torch.equal(a["frames"], b["frames"])
    assert b["frames"].min() >= 0 and b["frames"].max() <= 1
    assert set(b["labels"].unique().tolist()) == {0, 1, 2}
    # labels of frame t are frame 0's labels carried by the true field, as in the standard simulator
    moved = warp(b["labels"][:1].float(), b["flows"][3:4], mode="nearest").long()
    assert (moved == b["labels"][3:4]).float().mean() > 0.97
    with pytest.raises(ValueError, match="variability"):
        load_dataset("echo2d-synthetic", "train", variability="extreme")
