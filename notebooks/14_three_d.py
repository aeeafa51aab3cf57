# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-papermill,-execution
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 14. SearchMorph in 3D
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/searchmorph-book/searchmorph-book/blob/main/notebooks/14_three_d.ipynb)
#
# The paper stops at 2D. Its Sec. V names the reason: the all-pairs correlation volume of eq. 1 holds one value
# per *pair* of positions, and a brain volume has millions of positions. The first half of this chapter takes the
# search to 3D: the diamond of eq. 3 becomes an octahedron, and the search reads the pooled fixed features
# directly (chapter 7's lean search), so the volume is never built. The second half registers what users
# actually have: two NIfTI brains in different orientations and voxel sizes, with labels to carry across. One
# command reads both with their affines, aligns them with an affine, runs the 3D network in the frame it was
# trained in, composes everything into one transform on the fixed image's grid, and writes that transform so
# that ANTs reads it. We open every stage, check it, and end with a table against ANTs and VoxelMorph-3D.

# %% tags=["colab-install", "hide-input"]
# Colab only: install the book's library (written by .ci/notebook_header.py)
import os
import subprocess
import sys
import urllib.request

BOOK_URL = "https://searchmorph-book.github.io/searchmorph-book"
REPOSITORY = "https://github.com/searchmorph-book/searchmorph-book"
if "google.colab" in sys.modules:  # the library's loose dependencies keep Colab's torch
    book = os.environ.get("SEARCHMORPH_BOOK_URL", BOOK_URL).rstrip("/")
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    try:  # the wheel on the book's own site; _static/wheels/LATEST holds its file name
        with urllib.request.urlopen(f"{book}/_static/wheels/LATEST", timeout=60) as r:
            wheel = r.read().decode().strip()
        subprocess.run([*pip, f"{book}/_static/wheels/{wheel}"], check=True)
    except Exception as err:  # no site or no wheel: install from the repository
        print(f"no wheel from {book} ({err}); installing from {REPOSITORY}")
        subprocess.run([*pip, f"git+{REPOSITORY}"], check=True)
    subprocess.run([*pip, "antspyx"], check=True)  # also needed by this chapter

# %%
import atexit
import itertools
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ants
import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from IPython.display import Markdown, display
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform
from nilearn import datasets
from scipy import ndimage as ndi

import searchmorph_lite as sm
from searchmorph_lite.affine import downsample, sample_world, world_grid
from searchmorph_lite.book import setup
from searchmorph_lite.correlation import all_pairs_bytes
from searchmorph_lite.data import load_dataset
from searchmorph_lite.inference import refine_settings
from searchmorph_lite.pipeline import frame_of
from searchmorph_lite.provenance import card_of, describe
from searchmorph_lite.scoring import input_use

# %% tags=["parameters"]
seed = 0
device = "auto"
# PyTorch and ITK (ANTs) threads: one is steady on a shared machine; 0: their defaults
threads = 1
# the two volumes made from MNI152: the fixed one at 2 mm, the moving one at 1.5 mm
fixed_mm = 2.0
moving_mm = 1.5
# the known deformation of the moving volume: largest smooth displacement (mm)
warp_mm = 5.0
# brain3d test pairs written as NIfTI for the comparison table (2 to 4)
test_pairs = 2
# pairs ANTs SyN registers (the MNI pair first, then test pairs); 0: none
syn_pairs = 2
# refinement steps of the "SearchMorph-3D + refinement" row (--refine N)
refine_steps = 30
# validation pairs of the search check (the network alone, three times each)
search_pairs = 4

# %%
device = setup(seed, device, threads)  # seed, threads; returns the device
if (
    threads
):  # read when ANTs first runs; on one thread a seeded ANTs run repeats exactly
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
WORK = Path(tempfile.mkdtemp(prefix="ch14_"))  # every file of this chapter goes here
atexit.register(shutil.rmtree, WORK, ignore_errors=True)

# %% [markdown]
# ## The octahedron
#
# Eq. 3 searches, around each warped position $p + \phi(p)$, the offsets $d$ with $\|d\|_1 \le r$. In 2D that is
# a diamond of $2r^2 + 2r + 1$ offsets. Nothing in the equation is 2D: with three integer coordinates the same
# rule gives an octahedron. `sm.diamond_offsets(r, ndim=3)` returns its offsets in lexicographic order, and we
# check it against a loop over the cube $[-r, r]^3$:

# %% tags=["nbval-check-output"]
for r in range(5):
    octahedron = sm.diamond_offsets(r, ndim=3)
    cube = [d for d in itertools.product(range(-r, r + 1), repeat=3)]
    brute = sorted(d for d in cube if sum(abs(v) for v in d) <= r)
    assert [tuple(d) for d in octahedron.tolist()] == brute
    print(
        f"radius {r}: {len(octahedron):3d} offsets in 3D "
        f"({len(sm.diamond_offsets(r)):2d} in 2D, {len(cube):3d} in the cube)"
    )

# %%
octa = sm.diamond_offsets(2, ndim=3).numpy()
fig = plt.figure(figsize=(11, 4.2), constrained_layout=True)
ax = fig.add_subplot(1, 2, 1, projection="3d")
norm = np.abs(octa).sum(1)
points = ax.scatter(*octa.T, c=norm, cmap="viridis", s=60, depthshade=False)
ax.set(xlabel="depth", ylabel="row", zlabel="column", title="radius 2: 25 offsets")
fig.colorbar(points, ax=ax, shrink=0.6, label="$\\|d\\|_1$")
ax2 = fig.add_subplot(1, 2, 2)
diamond = sm.diamond_offsets(2).numpy()
ax2.scatter(diamond[:, 1], diamond[:, 0], c=np.abs(diamond).sum(1), s=120)
ax2.set(aspect="equal", title="the same rule in 2D: 13 offsets", xlabel="column")
ax2.set_ylabel("row")
ax2.invert_yaxis()
plt.show()

