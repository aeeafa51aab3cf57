"""searchmorph_lite.book's chapter helpers (setup, smooth_field, patch_features, n_params, runs_folder, load_or_train)
and the two shared definitions the chapters import from the model side: correlation.all_pairs_bytes and
model.ABLATIONS."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import searchmorph_lite as sm
from searchmorph_lite import book
from searchmorph_lite.correlation import all_pairs_bytes
from searchmorph_lite.model import ABLATIONS


@pytest.fixture
def torch_state():
    """Restore PyTorch's global settings that setup changes."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng():
        yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def test_setup_seeds_torch_and_returns_the_device(torch_state):
    assert book.setup(3, "cpu") == torch.device("cpu")
    first = torch.rand(4)
    book.setup(3, "cpu")
    assert torch.equal(first, torch.rand(4))
    assert book.setup(0, "auto") == sm.default_device()


def test_setup_sets_threads_and_deterministic_kernels_only_when_asked(torch_state):
    torch.use_deterministic_algorithms(False)
    book.setup(0, "cpu", threads=1)
    assert torch.get_num_threads() == 1 and not torch.are_deterministic_algorithms_enabled()
    book.setup(0, "cpu", threads=0, deterministic=True)
    assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()


@pytest.mark.parametrize(
    "shape, grid, cubic", [((40, 32), (10, 8), True), ((24, 20), 8, False), ((12, 10, 8), 4, False)]
)
def test_smooth_field_is_float32_and_peaks_at_max_px(shape, grid, cubic):
    field = book.smooth_field(shape, 4.0, seed=1, grid=grid, cubic=cubic)
    assert field.shape == (1, len(shape), *shape) and field.dtype == torch.float32
    assert field.abs().max().item() == pytest.approx(4.0, rel=1e-6)


def test_smooth_field_repeats_with_its_seed_and_changes_with_another():
    a = book.smooth_field((24, 20), 3.0, seed=5)
    assert torch.equal(a, book.smooth_field((24, 20), 3.0, seed=5))
    assert not torch.allclose(a, book.smooth_field((24, 20), 3.0, seed=6))


def test_smooth_field_is_smooth_next_to_noise():
    field = book.smooth_field((48, 40), 4.0, seed=0, grid=(10, 8), cubic=True, draw_dtype=torch.float32)
    noise = 4.0 * (2 * torch.rand(1, 2, 48, 40, generator=torch.Generator().manual_seed(0)) - 1)
    assert sm.grad_l2_loss(field).item() < sm.grad_l2_loss(noise).item() / 100


def test_smooth_field_refuses_a_cubic_3d_field():
    with pytest.raises(ValueError, match="cubic"):
        book.smooth_field((8, 8, 8), 1.0, cubic=True)


def test_patch_features_are_centred_unit_patches():
    image = torch.rand(2, 1, 12, 10, generator=torch.Generator().manual_seed(0))
    f = book.patch_features(image, 3)
    assert f.shape == (2, 9, 12, 10)
    assert torch.allclose(f.mean(dim=1), torch.zeros(2, 12, 10), atol=1e-6)
    # pixel (5, 4) of image 1, by hand: its 3 x 3 patch minus the mean, over its norm + eps
    patch = image[1, 0, 4:7, 3:6].flatten()
    patch = patch - patch.mean()
    assert torch.allclose(f[1, :, 5, 4], patch / (patch.norm() + 1e-3), atol=1e-6)


def test_patch_features_correlation_is_blind_to_gain_and_offset():
    image = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    a, b = book.patch_features(image, 5, eps=1e-6), book.patch_features(3 * image + 0.2, 5, eps=1e-6)
    inner = slice(2, -2)  # zero padding differs at the border: 0 is not 3 * 0 + 0.2
    ncc = (a * b).sum(dim=1)[0, inner, inner]
    assert torch.allclose(ncc, torch.ones_like(ncc), atol=1e-4)


def test_n_params_counts_parameters_not_buffers():
    assert book.n_params(nn.Linear(3, 2)) == 3 * 2 + 2
    assert book.n_params(nn.BatchNorm2d(4)) == 2 * 4  # running mean and variance are buffers
    assert book.n_params(nn.Sequential(nn.Conv2d(2, 5, 3, bias=False), nn.BatchNorm2d(5))) == 9 * 2 * 5 + 2 * 5


@pytest.mark.parametrize("features, levels", [((6, 5), 2), ((8, 8), 4), ((9, 7), 3), ((4, 6, 5), 2)])
def test_all_pairs_bytes_counts_the_pyramid_correlation_pyramid_holds(features, levels):
    h = torch.randn(2, 3, *features)
    pyramid = sm.correlation_pyramid(sm.cost_volume(h, h), levels)
    held = sum(level.numel() * level.element_size() for level in pyramid)
    assert all_pairs_bytes(features, levels, batch=2) == held
    assert all_pairs_bytes(features, levels, element_size=8) == held  # one float64 pair: two float32 ones


def test_all_pairs_bytes_of_a_3d_volume_by_hand():
    volume = (80, 96, 80)  # a 160 x 192 x 160 image's features at stride 2
    n = math.prod(volume)
    by_hand = 4 * n * sum((80 >> lev) * (96 >> lev) * (80 >> lev) for lev in range(4))
    assert all_pairs_bytes(volume) == by_hand == 1725235200000  # benchmarks/memory3d.json's 3D row


