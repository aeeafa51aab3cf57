"""The physical-space pipeline (issue 21): frames, the affine stage, one composed transform, labels, headers, the
ANTs round trip, orientation invariance, and geometry refused before any work."""

import nibabel as nib
import numpy as np
import pytest
import torch

import searchmorph_lite as sm
from searchmorph_lite.affine import affine_register, sample_world, world_grid
from searchmorph_lite.affine import rotation_matrix as rotation
from searchmorph_lite.cli import main
from searchmorph_lite.data.brain3d import template_volumes
from searchmorph_lite.pipeline import as_image, frame_of, model_grid, register_images, robust_unit

FRAME_3D = {"axcodes": ["I", "P", "R"], "voxel_mm": [8.0, 8.0, 8.0], "shape": [32, 32, 32]}
TINY_3D = sm.SearchMorphConfig(ndim=3, widths=(4, 8, 8, 8), hidden_dim=8, motion_dim=8, context_dim=8, radius=1,
                               iterations=2)  # fmt: skip


@pytest.fixture(scope="module")
def brain():
    """MNI152 at 4 mm (48^3, the brain3d crop) as a RAS NIfTI, with its tissue labels."""
    vols = template_volumes(4)
    data = vols["t1"][::-1, ::-1, :].transpose(2, 1, 0).copy()  # brain3d's (I, P, R) axes back to (R, A, S)
    labels = vols["labels"][::-1, ::-1, :].transpose(2, 1, 0).copy()
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = [-94.0, -130.0, -70.0]
    return nib.Nifti1Image(data.astype(np.float32), affine), nib.Nifti1Image(labels.astype(np.int16), affine)


def moved(img: nib.Nifti1Image, matrix: np.ndarray, labels: bool = False) -> nib.Nifti1Image:
    """``img`` resampled so that the new image at world y shows the old one at ``matrix``^-1 y (same grid)."""
    inv = torch.tensor(np.linalg.inv(matrix))
    grid = world_grid(img.shape, torch.tensor(img.affine))
    src = (inv[:3, :3] @ grid.reshape(3, -1) + inv[:3, 3:]).reshape(grid.shape)
    data = torch.tensor(np.asarray(img.get_fdata()))[None]
    out = sample_world(data, torch.tensor(img.affine), src, mode="nearest" if labels else "bilinear")[0].numpy()
    return nib.Nifti1Image(out.astype(np.int16 if labels else np.float32), img.affine)


def reoriented(img: nib.Nifti1Image, perm, flips) -> nib.Nifti1Image:
    """The same image stored with its array axes permuted and flipped (the affine follows: same world)."""
    data = np.asarray(img.dataobj)
    new = data
    for axis, f in enumerate(flips):
        if f:
            new = np.flip(new, axis)
    new = np.transpose(new, perm)
    index_to_old = np.eye(4)
    for new_axis, old_axis in enumerate(perm):
        index_to_old[:, new_axis] = 0
        n = data.shape[old_axis]
        if flips[old_axis]:
            index_to_old[old_axis, new_axis], index_to_old[old_axis, 3] = -1, n - 1
        else:
            index_to_old[old_axis, new_axis] = 1
    index_to_old[3] = [0, 0, 0, 1]
    return nib.Nifti1Image(np.ascontiguousarray(new), img.affine @ index_to_old)


def tiny_model(frame=FRAME_3D) -> sm.SearchMorph:
    torch.manual_seed(0)
    model = sm.SearchMorph(TINY_3D).eval()
    for p in model.iterator.flow_head[-1].parameters():
        torch.nn.init.normal_(p, std=0.02)
    model.metadata = {"frame": frame}
    return model


def mean_dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([2 * ((a == k) & (b == k)).sum() / ((a == k).sum() + (b == k).sum()) for k in (1, 2, 3)]))


def test_reoriented_is_the_same_image_in_world_space(brain):
    img = brain[0]
    other = reoriented(img, (2, 0, 1), (True, False, True))
    assert nib.aff2axcodes(other.affine) != nib.aff2axcodes(img.affine)
    grid = np.diag([9.0, 9.0, 9.0, 1.0])
    grid[:3, 3] = [-30.0, -60.0, -20.0]
    points = world_grid((5, 6, 7), torch.tensor(grid))
    a = sample_world(torch.tensor(np.asarray(img.dataobj), dtype=torch.float64)[None], torch.tensor(img.affine), points)
    b = sample_world(torch.tensor(np.asarray(other.dataobj), dtype=torch.float64)[None], torch.tensor(other.affine),
                     points)  # fmt: skip
    assert torch.allclose(a, b, atol=1e-5) and a.abs().max() > 0.1


