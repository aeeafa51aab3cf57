"""Checkpoints, register() on arbitrary sizes, and the command line."""

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from searchmorph_lite import (
    SearchMorph,
    SearchMorphConfig,
    VoxelMorph,
    load_checkpoint,
    read_checkpoint,
    register,
    save_checkpoint,
)
from searchmorph_lite.cli import main

from conftest import disc_pair

SMALL = SearchMorphConfig(widths=(8, 16, 16, 16), hidden_dim=16, motion_dim=16, context_dim=16, radius=2)


def _perturbed(model):
    torch.manual_seed(1)
    for p in model.iterator.flow_head[-1].parameters() if hasattr(model, "iterator") else model.flow_layer.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return model.eval()


@pytest.mark.parametrize("make", [lambda: SearchMorph(SMALL), lambda: VoxelMorph()])
def test_checkpoint_round_trip_with_weights_only(tmp_path, make, pair):
    model = _perturbed(make())
    path = tmp_path / "ck.pt"
    save_checkpoint(path, model, metadata={"data": "discs", "epochs": 3})
    raw = torch.load(path, weights_only=True)
    assert raw["model"] == type(model).__name__ and raw["metadata"]["epochs"] == 3
    loaded = load_checkpoint(path)
    assert not loaded.training and loaded.metadata["data"] == "discs"
    moving, fixed, *_ = pair
    with torch.no_grad():
        assert torch.equal(model(moving, fixed).flow, loaded(moving, fixed).flow)


def test_load_checkpoint_rejects_the_wrong_model(tmp_path):
    save_checkpoint(tmp_path / "vm.pt", VoxelMorph())
    with pytest.raises(ValueError, match="VoxelMorph.*expected SearchMorph"):
        load_checkpoint(tmp_path / "vm.pt", expected_model="SearchMorph")


