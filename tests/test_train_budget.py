"""Long-run controls of the training loop: a CPU-seconds budget, fresh pairs each epoch, a range of iterations."""

import pytest

from searchmorph_lite import SearchMorph
from searchmorph_lite.train import TrainConfig, train

TINY = dict(
    dataset="brain2d-subjects",
    dataset_options={"num_pairs": 4, "image_size": [48, 48]},
    model="SearchMorph",
    model_config={"widths": [8, 8, 8], "hidden_dim": 8, "motion_dim": 8, "context_dim": 8, "levels": 2, "radius": 1},
    epochs=3,
    batch_size=2,
    val_pairs=0,
)


def test_a_cpu_budget_stops_training_and_a_resume_does_not_exceed_it(tmp_path):
    history = train(
        TrainConfig(**{**TINY, "epochs": 50, "max_cpu_seconds": 0.5}), tmp_path, device="cpu", progress=False
    )
    used = sum(history["cpu_seconds"])
    assert 0.5 <= used < 0.5 + 5.0 and len(history["epoch"]) < 50  # stopped at the first step past the budget
    again = train(
        TrainConfig(**{**TINY, "epochs": 50, "max_cpu_seconds": 0.5}),
        tmp_path,
        resume=True,
        device="cpu",
        progress=False,
    )
    assert again["epoch"] == history["epoch"]  # nothing left to do


def test_fresh_pairs_give_new_training_pairs_each_epoch(monkeypatch, tmp_path):
    import searchmorph_lite.train as train_module

    seeds = []
    real = train_module._load_split

    def spy(name, split, options):
        if split == "train":
            seeds.append(options.get("seed", 0))
        return real(name, split, options)

    monkeypatch.setattr(train_module, "_load_split", spy)
    train(TrainConfig(**{**TINY, "fresh_pairs": True}), tmp_path, device="cpu", progress=False)
    assert seeds == [0, 1000, 2000]


def test_train_iterations_draw_the_count_of_each_step_from_the_range(monkeypatch, tmp_path):
    counts = []
    forward = SearchMorph.forward

    def spy(self, moving, fixed, iterations=None, **kwargs):
        counts.append(iterations)
        return forward(self, moving, fixed, iterations, **kwargs)

    monkeypatch.setattr(SearchMorph, "forward", spy)
    train(TrainConfig(**{**TINY, "epochs": 4, "train_iterations": [2, 5]}), tmp_path, device="cpu", progress=False)
    assert len(counts) == 8 and set(counts) <= {2, 3, 4, 5} and len(set(counts)) > 1


@pytest.mark.parametrize(
    "bad",
    [
        {"train_iterations": [5, 2]},
        {"train_iterations": [4]},
        {"train_iterations": [0, 3]},
        {"max_cpu_seconds": -1.0},
        {"fresh_pairs": "yes"},
        {"model": "VoxelMorph", "model_config": {}, "train_iterations": [4, 8]},
        {"dataset": "echo2d-clip", "dataset_options": {}, "fresh_pairs": True},
        {"val_options": {"contrast": "t9", "no_such_option": 1}},
    ],
)
def test_bad_long_run_settings_are_refused(bad):
    with pytest.raises(ValueError):
        TrainConfig(**{**TINY, **bad})


def test_resume_accepts_a_checkpoint_whose_model_config_predates_new_fields(tmp_path):
    from searchmorph_lite import read_checkpoint

    train(TrainConfig(**{**TINY, "epochs": 1}), tmp_path, device="cpu", progress=False)
    raw = read_checkpoint(tmp_path / "checkpoint.pt")
    raw["config"].pop("diffeomorphic"), raw["config"].pop("feature_stride")  # as written before those fields existed
    import torch

    from searchmorph_lite.checkpoint import state_digest

    raw["sha256"] = state_digest(raw["model"], raw["config"], raw["state_dict"])  # its digest of then

    torch.save(raw, tmp_path / "checkpoint.pt")
    history = train(TrainConfig(**{**TINY, "epochs": 2}), tmp_path, resume=True, device="cpu", progress=False)
    assert history["epoch"] == [1, 2]


def test_the_budget_is_counted_in_the_devices_clock_and_named_in_the_checkpoint(tmp_path):
    from searchmorph_lite import read_checkpoint

    history = train(TrainConfig(**{**TINY, "epochs": 2, "max_seconds": 1000.0}), tmp_path, device="cpu",
                    progress=False)  # fmt: skip
    assert history["budget_seconds"] == pytest.approx(history["cpu_seconds"], rel=0.05)  # one clock, read twice
    assert all(s > 0 for s in history["budget_seconds"])
    assert read_checkpoint(tmp_path)["metadata"]["budget_clock"] == "CPU seconds"


def test_max_seconds_stops_training_as_max_cpu_seconds_did(tmp_path):
    history = train(TrainConfig(**{**TINY, "epochs": 50, "max_seconds": 0.5}), tmp_path, device="cpu", progress=False)
    assert 0.5 <= sum(history["budget_seconds"]) < 5.5 and len(history["epoch"]) < 50


def test_a_run_from_before_the_budget_clock_counts_its_cpu_seconds_on_resume(tmp_path):
    import torch

    from searchmorph_lite.checkpoint import metadata_digest

    train(TrainConfig(**{**TINY, "epochs": 1}), tmp_path, device="cpu", progress=False)
    raw = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    raw["history"].pop("budget_seconds")
    raw["history"]["cpu_seconds"] = [100.0]  # spent the whole budget, as counted then
    raw["metadata"]["train_config"].pop("max_seconds")  # a config from before it
    raw["metadata"]["train_config"]["max_cpu_seconds"] = 100.0
    raw["metadata_sha256"] = metadata_digest(raw)
    torch.save(raw, tmp_path / "checkpoint.pt")
    again = train(TrainConfig(**{**TINY, "epochs": 5, "max_cpu_seconds": 100.0}), tmp_path, resume=True,
                  device="cpu", progress=False)  # fmt: skip
    assert again["epoch"] == [1]  # nothing left to do


def test_on_a_gpu_the_budget_clock_synchronises_the_device(monkeypatch):
    import torch

    from searchmorph_lite.train import budget_clock

    synced = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(device))
    name, clock = budget_clock(torch.device("cuda", 0))
    clock(), clock()
    assert name == "wall-clock seconds (CUDA synchronised)" and synced == [torch.device("cuda", 0)] * 2
    assert budget_clock(torch.device("cpu"))[0] == "CPU seconds"


def test_max_seconds_and_max_cpu_seconds_are_one_budget():
    with pytest.raises(ValueError, match="are one budget"):
        TrainConfig(**{**TINY, "max_seconds": 10.0, "max_cpu_seconds": 20.0})
    assert TrainConfig(**{**TINY, "max_cpu_seconds": 20.0}).budget_seconds == 20.0