@pytest.mark.parametrize("ndim", [2, 3])
def test_affine_stage_recovers_a_known_affine_within_half_a_voxel(brain, ndim):
    img = brain[0]
    matrix = np.eye(4)
    matrix[:3, :3] = rotation([6, -5, 8] if ndim == 3 else [0, 0, 9]) @ np.diag([1.06, 0.95, 1.03])
    matrix[:3, 3] = [7.0, -9.0, 5.0 if ndim == 3 else 0.0]
    moving_img = moved(img, matrix)  # moving at matrix(x) shows fixed at x
    if ndim == 2:  # one axial slice of each, through z = 0 (the affine keeps z)
        k = 18
        fixed = as_image(img.slicer[:, :, k : k + 1], 2, "fixed")
        moving = as_image(moving_img.slicer[:, :, k : k + 1], 2, "moving", fixed.world_axes)
        matrix = np.delete(np.delete(matrix, 2, 0), 2, 1)
    else:
        fixed, moving = as_image(img, 3, "fixed"), as_image(moving_img, 3, "moving")
    result = affine_register(torch.tensor(robust_unit(moving.data)), torch.tensor(moving.affine),
                             torch.tensor(robust_unit(fixed.data)), torch.tensor(fixed.affine),
                             spacings=(16.0, 8.0, 4.0))  # fmt: skip
    fg = robust_unit(fixed.data) > 0.1
    pts = world_grid(fixed.data.shape, torch.tensor(fixed.affine)).numpy().reshape(ndim, -1)[:, fg.ravel()]
    truth = matrix[:ndim, :ndim] @ pts + matrix[:ndim, ndim:]
    rms_mm = np.sqrt(((result.apply(pts) - truth) ** 2).sum(0).mean())
    assert rms_mm < 0.5 * 4.0, rms_mm  # half a 4 mm voxel
    start = np.sqrt(((pts - truth) ** 2).sum(0).mean())
    assert start > 4 * 4.0  # the test starts far from the answer


def test_the_model_grid_has_the_frame_orientation_and_voxel_whatever_the_file_layout(brain):
    model = tiny_model()
    grids = []
    for img in (brain[0], reoriented(brain[0], (1, 2, 0), (False, True, True))):
        fixed = as_image(img, 3, "fixed")
        shape, affine = model_grid(fixed, robust_unit(fixed.data), frame_of(model), model.size_multiple)
        assert nib.aff2axcodes(affine) == ("I", "P", "R") and np.allclose(np.linalg.norm(affine[:3, :3], axis=0), 8)
        grids.append((shape, affine))
    assert grids[0][0] == grids[1][0] == (32, 32, 32)
    assert np.allclose(grids[0][1], grids[1][1], atol=1e-6)


def test_result_does_not_depend_on_the_axis_order_of_the_files(brain):
    img, labels = brain
    matrix = np.eye(4)
    matrix[:3, :3] = rotation([4, 3, -5])
    matrix[:3, 3] = [5.0, -4.0, 3.0]
    moving, moving_labels = moved(img, matrix), moved(labels, matrix, labels=True)
    model = tiny_model()
    base = register_images(moving, img, model, refine_steps=0)
    perm, flips = (2, 0, 1), (True, True, False)
    other = register_images(reoriented(moving, perm, flips), img, model, refine_steps=0)
    assert np.abs(base.displacement - other.displacement).max() < 0.05  # mm
    a = base.apply(moving_labels, labels=True)
    b = other.apply(reoriented(moving_labels, perm, flips), labels=True)
    fixed_labels = np.asarray(labels.dataobj)
    assert abs(mean_dice(a, fixed_labels) - mean_dice(b, fixed_labels)) < 0.005


def test_composition_matches_affine_then_field(brain):
    """phi(x) = T(x + R u(x)): a constant network field of one grid voxel along axis 0 moves every point 8 mm
    along the grid's first axis (inferior), before the affine."""
    img = brain[0]
    model = tiny_model()
    torch.nn.init.zeros_(model.iterator.flow_head[-1].weight)
    torch.nn.init.zeros_(model.iterator.flow_head[-1].bias)
    reg0 = register_images(img, img, model, stage="deform")
    assert np.abs(reg0.displacement).max() < 1e-6  # identity: a zero field and no affine
    with torch.no_grad():
        model.iterator.flow_head[-1].bias[0] = 1.0 / TINY_3D.iterations / 2  # 1 voxel after upsampling x2
    reg = register_images(img, img, model, stage="deform")
    inner = tuple(slice(8, -8) for _ in range(3))
    expected = -8.0 * reg.network_field[0].mean()  # grid axis 0 runs towards inferior: -z in RAS
    assert abs(reg.network_field[0].mean() - 1.0) < 0.05
    assert np.allclose(reg.displacement[2][inner], expected, atol=0.5)
    assert np.abs(reg.displacement[:2][(slice(None), *inner)]).max() < 0.5


