"""load_pretrained: names, errors, and (for every shipped checkpoint) a working model in eval mode."""

import numpy as np
import pytest

from searchmorph_lite import load_pretrained, register
from searchmorph_lite.pretrained import PRETRAINED, available_pretrained, pretrained_path


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(ValueError, match="brain2d-voxelmorph"):
        load_pretrained("mnist")


def test_missing_file_says_how_to_get_it(monkeypatch, tmp_path):
    import searchmorph_lite.pretrained as pre

    monkeypatch.setattr(pre, "pretrained_path", lambda name: tmp_path / f"{name}.pt")
    with pytest.raises(FileNotFoundError, match="python -m searchmorph_lite train"):
        load_pretrained("brain2d")


def test_every_pretrained_model_is_shipped():
    # the skips below are for checkouts without the model files; this one check fails when a file goes missing,
    # so a missing model is a failure once rather than a skip everywhere
    assert available_pretrained() == list(PRETRAINED)


@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_shipped_model_loads_in_eval_mode_and_registers(name):
    if not pretrained_path(name).is_file():
        pytest.skip(f"{name} is not shipped in this checkout (available: {available_pretrained()})")
    model = load_pretrained(name, device="cpu")
    assert not model.training and type(model).__name__ == PRETRAINED[name]
    assert {"data", "epochs", "hardware"} <= set(model.metadata)
    rng = np.random.default_rng(0)
    shape = (100, 90) if model.ndim == 2 else (30, 28, 26)  # any size: register pads and crops back
    warped, flow = register(rng.random(shape), rng.random(shape), model)
    assert warped.shape == shape and flow.shape == (model.ndim, *shape) and np.isfinite(flow).all()


def _shipped(name):
    if not pretrained_path(name).is_file():
        pytest.skip(f"{name} is not shipped in this checkout")
    return load_pretrained(name, device="cpu")


def _label_dice_through_register(model, item, **register_kwargs):
    """(Dice before, Dice after) of one labelled pair registered with the numpy API (normalize, pad, crop)."""
    import torch

    from searchmorph_lite import dice, warp

    labels = [int(v) for v in torch.unique(item["fixed_labels"]) if v != 0]
    _, flow = register(item["moving"][0].numpy(), item["fixed"][0].numpy(), model, **register_kwargs)
    warped = warp(item["moving_labels"][None].float(), torch.from_numpy(flow)[None], mode="nearest").round().long()
    before = dice(item["moving_labels"][None], item["fixed_labels"][None], labels).nanmean().item()
    after = dice(warped, item["fixed_labels"][None], labels).nanmean().item()
    return before, after


@pytest.mark.parametrize("name", ["brain2d", "brain2d-voxelmorph"])
def test_brain_models_improve_dice_on_unseen_pairs_of_another_size(name):
    # virtual subjects of the held-out test slabs with other seeds than the embedded split (123), at a size the
    # models never saw in training
    from searchmorph_lite.data import load_dataset

    model = _shipped(name)
    pairs = load_dataset("brain2d-subjects", "test", seed=123, num_pairs=6, image_size=(176, 144))
    scores = np.array([_label_dice_through_register(model, pairs[i]) for i in range(len(pairs))])
    assert scores[:, 1].mean() > scores[:, 0].mean() + 0.02, scores


def test_brain2d_recommends_a_refinement_that_raises_dice_on_unseen_pairs():
    from searchmorph_lite.data import load_dataset

    model = _shipped("brain2d")
    assert model.metadata.get("refine_steps", 0) > 0, "brain2d records no recommended refinement"
    pairs = load_dataset("brain2d-subjects", "test", seed=321, num_pairs=3)
    alone = [_label_dice_through_register(model, pairs[i])[1] for i in range(len(pairs))]
    refined = [_label_dice_through_register(model, pairs[i], refine_steps="auto")[1] for i in range(len(pairs))]
    assert np.mean(refined) > np.mean(alone), (alone, refined)


