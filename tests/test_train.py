"""The training loop, resume, evaluation and the train/evaluate command line on a tiny brain2d run."""

import json

import pytest
import torch

from searchmorph_lite import load_checkpoint, read_checkpoint
from searchmorph_lite.cli import main
from searchmorph_lite.data import load_dataset
from searchmorph_lite.train import TrainConfig, evaluate, registration_loss_all, train

TINY = dict(
    dataset="brain2d",
    dataset_options={"num_pairs": 4, "image_size": [64, 64]},
    model="SearchMorph",
    model_config={"widths": [8, 16, 16, 16], "hidden_dim": 16, "motion_dim": 16, "context_dim": 16},
    epochs=1,
    batch_size=2,
    val_pairs=2,
)


def test_train_writes_a_checkpoint_every_epoch_and_resumes(tmp_path):
    history = train(TrainConfig(**TINY), tmp_path, device="cpu", progress=False)
    assert history["epoch"] == [1] and len(history["val_dice"]) == 1
    first = read_checkpoint(tmp_path / "checkpoint.pt")
    assert first["epoch"] == 1 and "optimizer" in first
    history = train(TrainConfig(**{**TINY, "epochs": 2}), tmp_path, resume=True, device="cpu", progress=False)
    assert history["epoch"] == [1, 2] and history["pairs"] == [4, 4]  # pairs trained on, per epoch
    second = read_checkpoint(tmp_path / "checkpoint.pt")
    changed = any(not torch.equal(first["state_dict"][k], second["state_dict"][k]) for k in first["state_dict"])
    assert second["epoch"] == 2 and changed
    loaded = load_checkpoint(tmp_path / "checkpoint.pt", device="cpu")  # a run in progress reads like a shipped model
    assert loaded.metadata["epochs"] == 2 and loaded.metadata["history"]["epoch"] == [1, 2]


def test_resume_refuses_a_different_model_config(tmp_path):
    train(TrainConfig(**TINY), tmp_path, device="cpu", progress=False)
    other = {**TINY, "model_config": {**TINY["model_config"], "radius": 1}, "epochs": 2}
    with pytest.raises(ValueError, match="another model/config"):
        train(TrainConfig(**other), tmp_path, resume=True, device="cpu", progress=False)


def test_sequence_loss_weights_the_last_iteration_most():
    from searchmorph_lite import SearchMorph, SearchMorphConfig

    model = SearchMorph(SearchMorphConfig(**TINY["model_config"]))
    item = load_dataset("brain2d", "train", num_pairs=1, image_size=[64, 64])[0]
    m, f = item["moving"][None], item["fixed"][None]
    out = model(m, f)
    last_only = registration_loss_all(out, m, f, TrainConfig(**{**TINY, "iteration_weight": 0.0}))
    from searchmorph_lite import grad_l2_loss, lncc_loss

    assert torch.allclose(last_only, lncc_loss(out.warped, f) + 2.0 * grad_l2_loss(out.flow))


def test_the_folding_barrier_adds_fold_weight_times_the_barrier_of_every_iteration():
    from searchmorph_lite import SearchMorph, SearchMorphConfig, folding_barrier

    torch.manual_seed(0)
    model = SearchMorph(SearchMorphConfig(**TINY["model_config"]))
    item = load_dataset("brain2d", "train", num_pairs=1, image_size=[64, 64])[0]
    m, f = item["moving"][None], item["fixed"][None]
    out = model(m, f)
    out.flows[-1] = out.flow = out.flow + 3.0 * torch.sin(torch.arange(64.0) / 1.5)[:, None]  # folds rows
    plain = registration_loss_all(out, m, f, TrainConfig(**{**TINY, "iteration_weight": 0.0}))
    barrier = registration_loss_all(out, m, f, TrainConfig(**{**TINY, "iteration_weight": 0.0, "fold_weight": 5.0}))
    assert folding_barrier(out.flow) > 0.01
    assert torch.allclose(barrier - plain, 5.0 * folding_barrier(out.flow))
    with pytest.raises(ValueError, match="fold_weight must be >= 0"):
        TrainConfig(**{**TINY, "fold_weight": -1.0})