# %% [markdown]
# ## Why 3D needs the lean search
#
# The all-pairs volume (eq. 1) at feature resolution $S/2$ holds $N^2$ correlations, $N = \prod_k S_k / 2$; the
# pyramid adds its pooled levels. In float32:
#
# $$\text{bytes} = 4 N \sum_{l=0}^{L-1} \prod_k \frac{S_k}{2 \cdot 2^l}.$$
#
# The lean search (chapter 7) never stores it: level $l$ of the correlation at $(p, q)$ is
# $\langle h_M(p), \text{avgpool}_{2^l}(h_F)(q) \rangle$, so it samples the pooled *features* at the $K$
# searched positions and takes inner products. The table below is the stored output of the benchmarks' `memory`
# suite (`python -m benchmarks --suite memory`, code in `benchmarks/memory.py`, results in
# `benchmarks/memory3d.json`): the first column by the formula, the second measured (the bytes of tensors alive at
# once while `search_features` builds one search map). The suite takes the formula from the library
# (`searchmorph_lite.correlation.all_pairs_bytes`); we recompute it here and check the stored column.

# %%
memory = json.loads(Path("../benchmarks/memory3d.json").read_text())["rows"]
rows = []
for row in memory:
    formula = all_pairs_bytes(tuple(row["features"]), row["levels"])
    assert formula == row["all_pairs_bytes"]
    rows.append(
        {
            "image": " x ".join(map(str, row["image"])),
            "stride": row["stride"],
            "all-pairs (GB)": row["all_pairs_bytes"] / 1e9,
            "lean search peak (GB)": row["lean_peak_bytes"] / 1e9,
            "ratio": f"{row['ratio']:.0f}x",
        }
    )
pd.DataFrame(rows).style.format(
    {"all-pairs (GB)": "{:,.3f}", "lean search peak (GB)": "{:.3f}"}
).hide(axis="index")

# %% [markdown]
# A 160 x 192 x 160 brain (1 mm) at the paper's half resolution would need about 1.7 TB for the volume and its
# pyramid (1.5 TB for level 0 alone); the lean search needs a few GB, and grows only linearly with $N$ (times
# $K$ offsets and $L$ levels).
#
# ## Proof: the lean 3D search reads the all-pairs volume
#
# On a grid small enough for the volume, the two paths must agree. We also read a few values off by hand: at an
# integer field, level 0 at voxel $p$ and offset $d$ is $\langle h_M(p), h_F(p + \phi(p) + d) \rangle$ (zero
# outside the grid).

# %% tags=["nbval-check-output"]
gen = torch.Generator().manual_seed(0)
h_m, h_f = torch.randn(2, 1, 4, 8, 8, 8, generator=gen)
flow = torch.randint(-1, 2, (1, 3, 8, 8, 8), generator=gen).double()
h_m, h_f = h_m.double(), h_f.double()
lean = sm.search_features(h_m, h_f, flow, radius=2, levels=2)
volume = sm.cost_volume(h_m, h_f)
full = sm.search_pyramid(sm.correlation_pyramid(volume, levels=2), flow, radius=2)
print("search map", tuple(lean.shape), "= 2 levels x 25 offsets over 8 x 8 x 8 voxels")
print("max |lean - all-pairs| =", f"{(lean - full).abs().max().item():.1e}")
assert torch.allclose(lean, full, atol=1e-10)
offsets = sm.diamond_offsets(2, ndim=3)
for p, k in [((3, 4, 5), 0), ((4, 4, 4), 12), ((4, 2, 6), 24)]:
    q = [p[a] + int(flow[0, a][p]) + int(offsets[k, a]) for a in range(3)]
    inside = all(0 <= v < 8 for v in q)
    by_hand = 0.0
    if inside:
        by_hand = float((h_m[0, :, *p] * h_f[0, :, *q]).sum())
    value = float(lean[0, k][p])
    assert abs(by_hand - value) < 1e-10
    print(f"voxel {p}, offset {tuple(offsets[k].tolist())}: {value:+.4f}")

# %% [markdown]
# ## Two brains in two frames
#
# A NIfTI file stores an array and an affine $A$ that maps a voxel index $(i, j, k)$ to a world point in
# millimetres (nibabel's RAS+: $x$ towards the subject's right, $y$ anterior, $z$ superior):
#
# $$x_{\text{world}} = A \begin{pmatrix} i & j & k & 1 \end{pmatrix}^\top.$$
#
# Two scans of one head rarely share $A$: the array axes may run along other anatomical directions (nibabel names
# them by *axis codes*, the direction each index increases towards: "RAS", "LPS", "PIL", ...), the voxels have
# other sizes, the field of view and the head position differ. We make such a pair from the MNI152 template that
# ships with nilearn (1 mm, skull-stripped here, with tissue labels 0 background, 1 CSF and other brain, 2 grey
# matter, 3 white matter, as `searchmorph_lite/data/mni152.py` makes them):
#
# - **fixed**: the template resampled to 2 mm on a box around the brain, stored RAS (as MNI152 itself);
# - **moving**: the template under a known affine $B$ (rotations, scales, a shift) and a known smooth warp $w$,
#   resampled to 1.5 mm and stored with its axes in another order and flipped ("PIL": index 0 runs towards
#   posterior, 1 towards inferior, 2 towards the subject's left). The moving voxel at world point $y$ shows the
#   template at $B y + c + w(y)$.


# %%
def mni152_1mm() -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """The MNI152 T1 (brain only) and its tissue labels 0-3, at 1 mm, RAS."""
    t1 = datasets.load_mni152_template(resolution=1)
    gm, wm, mask = (
        np.asarray(load(resolution=1).get_fdata())
        for load in (
            datasets.load_mni152_gm_template,
            datasets.load_mni152_wm_template,
            datasets.load_mni152_brain_mask,
        )
    )
    brain = ndi.binary_fill_holes(mask > 0.5)
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
    labels = np.where(brain, 1 + np.argmax(np.stack([csf, gm, wm]), axis=0), 0)
    data = np.clip(t1.get_fdata(), 0.0, None) * brain
    return (
        nib.Nifti1Image(data.astype(np.float32), t1.affine),
        nib.Nifti1Image(labels.astype(np.int16), t1.affine),
    )


