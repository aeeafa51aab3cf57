"""load_dataset: names, splits, options, errors, the data root, and loading with the network blocked."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

from searchmorph_lite.data import DATASETS, data_root, load_dataset

EMBEDDED = ("brain2d", "echo2d-synthetic", "echo2d-clip")
SMALL = {
    "brain2d": {"num_pairs": 2},
    "echo2d-synthetic": {"num_sequences": 1, "frames": 4},
    "echo2d-clip": {"num_pairs": 2},
}


@pytest.fixture
def empty_root(tmp_path, monkeypatch):
    monkeypatch.setenv("SEARCHMORPH_DATA", str(tmp_path / "data"))
    return tmp_path / "data"


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError) as err:
        load_dataset("oasis", "train")
    for name in DATASETS:
        assert name in str(err.value)


@pytest.mark.parametrize("name", DATASETS)
def test_unknown_split_is_a_value_error(name, empty_root):
    with pytest.raises(ValueError, match="split"):
        load_dataset(name, "training")


def test_unknown_option_is_named(empty_root):
    with pytest.raises(ValueError, match="num_subjects"):
        load_dataset("brain2d", "train", num_subjects=3)


@pytest.mark.parametrize("name, script", [("lpba40", "prepare_lpba40.py"), ("camus", "prepare_camus.py")])
def test_unprepared_dataset_prints_the_command_to_run(name, script, empty_root):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset(name, "train")
    message = str(err.value)
    assert f"python data_scripts/{script} --src " in message
    assert f"--out {empty_root}" in message


def test_data_root_comes_from_the_environment_or_home(monkeypatch, tmp_path):
    monkeypatch.setenv("SEARCHMORPH_DATA", str(tmp_path))
    assert data_root() == tmp_path
    monkeypatch.delenv("SEARCHMORPH_DATA")
    assert data_root() == Path.home() / ".searchmorph" / "data"


@pytest.fixture
def no_network(monkeypatch):
    """Every socket connection attempt raises, as on a machine without network."""

    def refuse(*args, **kwargs):
        raise OSError("network access attempted during a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_network_block_is_effective(no_network):
    with pytest.raises(OSError, match="network access"):
        socket.create_connection(("example.org", 80), timeout=1)
    with pytest.raises(OSError, match="network access"):
        socket.socket().connect(("127.0.0.1", 9))


def test_embedded_datasets_load_from_scratch_without_network(no_network, empty_root):
    # empty_root has no cache: the MNI152 maps and the DICOM clip are read from the installed wheels here.
    for name in EMBEDDED:
        for split in ("test",) if name == "echo2d-clip" else ("train", "val", "test"):
            ds = load_dataset(name, split, **SMALL[name])
            item = ds[len(ds) - 1]
            assert item["moving"].ndim == 3 and item["moving"].shape == item["fixed"].shape
            assert item["moving"].dtype == torch.float32 and 0 <= item["moving"].min() <= item["moving"].max() <= 1
    assert (empty_root / "cache").is_dir()  # caches were written for the next run


def test_cache_is_reused_and_gives_identical_items(empty_root):
    first = load_dataset("echo2d-clip", "test", num_pairs=1)[0]
    cached = sorted((empty_root / "cache").glob("*.npz"))
    assert cached and not list((empty_root / "cache").glob("*.tmp"))
    mtimes = [p.stat().st_mtime_ns for p in cached]
    second = load_dataset("echo2d-clip", "test", num_pairs=1)[0]
    assert [p.stat().st_mtime_ns for p in cached] == mtimes
    assert torch.equal(first["moving"], second["moving"])


def test_corrupt_cache_is_rebuilt(empty_root):
    reference = load_dataset("echo2d-clip", "test", num_pairs=1)[0]["fixed"]
    (cache,) = (empty_root / "cache").glob("echo2d_clip*.npz")
    cache.write_bytes(b"not an npz file")
    again = load_dataset("echo2d-clip", "test", num_pairs=1)[0]["fixed"]
    assert torch.equal(reference, again)


def test_num_pairs_is_an_upper_bound_for_finite_data(empty_root):
    assert len(load_dataset("echo2d-clip", "test", num_pairs=5)) == 5
    assert len(load_dataset("echo2d-clip", "test", num_pairs=500)) == 29


def test_corrupt_prepared_split_asks_to_prepare_again(empty_root):
    (empty_root / "camus").mkdir(parents=True)
    (empty_root / "camus" / "train.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="prepare_camus.py --src"):
        load_dataset("camus", "train")