def test_ablations_switch_one_component_each():
    assert ABLATIONS["SearchMorph"] == {}
    full = sm.SearchMorphConfig()
    for name, change in ABLATIONS.items():
        config = sm.SearchMorphConfig(**change)
        differ = {k for k, v in config.to_dict().items() if v != full.to_dict()[k]}
        assert differ == set(change), name
    assert sm.SearchMorph(sm.SearchMorphConfig(**ABLATIONS["w/o search module"])).config.lookup == "warped-features"


def _tiny(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "VoxelMorph":
        return sm.VoxelMorph(sm.VoxelMorphConfig()).eval()
    return sm.SearchMorph(sm.SearchMorphConfig(iterations=1)).eval()


def test_load_or_train_trains_every_model_when_nothing_is_shipped():
    calls = []

    def train(name):
        calls.append(name)
        return _tiny(name), {"source": "trained in this run"}

    shipped = {"SearchMorph": "no-such-model", "VoxelMorph": "brain2d-voxelmorph"}
    models, cards, source = book.load_or_train(shipped, train, "cpu")
    assert source == "trained" and calls == ["SearchMorph", "VoxelMorph"]
    assert isinstance(models["VoxelMorph"], sm.VoxelMorph) and cards["SearchMorph"]["source"] == "trained in this run"


def test_load_or_train_loads_shipped_models_only_when_all_are_installed(monkeypatch):
    import searchmorph_lite.pretrained as pretrained

    loaded = []
    monkeypatch.setattr(pretrained, "available_pretrained", lambda: ["a", "b"])
    monkeypatch.setattr(pretrained, "load_pretrained", lambda name, device=None: loaded.append(name) or _tiny(""))

    def train(name):
        raise AssertionError(f"{name} trained although every model is shipped")

    models, cards, source = book.load_or_train({"x": "a", "y": "b"}, train, "cpu")
    assert source == "pretrained" and loaded == ["a", "b"] and cards["x"]["source"] == "pretrained"
    trained = book.load_or_train({"x": "a", "y": "c"}, lambda n: (_tiny(n), {}), "cpu")[2]
    assert trained == "trained"  # one missing: both trained, never a mix
    assert book.load_or_train({"x": "a"}, lambda n: (_tiny(n), {}), "cpu", use_pretrained=False)[2] == "trained"


def test_load_or_train_prefers_checkpoints_naming_every_model(tmp_path, capsys):
    paths = {}
    for kind in ("SearchMorph", "VoxelMorph"):
        paths[kind] = tmp_path / f"{kind}.pt"
        sm.save_checkpoint(paths[kind], _tiny(kind), metadata={"dataset": "brain2d", "image_size": [32, 32]})
    shipped = {"SearchMorph": "brain2d", "VoxelMorph": "brain2d-voxelmorph"}
    models, cards, source = book.load_or_train(shipped, lambda n: (_tiny(n), {}), "cpu", checkpoints=paths)
    assert source == "checkpoints" and cards["VoxelMorph"]["source"] == "loaded from checkpoint"
    weights = "iterator.gru.conv_z.weight"
    assert torch.equal(models["SearchMorph"].state_dict()[weights], _tiny("SearchMorph").state_dict()[weights])
    with pytest.raises(Exception, match="VoxelMorph"):  # a checkpoint must hold the expected model class
        book.load_or_train({"a": "x"}, None, checkpoints={"a": paths["VoxelMorph"]}, expected_model="SearchMorph")
    one = {"SearchMorph": paths["SearchMorph"]}
    part = book.load_or_train(shipped, lambda n: (_tiny(n), {}), "cpu", use_pretrained=False, checkpoints=one)
    assert part[2] == "trained" and "not used" in capsys.readouterr().out


def test_runs_folder_is_runs_here_or_drive_on_colab(tmp_path, monkeypatch):
    assert book.runs_folder("") is None and book.runs_folder("my/runs") == Path("my/runs")
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    assert book.runs_folder("auto") == Path("runs")
    monkeypatch.setitem(sys.modules, "google.colab", object())
    assert book.runs_folder("auto") == Path("runs")  # Colab without Drive mounted
    monkeypatch.setattr(book, "DRIVE_RUNS", tmp_path / "MyDrive" / "searchmorph-runs")
    (tmp_path / "MyDrive").mkdir()
    assert book.runs_folder("auto") == tmp_path / "MyDrive" / "searchmorph-runs"


def test_load_or_train_evaluates_the_runs_chapter_10_wrote(tmp_path):
    from test_train import TINY

    from searchmorph_lite.train import TrainConfig, train

    def no_training(name):
        raise AssertionError(f"{name} trained although its run is in the folder")

    runs = tmp_path / "runs"
    with pytest.raises(FileNotFoundError, match="SearchMorph"):  # no run yet: an error, not the shipped model
        book.load_or_train({"SearchMorph": "brain2d"}, no_training, "cpu", runs_dir=runs)
    train(TrainConfig(**TINY), runs / "SearchMorph", device="cpu", progress=False)  # as chapter 10 writes it
    models, cards, source = book.load_or_train({"SearchMorph": "brain2d"}, no_training, "cpu", runs_dir=runs)
    written = sm.read_checkpoint(runs / "SearchMorph" / "checkpoint.pt")["state_dict"]
    assert source == "checkpoints" and cards["SearchMorph"]["image_size"] == (64, 64)
    assert all(torch.equal(v, written[k]) for k, v in models["SearchMorph"].state_dict().items())
    with pytest.raises(ValueError, match="not both"):
        book.load_or_train({"SearchMorph": "brain2d"}, no_training, checkpoints={"SearchMorph": "x"}, runs_dir=runs)
