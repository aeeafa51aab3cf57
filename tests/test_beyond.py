"""Beyond the paper (issue 13) through the public API: the shipped 3D and brain2d-subjects models, the 3D CLI."""

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

import searchmorph_lite as sm
from searchmorph_lite.data import load_dataset
from searchmorph_lite.pretrained import available_pretrained


def shipped(*names: str) -> None:
    missing = [n for n in names if n not in available_pretrained()]
    if missing:
        pytest.skip(f"not shipped in this checkout: {missing}")


def mean_dice(item: dict, flow: np.ndarray) -> float:
    f = torch.from_numpy(np.ascontiguousarray(flow)).double()[None]
    warped = sm.warp(item["moving_labels"][None].double(), f, mode="nearest").round().long()
    return float(torch.nanmean(sm.dice(warped, item["fixed_labels"][None], [1, 2, 3])))


@pytest.fixture(scope="module")
def pair3d():
    return load_dataset("brain3d", "test", voxel_mm=4, num_pairs=1)[0]


def test_shipped_3d_models_are_3d_and_improve_on_the_identity(pair3d):
    shipped("brain3d", "brain3d-voxelmorph")
    m, f = pair3d["moving"][0].numpy(), pair3d["fixed"][0].numpy()
    identity = mean_dice(pair3d, np.zeros((3, *m.shape)))
    for name, kind in (("brain3d", "SearchMorph"), ("brain3d-voxelmorph", "VoxelMorph")):
        model = sm.load_pretrained(name, device="cpu")
        assert type(model).__name__ == kind and model.ndim == 3
        assert model.metadata["dataset_options"]["voxel_mm"] == 4
        with torch.no_grad():
            warped, flow = sm.register(m, f, model)
        assert warped.shape == m.shape and flow.shape == (3, *m.shape)
        assert mean_dice(pair3d, flow) > identity + 0.02, name
    sm3d = sm.load_pretrained("brain3d", device="cpu")
    assert (
        sm3d.metadata["train_config"]["max_cpu_seconds"]
        == sm.load_pretrained("brain3d-voxelmorph", device="cpu").metadata["train_config"]["max_cpu_seconds"]
    )  # the same budget


def test_cli_registers_3d_nifti_in_the_model_frame_keeping_the_fixed_header_and_a_2d_model_refuses(tmp_path, pair3d):
    shipped("brain3d", "brain2d")
    frame = sm.load_pretrained("brain3d", device="cpu").metadata
    affine = np.array([[0, 0, 4.0, -94], [0, -4.0, 0, 78], [-4.0, 0, 0, 102], [0, 0, 0, 1]])  # axes I, P, R at 4 mm
    assert nib.aff2axcodes(affine) == ("I", "P", "R") and frame["train_config"]["dataset_options"]["voxel_mm"] == 4
    for key in ("moving", "fixed", "moving_labels", "fixed_labels"):
        data = pair3d[key][0].numpy().astype(np.int16 if "labels" in key else np.float32)
        nib.save(nib.Nifti1Image(data, affine), tmp_path / f"{key}.nii.gz")
    base = [sys.executable, "-m", "searchmorph_lite", "register", "--moving", str(tmp_path / "moving.nii.gz"),
            "--fixed", str(tmp_path / "fixed.nii.gz"), "--device", "cpu"]  # fmt: skip
    labels = ["--moving-labels", str(tmp_path / "moving_labels.nii.gz"), "--labels-out", str(tmp_path / "l.nii.gz")]
    ok = subprocess.run([*base, "--checkpoint", "brain3d", "--out", str(tmp_path / "w.nii.gz"), *labels,
                         "--stage", "deform"], capture_output=True, text=True)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    out = nib.load(tmp_path / "w.nii.gz")
    assert out.shape == (48, 48, 48) and np.allclose(out.affine, affine)
    carried = nib.load(tmp_path / "l.nii.gz").get_fdata().astype(int)
    fixed_labels = pair3d["fixed_labels"][0].numpy()
    dice = np.mean([2 * ((carried == k) & (fixed_labels == k)).sum() / ((carried == k).sum()
                   + (fixed_labels == k).sum()) for k in (1, 2, 3)])  # fmt: skip
    assert dice > mean_dice(pair3d, np.zeros((3, 48, 48, 48))) + 0.02
    bad = subprocess.run([*base, "--checkpoint", "brain2d", "--out", str(tmp_path / "w2.nii.gz")],
                         capture_output=True, text=True)  # fmt: skip
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert bad.returncode != 0 and len(lines) == 1 and not (tmp_path / "w2.nii.gz").exists()
    assert "is not a 2D image (the model is 2D)" in lines[0]


def test_shipped_beyond_2d_models_share_one_budget_and_the_diffeomorphic_one_carries_its_velocity():
    names = ("brain2d-displacement", "brain2d-diffeomorphic", "brain2d-stride1")
    shipped(*names)
    models = {n: sm.load_pretrained(n, device="cpu") for n in names}
    budgets = {n: m.metadata["train_config"]["max_cpu_seconds"] for n, m in models.items()}
    assert len(set(budgets.values())) == 1, budgets
    assert models["brain2d-diffeomorphic"].config.diffeomorphic and models["brain2d-stride1"].config.feature_stride == 1
    item = load_dataset("brain2d-subjects", "test", num_pairs=1)[0]
    with torch.no_grad():
        out = models["brain2d-diffeomorphic"](item["moving"][None], item["fixed"][None])
    assert out.velocity is not None
    steps = models["brain2d-diffeomorphic"].config.integration_steps
    assert torch.allclose(out.flow, sm.integrate_velocity(out.velocity, steps), atol=1e-5)