def test_load_checkpoint_rejects_corrupt_and_foreign_files(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        read_checkpoint(tmp_path / "bad.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a searchmorph_lite checkpoint"):
        read_checkpoint(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize("shape", [(64, 64), (61, 50), (37, 80)])
def test_register_handles_any_size_and_crops_back(shape):
    model = _perturbed(SearchMorph(SMALL))
    rng = np.random.default_rng(0)
    moving, fixed = rng.random(shape), rng.random(shape)
    warped, flow = register(moving, fixed, model)
    assert warped.shape == shape and flow.shape == (2, *shape)
    assert np.isfinite(warped).all() and np.abs(flow).max() > 0


def test_register_output_matches_model_on_a_padded_free_pair():
    model = _perturbed(SearchMorph(SMALL))
    moving, fixed, *_ = disc_pair()
    warped, flow = register(moving[0, 0], fixed[0, 0], model, normalize=False)
    with torch.no_grad():
        out = model(moving, fixed)
    assert np.allclose(flow, out.flow[0].numpy(), atol=1e-5)
    assert np.allclose(warped, out.warped[0, 0].numpy(), atol=1e-5)


def test_register_accepts_torch_and_keeps_the_input_intensity_scale():
    model = _perturbed(VoxelMorph())
    moving, fixed, *_ = disc_pair()
    warped, _ = register(1000 * moving[0, 0], 1000 * fixed[0, 0], model)
    assert warped.max() > 100  # warped from the original intensities, not the normalized ones


def _nifti(path, array):
    nib.save(nib.Nifti1Image(array.astype(np.float32), np.diag([2.0, 3.0, 1.0, 1.0])), str(path))


def test_cli_register_writes_warped_with_fixed_affine_and_flow(tmp_path):
    model = _perturbed(SearchMorph(SMALL))
    save_checkpoint(tmp_path / "ck.pt", model)
    moving, fixed, *_ = disc_pair()
    _nifti(tmp_path / "m.nii.gz", moving[0, 0].numpy())
    _nifti(tmp_path / "f.nii.gz", fixed[0, 0].numpy()[..., None])  # (H, W, 1) is 2D too
    code = main(
        [
            "register",
            "--moving",
            str(tmp_path / "m.nii.gz"),
            "--fixed",
            str(tmp_path / "f.nii.gz"),
            "--checkpoint",
            str(tmp_path / "ck.pt"),
            "--out",
            str(tmp_path / "w.nii.gz"),
            "--flow",
            str(tmp_path / "flow.nii.gz"),
            "--device",
            "cpu",
            "--stage",  # no affine search: a model without a frame then registers on the fixed grid, as arrays do
            "deform",
        ]
    )
    assert code == 0
    warped = nib.load(tmp_path / "w.nii.gz")
    assert warped.shape == (64, 64, 1) and np.allclose(warped.affine, np.diag([2.0, 3.0, 1.0, 1.0]))
    flow = nib.load(tmp_path / "flow.nii.gz").get_fdata()
    expected_warped, expected_flow = register(moving[0, 0], fixed[0, 0], model)
    assert np.allclose(flow[:, :, 0, :], np.moveaxis(expected_flow, 0, -1), atol=1e-4)
    assert np.allclose(warped.get_fdata()[..., 0], expected_warped, atol=1e-4)


def test_cli_register_fails_cleanly_on_a_3d_image_and_writes_nothing(tmp_path, capsys):
    save_checkpoint(tmp_path / "ck.pt", SearchMorph(SMALL))
    _nifti(tmp_path / "m.nii.gz", np.random.rand(16, 16, 5))
    _nifti(tmp_path / "f.nii.gz", np.random.rand(16, 16))
    code = main(
        [
            "register",
            "--moving",
            str(tmp_path / "m.nii.gz"),
            "--fixed",
            str(tmp_path / "f.nii.gz"),
            "--checkpoint",
            str(tmp_path / "ck.pt"),
            "--out",
            str(tmp_path / "w.nii.gz"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "not a 2D image" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "w.nii.gz").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_cli_register_unreadable_file_exits_nonzero_as_a_subprocess(tmp_path):
    (tmp_path / "m.nii.gz").write_bytes(b"garbage")
    save_checkpoint(tmp_path / "ck.pt", VoxelMorph())
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "searchmorph_lite",
            "register",
            "--moving",
            str(tmp_path / "m.nii.gz"),
            "--fixed",
            str(tmp_path / "m.nii.gz"),
            "--checkpoint",
            str(tmp_path / "ck.pt"),
            "--out",
            str(tmp_path / "o.nii.gz"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "cannot read NIfTI" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "o.nii.gz").exists()


def test_cli_register_wrong_checkpoint_file(tmp_path):
    _nifti(tmp_path / "m.nii.gz", np.random.rand(16, 16))
    (tmp_path / "ck.pt").write_bytes(b"xx")
    code = main(
        [
            "register",
            "--moving",
            str(tmp_path / "m.nii.gz"),
            "--fixed",
            str(tmp_path / "m.nii.gz"),
            "--checkpoint",
            str(tmp_path / "ck.pt"),
            "--out",
            str(tmp_path / "w.nii.gz"),
        ]
    )
    assert code == 2 and not (tmp_path / "w.nii.gz").exists()


def test_cli_register_takes_a_pretrained_name_and_names_them_when_nothing_matches(tmp_path, capsys):
    from searchmorph_lite import load_pretrained
    from searchmorph_lite.pretrained import available_pretrained

    moving, fixed, *_ = disc_pair()
    _nifti(tmp_path / "m.nii.gz", moving[0, 0].numpy())
    _nifti(tmp_path / "f.nii.gz", fixed[0, 0].numpy())
    args = [
        "register",
        "--moving",
        str(tmp_path / "m.nii.gz"),
        "--fixed",
        str(tmp_path / "f.nii.gz"),
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "w.nii.gz"),
        "--checkpoint",
    ]
    assert main(args + ["no-such-model"]) == 2
    assert "pretrained names: brain2d" in capsys.readouterr().err and not (tmp_path / "w.nii.gz").exists()
    if "brain2d" not in available_pretrained():
        pytest.skip("brain2d is not shipped in this checkout")
    assert main(args + ["brain2d"]) == 0
    from searchmorph_lite.pipeline import register_images

    reg = register_images(tmp_path / "m.nii.gz", tmp_path / "f.nii.gz", load_pretrained("brain2d", device="cpu"))
    assert np.allclose(nib.load(tmp_path / "w.nii.gz").get_fdata(), reg.apply(), atol=1e-4)