@pytest.mark.parametrize("name", ["echo2d", "echo2d-voxelmorph"])
def test_echo_models_improve_dice_on_unseen_sequences(name):
    from searchmorph_lite.data import load_dataset

    model = _shipped(name)
    pairs = load_dataset("echo2d-synthetic", "test", seed=321, num_sequences=3, frames=6, image_size=128)
    scores = np.array([_label_dice_through_register(model, pairs[i]) for i in range(0, len(pairs), 2)])
    assert scores[:, 1].mean() > scores[:, 0].mean() + 0.02, scores


def test_echo2d_recommends_a_refinement_that_raises_similarity_and_keeps_dice_on_unseen_wide_sequences():
    # on synthetic echo the refinement lowers the model's loss (MSE + smoothness): image similarity rises, label
    # Dice stays where the network put it (speckle can be matched without moving the wall)
    import torch

    from searchmorph_lite import dice, folding_ratio, warp
    from searchmorph_lite.data import load_dataset
    from searchmorph_lite.losses import local_ncc

    model = _shipped("echo2d")
    assert model.metadata.get("refine_steps", 0) > 0, "echo2d records no recommended refinement"
    pairs = load_dataset("echo2d-synthetic", "test", seed=321, num_sequences=2, frames=6, variability="wide")
    rows = {0: [], "auto": []}
    for i in range(0, len(pairs), 3):
        item = pairs[i]
        for steps in rows:
            warped, flow = register(item["moving"][0].numpy(), item["fixed"][0].numpy(), model, refine_steps=steps)
            f = torch.from_numpy(flow)[None]
            labels = warp(item["moving_labels"][None].float(), f, mode="nearest").round().long()
            d = dice(labels, item["fixed_labels"][None], [1, 2]).nanmean().item()
            ncc = local_ncc(torch.from_numpy(warped)[None, None].float(), item["fixed"][None]).mean().item()
            rows[steps].append((d, ncc, folding_ratio(f).item()))
    alone, refined = np.array(rows[0]), np.array(rows["auto"])
    assert refined[:, 1].mean() > alone[:, 1].mean(), (alone, refined)
    assert refined[:, 0].mean() > alone[:, 0].mean() - 0.01 and refined[:, 2].max() <= 0.05, (alone, refined)


@pytest.mark.parametrize("name", ["echo2d", "echo2d-voxelmorph"])
def test_echo_models_raise_ncc_on_the_real_clip(name):
    # the real apical four-chamber cine shipped with pydicom: no labels, so image similarity before and after
    import torch

    from searchmorph_lite.data import load_dataset
    from searchmorph_lite.losses import local_ncc

    model = _shipped(name)
    clip = load_dataset("echo2d-clip", "test", num_pairs=6)
    before, after = [], []
    for i in range(len(clip)):
        m, f = clip[i]["moving"][0], clip[i]["fixed"][0]
        warped, _ = register(m.numpy(), f.numpy(), model)
        before.append(local_ncc(m[None, None], f[None, None]).mean().item())
        after.append(local_ncc(torch.from_numpy(warped)[None, None].float(), f[None, None]).mean().item())
    assert np.mean(after) > np.mean(before), (before, after)


def test_model_card_of_a_shipped_model_names_its_data_budget_and_hardware():
    from searchmorph_lite.provenance import card_of, describe

    card = card_of(load_pretrained("brain2d", device="cpu"))
    assert card["data"] == "brain2d-subjects" and len(card["image_size"]) == 2 and card["pairs"] > 0
    assert card["epochs"] >= 1 and card["batch_size"] >= 1 and card["seconds"] > 0
    line = describe("SearchMorph", card)
    assert line.startswith("SearchMorph: pretrained, brain2d-subjects ") and f"{card['pairs']} pairs" in line