def values_at(img: nib.Nifti1Image, points: torch.Tensor, labels=False) -> np.ndarray:
    """``img`` sampled at world points (3, *T): linear, or nearest for labels."""
    data = torch.from_numpy(np.asarray(img.get_fdata()))[None]
    mode = "nearest" if labels else "bilinear"
    return sample_world(data, torch.from_numpy(img.affine), points, mode)[0].numpy()


def stored_as(img: nib.Nifti1Image, axcodes: str) -> nib.Nifti1Image:
    """The same image (same world) with its array axes along ``axcodes``."""
    change = ornt_transform(io_orientation(img.affine), axcodes2ornt(axcodes))
    return img.as_reoriented(change)


# %% [markdown]
# The known transform: a rotation of a few degrees about each axis, scales of a few per cent, a shift, and a
# smooth random warp (a $4 \times 5 \times 4$ grid of random vectors, interpolated, scaled to `warp_mm` at most).
# `box` is a grid of `mm` voxels around the brain, its affine a diagonal one (RAS).


# %%
def box(lo: np.ndarray, hi: np.ndarray, mm: float) -> tuple[tuple, np.ndarray]:
    """(shape, RAS affine) of a grid of ``mm`` voxels from world ``lo`` to ``hi``."""
    shape = tuple(int(math.ceil((h - low) / mm)) + 1 for low, h in zip(lo, hi))
    affine = np.diag([mm, mm, mm, 1.0])
    affine[:3, 3] = lo
    return shape, affine


rotation = sm.affine.rotation_matrix  # 3 x 3, about the x, y and z axes in turn


template, template_labels = mni152_1mm()
index = np.stack(np.nonzero(np.asarray(template_labels.dataobj)))
brain_mm = template.affine[:3, :3] @ index + template.affine[:3, 3:]
lo, hi = brain_mm.min(1) - 6, brain_mm.max(1) + 6  # the brain and 6 mm around it
centre = (lo + hi) / 2
B = rotation([8.0, -6.0, 5.0]) * np.array([1.06, 0.95, 1.02])[None]
c = centre - B @ centre + np.array([5.0, -7.0, 4.0])


# %%
def make_moving(warp: float, axcodes: str = "PIL") -> tuple:
    """(moving image, labels): the template at B y + c + w(y), moving_mm voxels."""
    shape, affine = box(lo - 8, hi + 8, moving_mm)
    points = world_grid(shape, torch.from_numpy(affine))
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 3, 4, 5, 4, generator=gen, dtype=torch.float64)
    w = F.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)[0]
    w = w * (warp / w.norm(dim=0).max())  # the largest displacement: `warp` mm
    flat = torch.from_numpy(B) @ points.reshape(3, -1) + torch.from_numpy(c)[:, None]
    source = flat.reshape(points.shape) + w
    image = nib.Nifti1Image(values_at(template, source).astype(np.float32), affine)
    labels = values_at(template_labels, source, labels=True).astype(np.int16)
    labels = nib.Nifti1Image(labels, affine)
    return stored_as(image, axcodes), stored_as(labels, axcodes)


shape, affine = box(lo, hi, fixed_mm)
fixed_points = world_grid(shape, torch.from_numpy(affine))
fixed = nib.Nifti1Image(values_at(template, fixed_points).astype(np.float32), affine)
fixed_labels = values_at(template_labels, fixed_points, labels=True)
fixed_labels = nib.Nifti1Image(fixed_labels.astype(np.int16), affine)
moving, moving_labels = make_moving(warp_mm)
files = {
    "fixed": fixed,
    "fixed_labels": fixed_labels,
    "moving": moving,
    "moving_labels": moving_labels,
}
for name, img in files.items():
    nib.save(img, WORK / f"{name}.nii.gz")

# %% tags=["nbval-check-output"]
for name in ("moving", "fixed"):
    img = nib.load(WORK / f"{name}.nii.gz")
    voxel = np.linalg.norm(img.affine[:3, :3], axis=0)
    print(
        f"{name:<7} {'x'.join(map(str, img.shape)):>12} voxels of "
        f"{' x '.join(f'{v:g}' for v in voxel)} mm, axis codes "
        f"{''.join(nib.aff2axcodes(img.affine))}"
    )

# %% [markdown]
# ## The frames in pictures
#
# Each panel below is the middle slice across one array axis *as stored*: rows run along the first remaining
# axis, columns along the second, and the axis labels say where each index goes (its axis code). The extent is in
# millimetres, so the two voxel sizes show at their true scale. The moving volume, stored PIL, shows its coronal and
# axial planes mirrored (the subject's left on the right) and its sagittal plane on its side; the fixed volume,
# stored RAS, shows every plane turned by 90 degrees, and its planes come in another order.

# %%
NAMES = {"R": "right", "L": "left", "A": "anterior", "P": "posterior"}
NAMES |= {"S": "superior", "I": "inferior"}
PLANES = {"S": "axial", "I": "axial", "A": "coronal", "P": "coronal"}
PLANES |= {"R": "sagittal", "L": "sagittal"}