def test_a_field_added_to_train_config_since_a_checkpoint_resumes_at_its_default(tmp_path):
    train(TrainConfig(**TINY), tmp_path, device="cpu", progress=False)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    del ckpt["metadata"]["train_config"]["fold_weight"]  # as written before the field existed
    from searchmorph_lite.resume import check_resume

    assert check_resume(ckpt, TrainConfig(**{**TINY, "epochs": 2}), tmp_path, False) == {}
    changed = check_resume(ckpt, TrainConfig(**{**TINY, "epochs": 2, "fold_weight": 1.0}), tmp_path, True)
    assert changed == {"fold_weight": (0.0, 1.0)}


def test_evaluate_reports_dice_per_label_and_folding():
    from searchmorph_lite import VoxelMorph

    ds = load_dataset("brain2d", "val", num_pairs=3, image_size=[64, 64])
    metrics = evaluate(VoxelMorph(), ds, device="cpu")
    assert metrics["labels"] == [1, 2, 3]
    assert len(metrics["dice"]) == 3 and all(len(d) == 3 for d in metrics["dice"])
    assert 0 < metrics["dice_mean"] <= 1 and metrics["folding_mean"] == 0.0  # near-identity field never folds


def test_train_config_rejects_unknown_fields(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"epochs": 1, "learning_rate": 0.1}))
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_file(tmp_path / "c.json")
    with pytest.raises(ValueError, match="unknown similarity"):
        TrainConfig(similarity="ssim")


def test_cli_train_then_evaluate(tmp_path, capsys):
    import yaml

    cfg = {**TINY, "model": "VoxelMorph", "model_config": {}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert (
        main(["train", "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "run"), "--device", "cpu"]) == 0
    )
    model = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert type(model).__name__ == "VoxelMorph"
    capsys.readouterr()
    code = main(
        [
            "evaluate",
            "--checkpoint",
            str(tmp_path / "run" / "checkpoint.pt"),
            "--dataset",
            "brain2d",
            "--split",
            "test",
            "--max-pairs",
            "2",
            "--out",
            str(tmp_path / "m.json"),
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["pairs"] == 2 and 0 < summary["dice_mean"] <= 1
    assert len(json.loads((tmp_path / "m.json").read_text())["dice"]) == 2


def test_cli_unknown_dataset_is_one_readable_line(tmp_path, capsys):
    from searchmorph_lite import VoxelMorph, save_checkpoint

    save_checkpoint(tmp_path / "ck.pt", VoxelMorph())
    code = main(["evaluate", "--checkpoint", str(tmp_path / "ck.pt"), "--dataset", "mnist"])
    err = capsys.readouterr().err
    assert code == 2 and "known datasets" in err


def test_grad_clip_bounds_the_gradient_that_adam_sees(tmp_path, monkeypatch):
    # Adam divides by sqrt(v) + 1e-8: gradients clipped to a norm of 1e-12 move no weight by more than about
    # lr * 1e-4, while the unclipped step moves some weight by about lr (1e-3)
    import searchmorph_lite.train as train_module

    built = []

    def recording_build(kind, config=None):
        model = build_model(kind, config)
        built.append({k: v.detach().clone() for k, v in model.named_parameters()})  # weights, not buffers
        return model

    from searchmorph_lite.registry import build_model

    monkeypatch.setattr(train_module, "build_model", recording_build)
    moved = {}
    for clip in (0.0, 1e-12):
        out = tmp_path / str(clip)
        train(TrainConfig(**{**TINY, "val_pairs": 0, "grad_clip": clip}), out, device="cpu", progress=False)
        after, before = read_checkpoint(out / "checkpoint.pt")["state_dict"], built[-1]
        moved[clip] = max(float((after[k] - before[k]).abs().max()) for k in before)
    assert moved[0.0] > 5e-4 and moved[1e-12] < 1e-5


def test_grad_clip_must_not_be_negative():
    with pytest.raises(ValueError, match="grad_clip"):
        TrainConfig(**{**TINY, "grad_clip": -1.0})