def test_ants_reads_the_transform_and_reproduces_out_and_labels(brain, tmp_path):
    ants = pytest.importorskip("ants")
    img, labels = brain
    matrix = np.eye(4)
    matrix[:3, :3] = rotation([3, -4, 5])
    matrix[:3, 3] = [4.0, 6.0, -3.0]
    moving = reoriented(moved(img, matrix), (1, 0, 2), (False, True, False))
    moving_labels = reoriented(moved(labels, matrix, labels=True), (1, 0, 2), (False, True, False))
    for name, x in (("m", moving), ("ml", moving_labels), ("f", img)):
        nib.save(x, tmp_path / f"{name}.nii.gz")
    sm.save_checkpoint(tmp_path / "ck.pt", tiny_model(), metadata={"frame": FRAME_3D})
    args = ["register", "--moving", str(tmp_path / "m.nii.gz"), "--fixed", str(tmp_path / "f.nii.gz"),
            "--checkpoint", str(tmp_path / "ck.pt"), "--out", str(tmp_path / "w.nii.gz"), "--moving-labels",
            str(tmp_path / "ml.nii.gz"), "--labels-out", str(tmp_path / "wl.nii.gz"), "--transform-out",
            str(tmp_path / "T.nii.gz"), "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    fixed_a = ants.image_read(str(tmp_path / "f.nii.gz"))
    ours = nib.load(tmp_path / "w.nii.gz").get_fdata()
    theirs = ants.apply_transforms(fixed_a, ants.image_read(str(tmp_path / "m.nii.gz")), [str(tmp_path / "T.nii.gz")],
                                   interpolator="linear").numpy()  # fmt: skip
    inner = tuple(slice(4, -4) for _ in range(3))
    assert np.abs(ours - theirs)[inner].max() < 1e-3 * np.abs(ours).max()
    lab_ours = nib.load(tmp_path / "wl.nii.gz")
    moving_labels_a = ants.image_read(str(tmp_path / "ml.nii.gz"))
    lab_theirs = ants.apply_transforms(fixed_a, moving_labels_a, [str(tmp_path / "T.nii.gz")],
                                       interpolator="nearestNeighbor").numpy()  # fmt: skip
    assert (lab_ours.get_fdata() == lab_theirs)[inner].mean() > 0.999
    assert lab_ours.get_data_dtype() == np.int16 and set(np.unique(lab_ours.get_fdata())) <= {0, 1, 2, 3}
    assert np.allclose(lab_ours.affine, img.affine) and lab_ours.shape == img.shape


def test_outputs_carry_the_fixed_header(brain, tmp_path):
    img = brain[0]
    fixed = nib.Nifti1Image(np.asarray(img.dataobj), img.affine)
    fixed.header.set_xyzt_units("micron", "msec")
    fixed.set_sform(img.affine, code=4)
    fixed.set_qform(img.affine, code=1)
    nib.save(fixed, tmp_path / "f.nii.gz")
    nib.save(img, tmp_path / "m.nii.gz")
    assert main(["register", "--moving", str(tmp_path / "m.nii.gz"), "--fixed", str(tmp_path / "f.nii.gz"),
                 "--stage", "affine", "--out", str(tmp_path / "w.nii.gz"), "--transform-out",
                 str(tmp_path / "t.nii.gz")]) == 0  # fmt: skip
    for name in ("w", "t"):
        out = nib.load(tmp_path / f"{name}.nii.gz")
        assert out.header.get_xyzt_units() == ("micron", "msec")
        assert int(out.header["sform_code"]) == 4 and int(out.header["qform_code"]) == 1
        assert np.allclose(out.get_qform(), img.affine) and np.allclose(out.affine, img.affine)
    assert nib.load(tmp_path / "t.nii.gz").header.get_intent()[0] == "vector"


@pytest.mark.parametrize("layout", [(0, 1), (1, 2), (0, 2)])
def test_2d_images_register_the_same_whatever_axis_holds_the_single_slice(brain, layout):
    img = brain[0]
    k = 18
    data = np.asarray(img.dataobj)[:, :, k]  # (x, y)
    base_affine = img.affine.copy()
    base_affine[:3, 3] = base_affine[:3, 3] + base_affine[:3, 2] * k
    results = []
    for axes in [(0, 1), layout]:
        shape = [1, 1, 1]
        shape[axes[0]], shape[axes[1]] = data.shape
        affine = np.eye(4)
        affine[:3, axes[0]], affine[:3, axes[1]] = base_affine[:3, 0], base_affine[:3, 1]
        affine[:3, [a for a in range(3) if a not in axes][0]] = base_affine[:3, 2]
        affine[:3, 3] = base_affine[:3, 3]
        f = nib.Nifti1Image(data.reshape(shape).astype(np.float32), affine)
        m = nib.Nifti1Image(np.roll(f.get_fdata(), 2, axis=axes[0]).astype(np.float32), f.affine)
        reg = register_images(m, f, None, stage="affine")
        results.append((as_image(f, 2, "f").data, reg.displacement))
    assert np.allclose(results[0][0], results[1][0]) and np.allclose(results[0][1], results[1][1], atol=1e-6)


def test_no_overlap_is_refused_in_one_line(brain, tmp_path, capsys):
    img = brain[0]
    far = img.affine.copy()
    far[:3, 3] += 5000.0
    nib.save(img, tmp_path / "f.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), far), tmp_path / "m.nii.gz")
    sm.save_checkpoint(tmp_path / "ck.pt", tiny_model(), metadata={"frame": FRAME_3D})
    args = ["register", "--moving", str(tmp_path / "m.nii.gz"), "--fixed", str(tmp_path / "f.nii.gz"),
            "--checkpoint", str(tmp_path / "ck.pt"), "--out", str(tmp_path / "w.nii.gz")]  # fmt: skip
    code = main([*args, "--stage", "deform"])  # the headers alone: 5 m apart
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "do not overlap" in err[0] and not (tmp_path / "w.nii.gz").exists()
    assert main([*args, "--stage", "affine"]) == 0  # the centres of mass bring them together


@pytest.mark.parametrize("which", ["--fixed", "--moving"])
def test_a_singular_affine_is_refused_before_any_work(brain, tmp_path, capsys, which):
    img = brain[0]
    flat = img.affine.copy()
    flat[:3, 2] = 0.0
    nib.save(img, tmp_path / "ok.nii.gz")
    bad = nib.Nifti1Image(np.asarray(img.dataobj), None)
    bad.set_sform(flat, code=2)  # a qform cannot hold a singular affine: the sform alone
    nib.save(bad, tmp_path / "flat.nii.gz")
    paths = {"--moving": tmp_path / "ok.nii.gz", "--fixed": tmp_path / "ok.nii.gz"}
    paths[which] = tmp_path / "flat.nii.gz"
    code = main(["register", "--moving", str(paths["--moving"]), "--fixed", str(paths["--fixed"]),
                 "--checkpoint", "brain3d", "--out", str(tmp_path / "w.nii.gz")])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "singular affine" in err[0] and which in err[0]


def test_register_takes_nibabel_images_and_returns_the_warped_image_on_the_fixed_grid(brain):
    img = brain[0]
    warped, reg = sm.register(img, img, tiny_model())
    assert isinstance(warped, nib.Nifti1Image) and warped.shape == img.shape
    assert np.allclose(warped.affine, img.affine) and reg.displacement.shape == (3, *img.shape)


def test_a_masked_array_is_refused(brain):
    a = np.ma.masked_less(np.ones((32, 32)), 0.5)
    with pytest.raises(ValueError, match="masked array"):
        sm.register(a, np.ones((32, 32)), sm.SearchMorph(sm.SearchMorphConfig(widths=(4, 8, 8, 8))))


def test_parzen_weights_equal_the_dense_gaussian_windows():
    # the affine stage's MI evaluates each window on its 6 nearest bins: the dense windows, to float32 precision
    import torch

    from searchmorph_lite.affine import parzen_weights

    v = torch.cat([torch.tensor([0.0, 1.0, 0.5, 1 / 64]), torch.rand(500, generator=torch.Generator().manual_seed(0))])
    centres = (torch.arange(32, dtype=torch.float64) + 0.5) / 32
    dense = torch.exp(-((v.double()[:, None] - centres) ** 2) / (2 * (0.5 / 32) ** 2))
    dense = dense / dense.sum(1, keepdim=True)
    assert torch.allclose(parzen_weights(v).double(), dense, atol=2e-6)