def show_planes(row, data, affine, name, cmap="gray", **kwargs):
    """The middle slice across each array axis of ``data`` (as stored), mm extents."""
    codes, voxel = nib.aff2axcodes(affine), np.linalg.norm(affine[:3, :3], axis=0)
    images = []
    for axis, ax in enumerate(row):
        r, s = [a for a in range(3) if a != axis]
        cut = np.take(data, data.shape[axis] // 2, axis=axis)
        extent = (0, cut.shape[1] * voxel[s], cut.shape[0] * voxel[r], 0)
        images.append(ax.imshow(cut, cmap=cmap, extent=extent, **kwargs))
        ax.set_title(f"{name}: {PLANES[codes[axis]]} (across {codes[axis]})")
        ax.set_xlabel(f"axis {s} (mm) → {NAMES[codes[s]]}")
        ax.set_ylabel(f"axis {r} (mm) → {NAMES[codes[r]]}")
    return images


fig, axes = plt.subplots(2, 3, figsize=(9.5, 6.6), constrained_layout=True)
show_planes(axes[0], moving.get_fdata(), moving.affine, "moving")
show_planes(axes[1], fixed.get_fdata(), fixed.affine, "fixed")
plt.show()

# %% [markdown]
# ## One command
#
# `searchmorph register` takes the two files as they are. `--checkpoint brain3d` is the shipped SearchMorph-3D,
# `--out` the moving volume on the fixed grid, `--moving-labels`/`--labels-out` carry the label map across,
# `--transform-out` writes the transform for other tools. (We run it as `python -m searchmorph_lite`, the same
# program, so that it uses this kernel's Python.)

# %%
command = (
    "searchmorph register --moving moving.nii.gz --fixed fixed.nii.gz"
    " --checkpoint brain3d --out warped.nii.gz --moving-labels moving_labels.nii.gz"
    " --labels-out warped_labels.nii.gz --transform-out transform.nii.gz --device cpu"
)
env = dict(os.environ)
if threads:
    env["OMP_NUM_THREADS"] = str(threads)  # as this kernel: the same numbers
program = [sys.executable, "-m", "searchmorph_lite"]
start = time.perf_counter()
done = subprocess.run(
    [*program, *shlex.split(command)[1:]],
    cwd=WORK,
    env=env,
    capture_output=True,
    text=True,
)
cli_seconds = time.perf_counter() - start
assert done.returncode == 0, done.stderr
print("$", command)
print(done.stdout.strip(), f"\n({cli_seconds:.1f} s, model loading included)")

# %% [markdown]
# Every output lies on the fixed grid and carries the fixed file's header; the labels keep their integer type and
# values:

# %% tags=["nbval-check-output"]
out = {
    n: nib.load(WORK / f"{n}.nii.gz") for n in ("warped", "warped_labels", "transform")
}
for name, img in out.items():
    same = np.allclose(img.affine, fixed.affine)
    print(f"{name:<14} shape {img.shape}, {img.get_data_dtype()}, fixed affine: {same}")
print(
    "labels carried:", np.unique(out["warped_labels"].get_fdata()).astype(int).tolist()
)

# %% [markdown]
# The same registration is one call in Python, `sm.register_images(moving, fixed, model)` (paths or nibabel images
# in, a `Registration` out), and `Registration.apply` resamples any image of the moving space through it. We run
# it here to open its stages one by one, and check first that it is what the command wrote:

# %% tags=["nbval-check-output"]
model = sm.load_pretrained("brain3d", device=device)
reg = sm.register_images(WORK / "moving.nii.gz", WORK / "fixed.nii.gz", model)
gap = np.abs(reg.apply() - out["warped"].get_fdata()).max()
carried = reg.apply(WORK / "moving_labels.nii.gz", labels=True)
assert gap < 1e-3 and np.array_equal(carried, out["warped_labels"].get_fdata())
print("register_images reproduces --out (within 1e-3) and --labels-out (exactly)")

# %% [markdown]
# ## The pipeline, stage by stage
#
# ### 1. Read with the affines
#
# The pipeline never compares arrays; it compares world points. Reordering a file's axes (nibabel's
# `as_reoriented`) changes the array and the affine together and leaves every world point's value as it was.
# Here is one world point read from the moving file as stored (PIL) and from a copy stored RAS:

# %% tags=["nbval-check-output"]
copy = stored_as(moving, "RAS")
point = torch.tensor([[10.0], [-20.0], [15.0]], dtype=torch.float64)  # mm, RAS
a, b = values_at(moving, point)[0], values_at(copy, point)[0]
print("axis codes:", "".join(nib.aff2axcodes(moving.affine)), "and", end=" ")
print("".join(nib.aff2axcodes(copy.affine)), "| arrays equal:", end=" ")
print(moving.shape == copy.shape, "| same value at one world point:", abs(a - b) < 1e-6)

# %% [markdown]
# ### 2. The affine stage
#
# Real pairs differ by far more than the network's training pairs did (a few degrees, a few per cent), so the
# pipeline first finds an affine $T(x) = A x + b$ from a fixed-image world point $x$ to the moving image's world,
# the direction in which images are resampled (as ITK's transforms). It starts from the two centres of mass
# $c_f, c_m$ and optimises $T(x) = c_m + (I + L)(x - c_f) + s\,t$ with Adam, coarse to fine (voxels of 16, 8 and
# 4 mm, `s` the level's voxel size), maximising the mutual information of the two intensities,
#
# $$\mathrm{MI} = \sum_{a, b} p(a, b) \log \frac{p(a, b)}{p(a)\, p(b)},$$
#
# where $p(a, b)$ is the joint histogram of $f(x)$ and $m(T(x))$ with Gaussian Parzen windows (so that it has a
# gradient), and MI does not assume that the two contrasts agree. It is `sm.affine_register`, and
# `register_images(..., stage="affine")` (`--stage affine`) runs it alone. The check: a moving volume with the
# same affine and *no* warp; then the answer is known, $T(x) = B^{-1}(x - c)$, and the stage must find it within
# half a fixed voxel (RMS over the brain).

# %% tags=["nbval-check-output"]
affine_only, _ = make_moving(warp=0.0)
found = sm.register_images(affine_only, fixed, stage="affine")
brain = np.asarray(fixed_labels.dataobj) > 0
x = fixed_points.numpy()[:, brain]
true = np.linalg.solve(B, x - c[:, None])
affine_rms = float(np.sqrt(((found.affine.apply(x) - true) ** 2).sum(0).mean()))
assert affine_rms < fixed_mm / 2
print(
    f"the affine stage recovers a known affine within half a voxel ({fixed_mm / 2} mm)"
)

# %%
print(f"RMS error of the recovered affine: {affine_rms:.2f} mm over the brain")

# %% [markdown]
# ### 3. The model's frame
#
# The network was trained on volumes in one frame: an axis order, a voxel size and a field of view. Training writes
# that frame into the checkpoint (`model.metadata["frame"]`; for checkpoints written before it did,
# `frame_of` reads it from the training configuration). The pipeline builds a grid with the frame's axis codes and
# voxel size, centred on the fixed image's foreground (grown where the brain is larger), with affine
#
# $$G = \begin{pmatrix} R\, \mathrm{diag}(s) & o \\ 0 & 1 \end{pmatrix},$$
#
# $R$ the frame's axis directions (signed unit vectors), $s$ its voxel size, $o$ the origin. The fixed image is
# sampled on it at $G\,(i, j, k, 1)^\top$, the moving image at $T(G\,(i, j, k, 1)^\top)$, both box-filtered to the
# grid's voxel size first so that 1.5 and 2 mm voxels do not alias at 4 mm.

# %% tags=["nbval-check-output"]
frame = frame_of(model)
print("brain3d's frame:", frame)
print(
    "the model grid:",
    "x".join(map(str, reg.grid_shape)),
    "voxels, axis codes",
    "".join(nib.aff2axcodes(reg.grid_affine)),
    "| voxel",
    np.linalg.norm(reg.grid_affine[:3, :3], axis=0).round(3).tolist(),
    "mm",
)

# %% [markdown]
# What the network sees, computed here in five lines from the registration's own affine and grid (the pipeline's
# `register_images` does the same inside), and what it returns: its field $u$ (grid voxels) applied to the moving
# grid image. In the frame's orientation the brain is upright, as in every training volume.


# %%
def on_grid(img, grid_points, voxel_mm):
    """``img`` box-filtered to ``voxel_mm`` and sampled at world points."""
    data, aff = downsample(
        torch.from_numpy(img.get_fdata()), torch.from_numpy(img.affine), voxel_mm
    )
    return sample_world(data[None], aff, grid_points)[0]


g = torch.from_numpy(reg.grid_affine)
grid_points = world_grid(reg.grid_shape, g)
T = torch.from_numpy(reg.affine.matrix)
mapped = (T[:3, :3] @ grid_points.reshape(3, -1) + T[:3, 3:]).reshape(grid_points.shape)
f_grid = on_grid(fixed, grid_points, frame["voxel_mm"][0])
m_grid = on_grid(moving, mapped, frame["voxel_mm"][0])
field = torch.from_numpy(reg.network_field)[None]
m_net = sm.warp(m_grid[None, None].double(), field)[0, 0]

# %%
fig, axes = plt.subplots(4, 3, figsize=(9, 11.5), constrained_layout=True)
show_planes(axes[0], f_grid.numpy(), reg.grid_affine, "fixed")
show_planes(axes[1], m_grid.numpy(), reg.grid_affine, "moving ∘ T")
show_planes(axes[2], m_net.numpy(), reg.grid_affine, "network")
diff = (m_net - f_grid).abs().numpy()
images = show_planes(
    axes[3], diff, reg.grid_affine, "|network - fixed|", vmin=0, vmax=0.5
)
fig.colorbar(images[-1], ax=axes[3], shrink=0.8, label="|intensity difference|")
for ax in axes.flat:
    ax.title.set_fontsize(9)
plt.show()

# %% [markdown]
# ### 4. One composed transform
#
# The network's field $u$ lives on the model grid, in grid voxels. The pipeline samples it at every fixed voxel's
# world point $x$ (linearly), turns it into millimetres with the grid's axes $R\,\mathrm{diag}(s)$, and composes:
#
# $$\phi(x) = T\big(x + R\,\mathrm{diag}(s)\, u(x)\big),$$
#
# the moving-image world point that the fixed voxel at $x$ shows. `reg.displacement` stores $\phi(x) - x$ (mm,
# RAS) on the fixed grid, and every output is one resampling through it (linear for images, nearest for labels):
# no image is interpolated twice. The check recomputes $\phi$ from the parts:

# %% tags=["nbval-check-output"]
u_at_x = sample_world(field[0], g, fixed_points, border=True)  # grid voxels
step = (g[:3, :3] @ u_at_x.reshape(3, -1)).reshape(fixed_points.shape)  # mm
phi = reg.affine.apply((fixed_points + step).numpy())
assert np.allclose(phi - fixed_points.numpy(), reg.displacement, atol=1e-6)
print("phi(x) = T(x + R diag(s) u(x)) is reg.displacement + x (within 1e-6 mm)")

# %% [markdown]
# ### 5. A transform other tools read
#
# ITK (and so ANTs and 3D Slicer) reads a displacement field as a vector image on the fixed grid whose vectors are
# world displacements in millimetres, in ITK's LPS axes: $x$ towards the subject's *left*, $y$ *posterior*, $z$
# superior. RAS and LPS differ by the sign of the first two axes, so
#
# $$d_{\mathrm{LPS}}(x) = \mathrm{diag}(-1, -1, 1)\, d_{\mathrm{RAS}}(x), \qquad d_{\mathrm{RAS}} = \phi(x) - x.$$
#
# `sm.write_itk_displacement(reg)` writes it (`--transform-out`), NIfTI dims $(X, Y, Z, 1, 3)$, intent "vector".
# Then `ants.apply_transforms(fixed, moving, [transform])` must reproduce `--out` and `--labels-out`, up to
# interpolation at the edge of the moving volume:

# %% tags=["nbval-check-output"]
itk = out["transform"].get_fdata()[..., 0, :]  # (X, Y, Z, 3), LPS
ras = np.moveaxis(reg.displacement, 0, -1) * np.array([-1.0, -1.0, 1.0])
assert np.abs(itk - ras).max() < 1e-3
print(
    "transform.nii.gz:",
    out["transform"].header.get_intent()[0],
    "| LPS = diag(-1, -1, 1) RAS",
)
read = {n: ants.image_read(str(WORK / f"{n}.nii.gz")) for n in files}
transform = [str(WORK / "transform.nii.gz")]
by_ants = ants.apply_transforms(read["fixed"], read["moving"], transform).numpy()
labels_by_ants = ants.apply_transforms(
    read["fixed"], read["moving_labels"], transform, interpolator="nearestNeighbor"
).numpy()
inner = tuple(slice(4, -4) for _ in range(3))
ours, ours_labels = out["warped"].get_fdata(), out["warped_labels"].get_fdata()
assert np.abs(by_ants - ours)[inner].max() < 1e-3 * np.abs(ours).max()
assert (labels_by_ants == ours_labels)[inner].mean() > 0.999
print("ANTs reproduces --out (interior, within 0.1 % of the range) and the labels")
print("(interior voxels agreeing > 99.9 %)")

# %% [markdown]
# ### 6. Whatever the axis order
#
# Since every stage works in world coordinates, the file's axis order must not matter. We store the moving volume
# and its labels a third way ("SLA") and register again; the tissue Dice must agree within 0.005.


# %%
def tissue_dice(labels: np.ndarray, reference: np.ndarray) -> float:
    """Mean Dice over tissues 1-3 (CSF and other, grey, white matter)."""
    a = torch.from_numpy(np.rint(labels).astype(np.int64))[None, None]
    b = torch.from_numpy(np.rint(reference).astype(np.int64))[None, None]
    return float(torch.nanmean(sm.dice(a, b, [1, 2, 3])[0]))


reference = np.asarray(fixed_labels.dataobj)
again = sm.register_images(stored_as(moving, "SLA"), fixed, model)
dice_pil = tissue_dice(carried, reference)
dice_sla = tissue_dice(
    again.apply(stored_as(moving_labels, "SLA"), labels=True), reference
)

# %% tags=["nbval-check-output"]
assert abs(dice_pil - dice_sla) < 0.005
print("PIL file and SLA file: the same tissue Dice within 0.005")

# %% [markdown]
# ## Before and after
#
# On the fixed grid, shown in the model's frame (axial, coronal and sagittal, the brain upright): the moving
# volume through the headers alone (the same world point, no transform), after the affine stage, after the whole
# pipeline, and the fixed volume. Then the label maps.


# %%
def tidy(axes, names) -> None:
    """Column titles and plane names only: the frame is the model's for every panel."""
    for ax in axes.flat:
        ax.set(xticks=[], yticks=[], xlabel="", ylabel="", title="")
    for ax, name in zip(axes[0], names):
        ax.set_title(name, fontsize=9)
    for ax, plane in zip(axes[:, 0], ("axial", "coronal", "sagittal")):
        ax.set_ylabel(plane)


def upright(data: np.ndarray) -> np.ndarray:
    """A fixed-grid array (RAS) reordered to the model's frame for display."""
    return np.asarray(stored_as(nib.Nifti1Image(data, fixed.affine), "IPR").dataobj)


ipr = stored_as(fixed, "IPR").affine
before = values_at(moving, fixed_points)
affine_stage = sm.register_images(moving, fixed, stage="affine")
columns = {
    "headers only": before,
    "affine stage": affine_stage.apply(),
    "full pipeline": ours,
    "fixed": fixed.get_fdata(),
}
fig, axes = plt.subplots(3, 5, figsize=(9.5, 6.4), constrained_layout=True)
for col, (name, data) in enumerate(columns.items()):
    show_planes(axes[:, col], upright(data), ipr, name)
error = np.abs(ours - fixed.get_fdata())
images = show_planes(
    axes[:, 4], upright(error), ipr, "|after - fixed|", vmin=0, vmax=0.5
)
fig.colorbar(images[-1], ax=axes[:, 4], shrink=0.6, label="|intensity difference|")
tidy(axes, [*columns, "|after - fixed|"])
plt.show()

# %%
TISSUES = ["background", "CSF and other brain", "grey matter", "white matter"]
COLOURS = ["black", "tab:blue", "tab:orange", "whitesmoke"]
label_cmap = ListedColormap(COLOURS)
maps = {
    "moving, headers only": values_at(moving_labels, fixed_points, labels=True),
    "carried by --labels-out": ours_labels,
    "fixed labels": reference,
}
fig, axes = plt.subplots(3, 3, figsize=(8, 8), constrained_layout=True)
for col, (name, data) in enumerate(maps.items()):
    show_planes(
        axes[:, col], upright(data.astype(np.float32)), ipr, name,
        cmap=label_cmap, vmin=-0.5, vmax=3.5, interpolation="nearest",
    )  # fmt: skip
tidy(axes, list(maps))
handles = [Patch(color=col, label=name) for col, name in zip(COLOURS, TISSUES)]
fig.legend(handles=handles, loc="outside lower center", ncols=4)
plt.show()

# %% [markdown]
# ## The comparison
#
# The same files go to every method: this pair, and `test_pairs` pairs of `brain3d`'s test split (virtual
# subjects at 4 mm, chapter 1's recipe in 3D) written as NIfTI, the fixed volume stored RAS and the moving one PIL.
# The methods: the identity (the headers alone), ANTs Affine and ANTs SyN (`type_of_transform="SyN"`, which runs
# its own affine stage first; seeded, on `threads` ITK threads), the pipeline's affine stage alone
# (`--stage affine`), and the pipeline with VoxelMorph-3D (`brain3d-voxelmorph`), with SearchMorph-3D
# (`brain3d`), and with SearchMorph-3D refined for `refine_steps` steps (`--refine`). Each method's labels land
# on the fixed grid and are scored by the same tissue Dice; the seconds are wall-clock seconds for one pair on
# `threads` thread(s), model loading excluded, on a shared machine.


# %%
def write_pair(item: dict, k: int) -> dict:
    """A brain3d pair (arrays in brain3d's I, P, R order) as NIfTI files."""
    ipr = np.array([[0, 0, 4.0, 0], [0, -4.0, 0, 0], [-4.0, 0, 0, 0], [0, 0, 0, 1]])
    ipr[:3, 3] = -ipr[:3, :3] @ np.full(3, 23.5)  # the grid's centre at the origin
    paths = {}
    for key, codes in (("moving", "PIL"), ("fixed", "RAS")):
        for suffix, dtype in (("", np.float32), ("_labels", np.int16)):
            data = item[key + suffix][0].numpy().astype(dtype)
            img = stored_as(nib.Nifti1Image(data, ipr), codes)
            paths[key + suffix] = WORK / f"test{k}_{key}{suffix}.nii.gz"
            nib.save(img, paths[key + suffix])
    return paths


test_set = load_dataset("brain3d", "test", voxel_mm=4)
pairs = {"MNI pair": {n: WORK / f"{n}.nii.gz" for n in files}}
for k in range(test_pairs):
    pairs[f"test pair {k}"] = write_pair(test_set[k], k)

# %% [markdown]
# Each method is one function from the pair's files to the moving labels on the fixed grid:

# %%
models = {
    "VoxelMorph-3D": sm.load_pretrained("brain3d-voxelmorph", device=device),
    "SearchMorph-3D": model,
}
for name, m in models.items():
    print(describe(name, card_of(m)))


def ants_method(kind: str):
    def run(p: dict) -> np.ndarray:
        f, m = ants.image_read(str(p["fixed"])), ants.image_read(str(p["moving"]))
        ants.config._random_seed = 1  # antspyx 0.6 reads its seed here
        found = ants.registration(f, m, type_of_transform=kind)
        labels = ants.image_read(str(p["moving_labels"]))
        return ants.apply_transforms(
            f, labels, found["fwdtransforms"], interpolator="nearestNeighbor"
        ).numpy()

    return run


def pipeline_method(name=None, stage="full", refine=0):
    def run(p: dict) -> np.ndarray:
        found = sm.register_images(
            p["moving"], p["fixed"], models.get(name), stage=stage, refine_steps=refine
        )
        return found.apply(p["moving_labels"], labels=True)

    return run


def identity(p: dict) -> np.ndarray:
    f = nib.load(p["fixed"])
    points = world_grid(f.shape, torch.from_numpy(f.affine))
    return values_at(nib.load(p["moving_labels"]), points, labels=True)


METHODS = {
    "Identity (headers)": identity,
    "ANTs Affine": ants_method("Affine"),
    "ANTs SyN": ants_method("SyN"),
    "affine stage (--stage affine)": pipeline_method(stage="affine"),
    "VoxelMorph-3D": pipeline_method("VoxelMorph-3D"),
    "SearchMorph-3D": pipeline_method("SearchMorph-3D"),
    f"SearchMorph-3D --refine {refine_steps}": pipeline_method(
        "SearchMorph-3D", refine=refine_steps
    ),
}

# %%
results = []  # one row per (method, pair)
for k, (pair, p) in enumerate(pairs.items()):
    reference = np.asarray(nib.load(p["fixed_labels"]).dataobj)
    for method, run in METHODS.items():
        if method == "ANTs SyN" and k >= syn_pairs:
            continue
        start = time.perf_counter()
        labels = run(p)
        seconds = time.perf_counter() - start
        dice = tissue_dice(labels, reference)
        results.append({"method": method, "pair": pair, "dice": dice, "s": seconds})
results = pd.DataFrame(results)

# %% [markdown]
# The table: tissue Dice on the MNI pair, the mean over the test pairs, and seconds per pair (these numbers move
# from one CPU to another, and ANTs' by a little between runs on many threads):

# %%
mni = results[results.pair == "MNI pair"].set_index("method")
tests = results[results.pair != "MNI pair"].groupby("method", sort=False)
table = pd.DataFrame(
    {
        "MNI pair: Dice": mni["dice"],
        "MNI pair: s": mni["s"],
        "test pairs: Dice": tests["dice"].mean(),
        "test pairs: s": tests["s"].mean(),
        "test pairs": tests["dice"].count(),
    }
).reindex(list(METHODS))
table.style.format(
    {
        "MNI pair: Dice": "{:.3f}",
        "test pairs: Dice": "{:.3f}",
        "MNI pair: s": "{:.1f}",
        "test pairs: s": "{:.1f}",
        "test pairs": "{:.0f}",
    },
    na_rep="-",
).set_caption(f"{threads or 'default'} thread(s); {len(pairs) - 1} brain3d test pairs")

# %% [markdown]
# What the table says, generated from it:

# %%
SM, REFINED = "SearchMorph-3D", f"SearchMorph-3D --refine {refine_steps}"
AFFINE = "affine stage (--stage affine)"
by = results.pivot(index="pair", columns="method")  # (pair, method) -> Dice, s


def compare(rows: list[str], where: str) -> str:
    """Where SearchMorph-3D loses and wins on ``rows``, method by method (paired)."""
    lost, won = [], []
    for rival in METHODS:
        both = by.loc[rows, "dice"][[SM, rival]].dropna()  # the pairs both ran
        if rival in (SM, REFINED) or both.empty:
            continue
        ours, theirs = both.mean()
        s_ours, s_theirs = by.loc[both.index, "s"][[SM, rival]].mean()
        text = (
            f"{rival} ({theirs:.3f} vs {ours:.3f}, {s_theirs:.1f} s vs {s_ours:.1f} s)"
        )
        (lost if theirs > ours else won).append(text)
    out = f"On {where}, SearchMorph-3D loses to " + (", ".join(lost) or "no method")
    return out + ". It is ahead of " + (", ".join(won) or "no method") + ". "


tests = [p for p in pairs if p != "MNI pair"]
SETS = {"the MNI pair": ["MNI pair"], "the test pairs": tests}
mean = {w: by.loc[rows, "dice"].mean() for w, rows in SETS.items()}  # method -> Dice
gains = {w: m[REFINED] - m[SM] for w, m in mean.items()}
lr = refine_settings(model, refine_steps)[1]["lr"]
refinement = (
    f"Refinement ({refine_steps} steps at the model's step size of {lr:g} grid "
    "voxels) changes the mean Dice by "
    + " and ".join(f"{g:+.3f} on {w}" for w, g in gains.items())
    + "; where it changes nothing, no step found a field with a lower loss than the "
    "network's, and `refine_flow` keeps the best field it saw. "
)
below = [w for w, m in mean.items() if m[SM] < m[AFFINE]]
n_syn = max(min(syn_pairs - 1, len(tests)), 0)
worse = (
    f"On {' and '.join(below)} the network lowers the Dice of the pipeline's own "
    "affine stage: it moves tissue that the affine had already placed."
    if below
    else "On both sets the network adds to the pipeline's affine stage."
)
budget = {n: m.metadata["train_cpu_seconds"] for n, m in models.items()}
residual = model.metadata["train_config"]["dataset_options"].get("residual_affine")
trained_on = (
    f" at 4 mm, on pairs that look like what this pipeline feeds them: affinely "
    f"pre-aligned, with {residual:g} of brain3d's affine jitter left."
    if residual is not None
    else " at 4 mm, on pairs with brain3d's whole affine jitter (before the pipeline "
    "existed); models trained on what the pipeline feeds them replace them."
)
display(
    Markdown(
        "Dice and seconds per pair, the rival's first. "
        + compare(["MNI pair"], "the MNI pair")
        + compare(
            tests,
            f"the {len(tests)} brain3d test pairs (SyN on {n_syn})",
        )
        + refinement
        + worse
        + " The shipped 3D models: "
        + ", ".join(f"{n} trained for {s:,.0f} CPU seconds" for n, s in budget.items())
        + trained_on
    )
)

# %% [markdown]
# ## Does SearchMorph-3D read its search?
#
# Table III (chapter 13) retrains the model without a component. A trained model can
# be asked a cheaper question: replace one input of its ConvGRU by zeros at test time
# and see what is lost. `sm.zeroed_input(model, "search")` zeroes every search map
# (the octahedral lookups of eq. 3) while the block runs, `"context"` the context
# features; the model is whole again afterwards. A GRU that reads its search map
# loses Dice without it. One that has learnt to ignore it loses nothing: the first 3D
# training run did, its motion features had saturated the GRU
# (`training/BRAIN3D_STATUS.md`; `training/search_use.py` asks the same of any
# checkpoint). The pairs: `search_pairs` validation pairs of the model's own
# training data (its frame, its residual affine), the images as the network sees them.

# %%
options = dict(model.metadata["train_config"]["dataset_options"])
options.pop("num_pairs", None)
val_set = load_dataset("brain3d", "val", num_pairs=search_pairs, **options)

# the model as trained, then with each input zeroed, on the same pairs
rows = input_use(model, [val_set[i] for i in range(len(val_set))])
use = {name: row["dice"] for name, row in rows.items()}
pd.Series(use, name=f"mean Dice, {len(val_set)} validation pairs").to_frame().round(3)

# %% [markdown]
# What it says, generated from the numbers:

# %%
drop = use["as trained"] - use["search zeroed"]
gain = use["as trained"] - use["identity (no field)"]
verdict = (
    "the network reads its search: without it, it loses part of what it adds"
    " to the identity"
    if drop > 0.01
    else "the network hardly reads its search: its GRU works from the context"
    " and its own field"
)
display(
    Markdown(
        f"Zeroing the search maps changes the mean Dice by {-drop:+.3f} "
        f"(the network adds {gain:+.3f} to the identity): {verdict}. "
        "Zeroing the context changes it by "
        f"{use['context zeroed'] - use['as trained']:+.3f}."
    )
)

# %% [markdown]
# ## Exercises
#
# 1. The octahedron of radius $r$ holds $(2r + 1)(2r^2 + 2r + 3) / 3$ offsets. Check the formula against
#    `sm.diamond_offsets(r, ndim=3)` for $r = 0, \dots, 6$, and compute how many correlations per voxel the
#    search map of a 4-level SearchMorph-3D with the shipped model's radius, 2 (`model.config.radius`), holds.
#
# ````{dropdown} Solution
# ```python
# def octahedron_size(r: int) -> int:
#     return (2 * r + 1) * (2 * r**2 + 2 * r + 3) // 3
# for r in range(7):
#     assert len(sm.diamond_offsets(r, ndim=3)) == octahedron_size(r)
# per_voxel = 4 * len(sm.diamond_offsets(2, ndim=3))  # 4 levels x 25 offsets = 100
# ```
# The formula counts the layers of the octahedron: layer $z$ ($|z| \le r$) is a 2D diamond of radius $r - |z|$.
# Radius 2 reads 25 offsets per level, 100 correlations per voxel: the motion encoder's input is almost 2x
# wider than in 2D (4 x 13 = 52 at radius 2), one reason the 3D model is slow on a CPU.
# ````
#
# 2. Where does a fixed voxel go? Using only `transform.nii.gz` (the ITK field the command wrote, LPS) and the two
#    files' affines, compute the (fractional) voxel index in the moving file, as stored (PIL), that the fixed voxel
#    at index (40, 48, 42) shows.
#
# ````{dropdown} Solution
# ```python
# itk_field = nib.load(WORK / "transform.nii.gz").get_fdata()  # (X, Y, Z, 1, 3), LPS mm
# voxel = (40, 48, 42)
# x = (fixed.affine @ [*voxel, 1.0])[:3]  # its world point, RAS mm
# d = itk_field[voxel][0] * np.array([-1.0, -1.0, 1.0])  # LPS -> RAS
# moving_index = np.linalg.solve(moving.affine, [*(x + d), 1.0])[:3]
# ```
# Three conventions meet here: the fixed affine takes the index to RAS millimetres, the field's first two
# components are negated (LPS to RAS), and the moving file's affine is inverted to find its index. The result is
# also `reg.moving_points()[:, 40, 48, 42]` taken through the inverse of `moving.affine`. Forgetting the sign
# change lands on the mirror of the displacement, a few millimetres off.
# ````
#
# ## What we built
#
# The octahedral search and the lean 3D search (eq. 1-3 without the all-pairs volume), and a registration of real
# volumes in physical space: NIfTI files in any orientation and voxel size, an MI affine stage, the network in its
# own frame, one composed transform $\phi(x) = T(x + R\,u(x))$ on the fixed grid, and an ITK field that ANTs
# applies to the same result.
#
# [Next: 15. Diffeomorphic SearchMorph](15_diffeomorphic.ipynb)