def _training_script(name: str):
    """training/<name>.py imported as a module (the folder on sys.path while it loads: scripts import each other)."""
    import importlib.util
    import sys
    from pathlib import Path

    folder = str(Path(__file__).resolve().parents[1] / "training")
    sys.path.insert(0, folder)
    try:
        spec = importlib.util.spec_from_file_location(name, f"{folder}/{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(folder)
    return module


def test_choose_refinement_scores_every_setting_on_each_validation_set_and_keeps_folding_in_bounds(tmp_path):
    import json

    script = _training_script("choose_refinement")
    shipped = pretrained_path("brain2d")
    if not shipped.is_file():
        pytest.skip("brain2d is not shipped in this checkout")
    table = script.main(["--checkpoint", str(shipped), "--pairs", "1", "--steps", "4", "--lrs", "0.5", "8",
                         "--levels", "2", "--out", str(tmp_path / "t.json")])  # fmt: skip
    assert set(table["sets"]) == {"validation (in distribution)", "inverted contrast", "2x deformation", "far slices"}
    assert [(s["lr"], s["levels"], s["steps"]) for s in table["settings"]] == [(0.5, 2, 4), (8.0, 2, 4)]
    for row in table["settings"]:  # the mean is over the sets, each set weighted equally
        assert row["dice"] == pytest.approx(np.mean([row[name]["dice"] for name in table["sets"]]))
    best = max(table["settings"], key=lambda s: s["dice"])
    assert table["choice"]["lr"] == best["lr"] or best["folding"] > table["max_folding"]
    assert json.loads((tmp_path / "t.json").read_text())["choice"] == table["choice"]
    with pytest.raises(SystemExit):
        script.main(["--checkpoint", str(shipped), "--lrs", "0"])


def test_brain3d_refinement_sets_differ_from_the_validation_split_and_use_no_test_grid():
    from pathlib import Path

    import torch
    import yaml

    root = Path(__file__).resolve().parents[1]
    script = _training_script("choose_refinement")
    config = yaml.safe_load((root / "configs" / "brain3d_searchmorph.yaml").read_text())
    options = script.set_options(config)
    assert all(o.get("grids", "split") != "test" for o in options.values())
    sets = script.load_sets("brain3d", options, 1)
    base = sets.pop(script.IN_DISTRIBUTION)[0]
    assert len(sets) == 4
    for name, pairs in sets.items():  # each set changes the pairs: none repeats the in-distribution one
        assert not torch.equal(pairs[0]["moving"], base["moving"]), name


def test_choose_refinement_files_scores_each_setting_through_register_on_nifti_files():
    import searchmorph_lite as sm
    from searchmorph_lite.refine import REFINE_DEFAULTS

    script = _training_script("choose_refinement")
    if not pretrained_path("brain3d").is_file():
        pytest.skip("brain3d is not shipped in this checkout")
    model = sm.load_pretrained("brain3d", device="cpu")
    shipped_lr = model.metadata.get("refine_lr")
    sets = script.file_sets(model.metadata["train_config"], 1)
    assert list(sets) == list(script.FILE_SETS["brain3d"])
    assert all(tuple(pairs[0]["fixed"].shape[1:]) == (80, 96, 80) for pairs in sets.values())  # 2 mm, not the frame
    one = {"validation files": sets["validation files"]}
    net, big = script.score_files(model, [(None, None, 0), (0.5, 1, 3)], one)
    assert model.metadata.get("refine_lr") == shipped_lr  # the tried lr was put back
    assert REFINE_DEFAULTS["lr"] != 0.5
    d_net, d_big = net["validation files"]["per_pair"][0]["dice"], big["validation files"]["per_pair"][0]["dice"]
    assert 0.3 < d_net < 1 and d_big != d_net  # the setting reached register's refinement
    with pytest.raises(SystemExit, match="--files"):
        script.file_sets({"dataset": "brain2d-subjects"}, 1)


def test_ship_tests_a_3d_model_on_the_affine_it_was_trained_for_and_says_so():
    ship = _training_script("ship_pretrained")
    options = {"num_pairs": 32, "voxel_mm": 4, "residual_affine": 0.33, "contrast": "t1", "seed": 3}
    assert ship.test_options(options) == {"voxel_mm": 4, "residual_affine": 0.33}
    assert "0.33 of the default jitter" in ship.residual_words({"dataset_options": options})
    assert ship.residual_words({"dataset_options": {"num_pairs": 32, "voxel_mm": 4}}) == ""
