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
# # 1. Data: brain pairs and echocardiography sequences
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/searchmorph-book/searchmorph-book/blob/main/notebooks/01_data.ipynb)
#
# The paper evaluates SearchMorph on two kinds of data: single-temporal brain MR (one LPBA40 slice per subject,
# registered to an atlas) and multi-temporal echocardiography (the end-diastolic frame of a cine registered to every
# later frame), and scores both with Dice on labels (Sec. IV-A). Neither LPBA40 nor CAMUS can ship with a book, so
# this chapter introduces the three datasets that do, all behind one call, `load_dataset(name, split, **options)`:
# `brain2d`, atlas-based brain pairs made from the MNI152 template inside nilearn; `echo2d-synthetic`, generated
# cine loops with exact labels; and `echo2d-clip`, a real apical four-chamber cine inside pydicom. We look at each,
# say plainly what each stands in for and what it cannot show, read and write the two file formats behind them
# (NIfTI and DICOM), and check that the labels are exactly what the datasets claim.

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

# %%
import tempfile
from importlib.resources import files
from pathlib import Path

import ipywidgets as widgets
import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pydicom
import torch
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch, Rectangle
from pydicom import examples

import searchmorph_lite as sm
from searchmorph_lite.book import setup
from searchmorph_lite.data import load_dataset
from searchmorph_lite.data.brain2d import SPLIT_OFFSETS, load_mni152_slab

# %% tags=["parameters"]
seed = 0
device = "auto"
# pairs per brain2d split (library defaults: 400 train, 40 val, 40 test)
brain_pairs = 8
# synthetic sequences per split, one per view (defaults: 30, 9, 9)
echo_sequences = 3
echo_frames = 12  # frames per synthetic sequence; default 20
echo_size = 160  # side of the echo images, the paper's 160 x 160
show_frames = 6  # frames in the strips

# %%
device = setup(seed, device)  # seeds torch; "auto": CUDA when present, else CPU

# %% [markdown]
# ## One interface for every dataset
#
# Every dataset item is a dict. `"moving"` and `"fixed"` are float tensors of shape `(1, H, W)` in $[0, 1]$;
# where the dataset has labels, `"moving_labels"` and `"fixed_labels"` are int64 maps of the same shape; the rest
# is plain metadata. A registration model gets `moving` and `fixed`; the labels are never shown to it and serve only
# to score the result with Dice (chapter 3). Because items hold only tensors, strings and ints, PyTorch's default
# `DataLoader` batches them into `(B, 1, H, W)` tensors without a custom collate function.
#
# ## brain2d: atlas-based brain pairs
#
# **What the paper does.** LPBA40 (Shattuck et al., 2008) holds T1 MR volumes of 40 volunteers with 56 manually
# delineated structures. The paper takes the 80th axial slice of each volume and registers every subject to an
# atlas (Sec. IV-A, Table I).
#
# **What we do instead.** The MNI152 2009a T1 template (Fonov et al., 2009, 2011), an average of 152 brains that
# ships inside the nilearn wheel (read offline), gives every image:
#
# - the **fixed** image is the atlas: the axial template slice at MNI $z = +16$ mm (lateral ventricles, caudate,
#   insula), 1 mm pixels, cropped to the paper's $192 \times 160$;
# - each **moving** image is a "subject": a *neighbouring* template slice (up to 9 mm away, a real anatomical
#   difference: ventricles, sulci and deep nuclei change shape from slice to slice), deformed by a random smooth
#   field plus a small rotation, scaling and shift, then given a bias field, a gamma change and Rician noise;
# - labels 0 background, 1 CSF and other brain, 2 grey matter, 3 white matter, from nilearn's tissue
#   probability maps; a moving image's labels are its source slice's labels warped by the *same* field.
#
# The splits draw their moving images from disjoint slices, so no slice seen in training comes back at test time:

# %%
for split, offsets in SPLIT_OFFSETS.items():
    print(f"{split:<5} source slices (mm from the atlas slice): {offsets}")

# %%
brain = load_dataset("brain2d", "test", seed=seed, num_pairs=brain_pairs)
item = brain[0]
for key, value in item.items():
    desc = (
        f"{tuple(value.shape)} {value.dtype}" if torch.is_tensor(value) else repr(value)
    )
    print(f"{key:<16}{desc}")

# %% [markdown]
# Below, the fixed atlas and three test subjects, without and with their labels. The three come from slices 8 mm
# below, 2 mm below and 5 mm above the atlas, and it shows: 8 mm below, the lateral ventricles are narrow frontal
# horns between the large deep grey nuclei; 5 mm above, the slice cuts through the ventricles' bodies and the
# nuclei have almost gone. No field can turn one into the other exactly, which is what makes this task
# inter-subject-like rather than a pure deformation.

# %%
label_names = ["CSF and other brain", "grey matter", "white matter"]
label_cmap = ListedColormap(
    ["none", "tab:blue", "tab:orange", "tab:green"]
)  # label 0 transparent


def show_brain(ax, image, labels=None, title=""):
    ax.imshow(image[0], cmap="gray", vmin=0, vmax=1)
    if labels is not None:
        ax.imshow(
            labels[0],
            cmap=label_cmap,
            vmin=-0.5,
            vmax=3.5,
            alpha=0.45,
            interpolation="nearest",
        )
    ax.set_title(title, fontsize=10)
    ax.set_xticks([]), ax.set_yticks([])


fig, axes = plt.subplots(2, 4, figsize=(13, 7.6))
shown = [brain[i] for i in range(3)]
show_brain(axes[0, 0], item["fixed"], title="fixed: atlas slice z = +16 mm")
show_brain(axes[1, 0], item["fixed"], item["fixed_labels"], "fixed labels")
for col, it in enumerate(shown, start=1):
    show_brain(
        axes[0, col],
        it["moving"],
        title=f"moving {it['subject'][-4:]}: slice {it['slice_offset_mm']:+d} mm",
    )
    show_brain(axes[1, col], it["moving"], it["moving_labels"], "moving labels")
(
    axes[0, 0].set_ylabel("row (anterior → posterior)"),
    axes[1, 0].set_ylabel("row (anterior → posterior)"),
)
for ax in axes[1]:
    ax.set_xlabel("column (left → right)")
fig.legend(
    handles=[
        Patch(color=c, alpha=0.6, label=n)
        for c, n in zip(["tab:blue", "tab:orange", "tab:green"], label_names)
    ],
    loc="lower center",
    ncol=3,
)
plt.show()

# %% [markdown]
# ### How a moving image is made
#
# `Brain2D.sample(i)` returns the item together with `"flow"`, the field that made it (from the source slice, not
# the answer to the registration problem, which also has to undo the slice difference), so we can retrace the
# recipe: take the source slice, warp it with the field (the library's `warp`, chapter 2: the output at pixel $p$
# is the source sampled at $p + \text{flow}(p)$), then change its intensities. The source slices live in the
# cached slab that `load_mni152_slab()` builds once from the template (19 slices, offsets $-9 \dots +9$ mm).

# %%
slab = load_mni152_slab()
print(
    "slab:",
    slab["images"].shape,
    "images,",
    slab["labels"].shape,
    "labels, offsets",
    slab["offsets"].tolist(),
)


def source_slice(offset_mm: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Template slice at ``offset_mm`` from the atlas: image (1, 1, 192, 160) float,
    labels (1, 1, 192, 160) int64."""
    k = slab["offsets"].tolist().index(offset_mm)
    image = torch.from_numpy(slab["images"][k])[None, None]
    labels = torch.from_numpy(slab["labels"][k].astype(np.int64))[None, None]
    return image, labels


# %%
sample = brain.sample(2)
source, source_labels = source_slice(sample["slice_offset_mm"])
flow = sample["flow"][None]
warped_source = sm.warp(source, flow)

fig, axes = plt.subplots(1, 4, figsize=(15, 4.6), constrained_layout=True)
axes[0].imshow(source[0, 0], cmap="gray", vmin=0, vmax=1)
axes[0].set_title(f"source slice ({sample['slice_offset_mm']:+d} mm)")
im = axes[1].imshow(flow[0].norm(dim=0), cmap="viridis")
fig.colorbar(im, ax=axes[1], fraction=0.05, label="|flow| (pixels)")
axes[1].set_title("field that makes the subject")
axes[2].imshow(warped_source[0, 0], cmap="gray", vmin=0, vmax=1)
axes[2].set_title("warp(source, flow)")
axes[3].imshow(sample["moving"][0], cmap="gray", vmin=0, vmax=1)
axes[3].set_title("+ bias, gamma, Rician noise = moving")
for ax in axes:
    ax.set_xlabel("column (pixel)")
axes[0].set_ylabel("row (pixel)")
plt.show()

# %% [markdown]
# ### The proof: the labels are exact
#
# If the recipe is what the dataset says, every moving label map equals its source slice's labels warped with the
# same field by nearest-neighbour sampling, pixel for pixel. We check all test pairs, together with the label set,
# the intensity range, and that loading the dataset twice gives identical tensors (items are generated from
# `(seed, split, index)` on access; nothing is stored per pair).

# %% tags=["nbval-check-output"]
exact = []
for i in range(len(brain)):
    s = brain.sample(i)
    _, src_labels = source_slice(s["slice_offset_mm"])
    rebuilt = sm.warp(src_labels.float(), s["flow"][None], mode="nearest").long()[0]
    exact.append(torch.equal(rebuilt, s["moving_labels"]))
assert all(exact)
print(
    f"moving labels == warp(source labels, flow, nearest) for {sum(exact)} / "
    f"{len(brain)} pairs"
)

again = load_dataset("brain2d", "test", seed=seed, num_pairs=brain_pairs)
same = all(
    torch.equal(brain[i][k], again[i][k])
    for i in range(len(brain))
    for k in ("moving", "moving_labels")
)
other = load_dataset("brain2d", "test", seed=seed + 1, num_pairs=1)[0]
assert same and not torch.equal(other["moving"], brain[0]["moving"])
print(
    "loading twice gives identical tensors:",
    same,
    "| another seed gives another subject: True",
)
labels_seen = sorted(
    torch.unique(
        torch.stack([brain[i]["moving_labels"] for i in range(len(brain))])
    ).tolist()
)
lo = min(brain[i]["moving"].min().item() for i in range(len(brain)))
hi = max(brain[i]["moving"].max().item() for i in range(len(brain)))
print(
    "label values:",
    labels_seen,
    "| moving intensities within [0, 1]:",
    0 <= lo and hi <= 1,
)

# %% [markdown]
# ### What brain2d cannot show
#
# brain2d keeps what the registration task needs, real anatomy that differs between moving and fixed and exact
# labels to score the result, and loses a good deal:
#
# - **One anatomy.** Every "subject" is the same average brain, seen a few millimetres higher or lower and
#   deformed synthetically. Real inter-subject variation (folding patterns, ventricle size, age, atrophy) and
#   scanner or protocol differences are absent; the template is also smoother than any single scan.
# - **Four labels instead of 56.** LPBA40's 56 structures (Fig. 4 of the paper scores 11 of them) become
#   background, CSF/other brain, grey matter and white matter, and nilearn's maps put part of the deep grey nuclei
#   into "white matter".
# - **Dice is not comparable with Table I.** Large tissue classes are easier to overlap than small gyri, so the
#   Dice values of this book are higher than the paper's; later chapters compare *methods* on brain2d, not numbers
#   with the paper.
#
# With the real data prepared (below), every chapter runs on `load_dataset("lpba40", ...)` instead.
#
# ## brain2d-subjects: virtual subjects, with a gap between the splits
#
# brain2d's splits use disjoint slices, but every test moving slice lies 1 mm from two training slices and all of
# them register to one atlas slice; chapter 11 measures that the closest training image of a test image is nearly
# a copy of it. A network can then pass its test by remembering. The models chapter 11 evaluates are therefore
# trained on `brain2d-subjects`, built in the spirit of SynthMorph (Hoffmann et al., 2022), which trains on images
# that are all different on purpose:
#
# - **Every image is its own virtual subject.** A source slice $S_z$ of the template (any axial slice from
#   $z = -40$ to $+64$ mm) is warped by the subject's own field $\phi$: an affine jitter (rotation up to 6°, scale
#   up to 6 %, shift up to 4 px) plus a large-scale and a small-scale smooth warp, shrunk until
#   $\det(I + \nabla\phi) > 0.2$ everywhere, so that no subject folds. Moving and fixed are *two* subjects, from
#   the same slice or slices 1 mm apart, so the registration has to undo both deformations and a slice difference.
# - **Contrast.** T1 with a random gamma, or a *synthetic* contrast: one random intensity per tissue (CSF, grey,
#   white matter) mixed by the tissue probability maps, so that the network cannot rely on T1's ordering of the
#   tissues; training draws either with probability 1/2, validation and test use T1.
# - **Artifacts.** Per image a smooth multiplicative bias field, a Gaussian blur and Rician noise.
# - **Labels are exact**: each subject's labels are its source slice's labels warped by the same $\phi$ (nearest).
# - **Splits are slabs with a gap.** Validation and test hold three 3-mm slabs each, spread over the brain, and no
#   training slice comes within 3 mm of them. Slices below $z = -43$ mm and above $+67$ mm, outside the training
#   range (cerebellum, vertex), are kept for out-of-distribution tests (`slices="far"`).

# %%
from searchmorph_lite.data.brain_subjects import FAR_Z_MM, GAP_MM, split_slices

z_split = {split: split_slices(split) for split in ("train", "val", "test")}
held = z_split["val"] + z_split["test"]
closest = min(abs(a - b) for a in z_split["train"] for b in held)  # brute force
assert closest > GAP_MM and not set(FAR_Z_MM) & set(z_split["train"] + held)
print(
    f"source slices: {len(z_split['train'])} train, {len(z_split['val'])} val, "
    f"{len(z_split['test'])} test, {len(FAR_Z_MM)} far; the closest training slice "
    f"to any val/test slice is {closest} mm away"
)
fig, ax = plt.subplots(figsize=(11, 1.6), constrained_layout=True)
for row, zs in enumerate([*z_split.values(), FAR_Z_MM]):
    ax.plot(zs, [row] * len(zs), "|", ms=14, mew=2)
ax.set(
    yticks=range(4),
    yticklabels=[*z_split, "far (OOD)"],
    xlabel="axial slice z (mm, MNI152)",
    ylim=(-0.6, 3.6),
)
ax.invert_yaxis()
plt.show()

# %% [markdown]
# Three test pairs, one per contrast (the inverted one, $1 - \mathrm{T1}$ inside the brain, is a T2-like contrast
# that no training image has: chapter 11 uses it to test transfer). Each pair is two subjects; the contours are
# the fixed subject's grey-matter boundary, drawn on both images.

# %%
subject_sets = {
    c: load_dataset(
        "brain2d-subjects", "test", seed=seed, num_pairs=brain_pairs, contrast=c
    )
    for c in ("t1", "synthetic", "inverted")
}
fig, axes = plt.subplots(2, 3, figsize=(10, 6.6), constrained_layout=True)
for j, (contrast, ds) in enumerate(subject_sets.items()):
    x = ds[j]
    for i, side in enumerate(("moving", "fixed")):
        axes[i, j].imshow(x[side][0], cmap="gray", vmin=0, vmax=1)
        axes[i, j].contour(
            x["fixed_labels"][0] == 2, levels=[0.5], colors="y", linewidths=0.6
        )
        axes[i, j].set_title(
            f"{contrast}: {side} (z = {x[f'{side}_z_mm']} mm)", fontsize=9
        )
        axes[i, j].set_xticks([]), axes[i, j].set_yticks([])
plt.show()

# %% [markdown]
# The proof, as for brain2d: `sample(i)` returns the item with the two fields that made its subjects, and every
# label map must equal its undeformed source slice's labels warped by its field, pixel for pixel; and no subject's
# field folds (its smallest Jacobian determinant, chapter 3, stays above 0.2).

# %% tags=["nbval-check-output"]
subjects = subject_sets["t1"]
exact, smallest_det = [], []
for i in range(len(subjects)):
    s = subjects.sample(i)
    for side in ("moving", "fixed"):
        source = subjects.source_labels(s[f"{side}_z_mm"])[None].float()
        rebuilt = sm.warp(source, s[f"{side}_flow"][None], mode="nearest").long()[0]
        exact.append(torch.equal(rebuilt, s[f"{side}_labels"]))
        smallest_det.append(
            sm.jacobian_determinant(s[f"{side}_flow"][None]).min().item()
        )
assert all(exact) and min(smallest_det) > 0.2
print(
    f"labels == warp(source labels, subject field, nearest) for {sum(exact)} / "
    f"{len(exact)} subjects; smallest det(I + grad phi) {min(smallest_det):.2f}"
)

# %% [markdown]
# What it still cannot show: every subject is the same average brain underneath, so real inter-subject variability
# (folding patterns, ventricle size, pathology) is absent, and scanners differ in more than gamma, bias, blur and
# noise. That is why chapter 11 also runs its models on pairs unlike their training data, and why a model that
# scores well here has still to prove itself on real subjects (LPBA40, below).

# %% [markdown]
# ## NIfTI with nibabel
#
# Brain MR usually comes as NIfTI files (`.nii` or `.nii.gz`): a voxel array, a header (data type on disk, voxel
# size, ...) and a $4 \times 4$ *affine* that maps voxel indices $(i, j, k)$ to millimetres in scanner or template
# space. The MNI template is one such file inside the nilearn wheel; nilearn's loader (and brain2d through it)
# reads it, and so can nibabel directly:

# %%
template_path = (
    files("nilearn")
    / "datasets"
    / "data"
    / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
)
mni = nib.load(template_path)
print(
    "shape:",
    mni.shape,
    "| data type on disk:",
    mni.get_data_dtype(),
    "| voxel size (mm):",
    tuple(float(z) for z in mni.header.get_zooms()),
)
print("axes point to:", nib.aff2axcodes(mni.affine), "| affine:\n", mni.affine)

# %% [markdown]
# The affine reads: voxel $(i, j, k)$ sits at $x = i - 98$, $y = j - 134$, $z = k - 72$ mm, and `aff2axcodes` names
# where each voxel axis points: to the subject's Right, Anterior, Superior. The voxels are stored as `uint8`
# (0 to 255); nilearn divides them by the maximum, which is why our images live in $[0, 1]$.
#
# We cut out the axial slice at $z = +16$ mm with nibabel's `slicer`, which shifts the affine for us, save it to a
# temporary `.nii.gz` and read it back:

# %% tags=["nbval-check-output"]
k = int(
    round(np.linalg.solve(mni.affine, [0.0, 0.0, 16.0, 1.0])[2])
)  # voxel index of z = +16 mm
axial = mni.slicer[:, :, k : k + 1]  # a (x, y, 1) image
with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "mni_axial_z16.nii.gz"
    nib.save(axial, path)
    back = nib.load(path)
    data = back.get_fdata(dtype=np.float32)
assert np.array_equal(data, axial.get_fdata(dtype=np.float32)) and np.array_equal(
    back.affine, axial.affine
)
print("read back: shape", data.shape, "| same voxels and same affine | slice k =", k)
print(
    "voxel (98, 134, 0) of the slice is at",
    nib.affines.apply_affine(back.affine, [98, 134, 0]).tolist(),
    "mm",
)

# %% [markdown]
# Images in this book are arrays of (rows, columns) with anterior at the top and the subject's left on the left,
# so a NIfTI slice becomes an image by transposing $(x, y) \to (y, x)$ and flipping the anterior axis; brain2d does
# exactly that before cropping to $192 \times 160$ and masking the brain:

# %%
# rows: y from anterior to posterior; columns: x from left to right
as_image = data[:, :, 0].T[::-1] / 255.0
fig, axes = plt.subplots(1, 2, figsize=(9, 4.6))
axes[0].imshow(data[:, :, 0], cmap="gray")
(
    axes[0].set_title("stored array (i = x, j = y)"),
    axes[0].set_xlabel("j (posterior → anterior)"),
)
axes[0].set_ylabel("i (left → right)")
axes[1].imshow(as_image, cmap="gray", vmin=0, vmax=1)
axes[1].set_title("as a book image"), axes[1].set_xlabel("column (left → right)")
axes[1].set_ylabel("row (anterior → posterior)")
plt.show()

# %% [markdown]
# The command line reads such files directly:
# `python -m searchmorph_lite register --moving a.nii.gz --fixed b.nii.gz --checkpoint ck.pt --out warped.nii.gz`
# registers two 2D NIfTI slices and writes the result with the fixed image's affine.
#
# ## echo2d-synthetic: cine loops with exact labels
#
# **What the paper does.** It registers the end-diastolic (ED) frame of each echocardiography sequence to every
# other frame of the cycle, for apical two-, three- and four-chamber views (CAMUS, a synthetic set and its own
# recordings), and scores the left-ventricle blood pool and myocardium with Dice (Sec. IV-A, Table II).
#
# **What we generate.** `echo2d-synthetic` draws an apical view with the probe at the top of an 80° sector: the
# left ventricle as a truncated ellipse (label 1 blood pool, label 2 myocardium) whose wall opens at the mitral
# plane, the view's other chambers as dark unlabelled cavities (2CH: left atrium; 3CH: left atrium and aortic
# outflow; 4CH: left atrium, right ventricle, right atrium), a bright pericardial line, textured tissue, speckle
# that moves with the tissue and partly decorrelates from frame to frame (fully in blood), depth attenuation,
# near-field clutter and noise. The cycle runs ED → ES → ED: frame $t$ is the ED anatomy warped by an analytic
# contraction field (the cavity shortens 30-45 % radially and 10-20 % along the axis at end-systole, the base moves
# toward a nearly still apex, the wall thickens), with end-systole at 40 % of the sequence.
#
# **What it omits.** Out-of-plane and probe motion, valves, trabeculae and papillary muscles, the other chambers'
# own contraction, twist, shadowing, reverberation, dropout of walls parallel to the beam, and a depth-dependent
# point-spread function. Its speckle is a statistical model, not an acoustic simulation. It tests whether a
# method can follow a contracting ventricle through speckle, not how it fares on a real scanner.

# %%
echo = load_dataset(
    "echo2d-synthetic",
    "test",
    seed=seed,
    num_sequences=echo_sequences,
    frames=echo_frames,
    image_size=echo_size,
)
sequences = list(echo.sequences())  # each is generated on demand; keep them
seq = sequences[0]
for key, value in seq.items():
    print(f"{key:<9}{tuple(value.shape) if torch.is_tensor(value) else repr(value)}")


# %%
def show_echo(ax, frame, labels=None, title="", ref_labels=None):
    """Echo frame with the endocardium (yellow) and epicardium (red) of ``labels``;
    ``ref_labels`` dashed."""
    ax.imshow(frame[0], cmap="gray", vmin=0, vmax=1)
    for lab, style in ((labels, "solid"), (ref_labels, "dashed")):
        if lab is not None:
            ax.contour(
                lab[0] == 1,
                levels=[0.5],
                colors="yellow",
                linewidths=1,
                linestyles=style,
            )
            ax.contour(
                lab[0] >= 1, levels=[0.5], colors="red", linewidths=1, linestyles=style
            )
    ax.set_title(title, fontsize=10)
    ax.set_xticks([]), ax.set_yticks([])


fig, axes = plt.subplots(1, 3, figsize=(12, 4.3))
for i, (s, ax) in enumerate(zip(sequences, axes)):
    show_echo(ax, s["frames"][0], s["labels"][0], f"{s['view']} at ED (sequence {i})")
axes[0].set_ylabel("depth (row)")
fig.suptitle(
    "The three synthetic views; yellow: endocardium (blood pool), red: epicardium "
    "(myocardium outside)"
)
plt.show()

# %% [markdown]
# One sequence through the cycle, with the blood-pool area per frame: it shrinks until end-systole (`es_frame`)
# and comes back. The last frame is ED again.

# %%
ts = np.unique(
    np.linspace(0, echo_frames - 1, show_frames).round().astype(int).tolist()
    + [seq["es_frame"]]
)
fig, axes = plt.subplots(
    1,
    len(ts) + 1,
    figsize=(2.7 * (len(ts) + 1), 3.2),
    constrained_layout=True,
    gridspec_kw={"width_ratios": [1] * len(ts) + [1.6]},
)
for ax, t in zip(axes, ts):
    show_echo(
        ax,
        seq["frames"][t],
        seq["labels"][t],
        f"t = {t}" + (" (ES)" if t == seq["es_frame"] else ""),
    )
area = (seq["labels"] == 1).flatten(1).sum(1)
axes[-1].plot(area, "o-")
axes[-1].axvline(seq["es_frame"], color="gray", ls="--", label="ES")
(
    axes[-1].set_xlabel("frame t"),
    axes[-1].set_ylabel("blood pool (pixels)"),
    axes[-1].legend(),
)
plt.show()

# %% [markdown]
# The slider shows any frame $t$ with its contours (solid) over frame 0's contours (dashed): the gap between them is
# the motion a registration model has to recover for the pair (frame 0 → frame $t$).


# %%
def explore_frame(t: int = int(seq["es_frame"])) -> None:
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    show_echo(
        ax,
        seq["frames"][t],
        seq["labels"][t],
        f"{seq['view']}, frame {t} (dashed: frame 0)",
        seq["labels"][0],
    )
    plt.show()


_ = widgets.interact(
    explore_frame,
    t=widgets.IntSlider(value=int(seq["es_frame"]), min=0, max=echo_frames - 1),
)

# %% [markdown]
# ### The multi-temporal pairing
#
# The paper registers the ED frame to every frame of its sequence. The sequence datasets therefore enumerate pairs
# (sequence $i$, frame $t$) for $t = 1, \dots, T-1$: `"moving"` is frame 0, `"fixed"` is frame $t$. The true field
# of a pair is `flows[t]` and lives on frame $t$'s grid, so `warp(moving, flows[t])` puts the ED anatomy where it is
# at time $t$: the library's convention (chapter 2).

# %% tags=["nbval-check-output"]
pairs = echo.pair_index()
print(
    f"{echo.num_sequences} sequences x {echo_frames - 1} frames = {len(echo)} pairs; "
    "first (sequence, t):",
    pairs[:4].tolist(),
)
pair = echo[3]
assert pair["frame"] == 4
assert torch.equal(pair["moving"], seq["frames"][0]) and torch.equal(
    pair["fixed"], seq["frames"][4]
)
print(
    "item 3: moving = frame 0, fixed = frame",
    pair["frame"],
    "of",
    pair["subject"],
    f"({pair['view']})",
)

# %% [markdown]
# ### The proof: labels follow the true field exactly, images do not
#
# Every label map is the ED labels warped by that frame's true field (nearest neighbour). The images are not: the
# speckle partly decorrelates from frame to frame, so even the true field cannot turn frame 0 into frame $t$
# exactly. That gap is part of what makes ultrasound registration hard (the paper found MSE more suitable than LNCC
# for it, Sec. III-E).


# %% tags=["nbval-check-output"]
def corr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    a, b = a[mask] - a[mask].mean(), b[mask] - b[mask].mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


for s in sequences:
    warped_labels = sm.warp(
        s["labels"][:1].float().expand(echo_frames, -1, -1, -1),
        s["flows"],
        mode="nearest",
    )
    assert torch.equal(warped_labels.long(), s["labels"])
    es = s["es_frame"]
    heart = s["labels"][es, 0] > 0
    before = corr(s["frames"][0, 0], s["frames"][es, 0], heart)
    after = corr(
        sm.warp(s["frames"][:1], s["flows"][es : es + 1])[0, 0],
        s["frames"][es, 0],
        heart,
    )
    print(
        f"{s['view']}: labels[t] == warp(labels[0], flows[t]) for all {echo_frames} "
        "frames | "
        f"correlation with the ES frame inside the heart: frame 0 {before:.3f}, warped "
        f"frame 0 {after:.3f}"
    )

# %% [markdown]
# Warping with the true field raises the correlation with the end-systolic frame but leaves it below 1: the
# generator renews part of the speckle in every frame (about 12 % of its power in tissue, all of it in the blood
# pool), as real speckle decorrelates when tissue deforms and blood flows, and interpolation smooths the rest.
#
# ### Wider scans: `variability="wide"`
#
# A model trained on one simulator setting meets real clips that differ in ways the simulator never varied. With
# `variability="wide"` every sequence draws its own scan and display settings: sector width and depth, heart size,
# speckle size, how hazy the cavity is, logarithmic display compression, noise, blur and the motion amplitude
# (0.7-1.3x). The shipped echo models train on it (`configs/echo2d_wide_*.yaml`). The labels are made as before,
# so the proof above holds for it too, with one twist: a larger heart in a narrower or shallower sector can reach
# past the sector's edge, and tissue that enters the sector during the cycle is labelled at frame $t$ but was cut
# off in `labels[0]`. So the check allows exactly the pixels whose source point $p + u(p)$ lies outside the
# sector (the pixels no frame lights up), and counts them:

# %% tags=["nbval-check-output"]
wide = load_dataset(
    "echo2d-synthetic",
    "test",
    seed=seed,
    num_sequences=echo_sequences,
    frames=echo_frames,
    image_size=echo_size,
    variability="wide",
)
wide_sequences = list(wide.sequences())
for s in wide_sequences:
    warped_labels = sm.warp(
        s["labels"][:1].float().expand(echo_frames, -1, -1, -1),
        s["flows"],
        mode="nearest",
    ).long()
    sector = (s["frames"].amax(dim=0) > 0).float()[None]  # (1, 1, H, W)
    from_sector = (
        sm.warp(sector.expand(echo_frames, -1, -1, -1), s["flows"], mode="nearest")
        > 0.5
    )
    differ = warped_labels != s["labels"]
    assert not (differ & from_sector).any()
    print(
        f"wide {s['view']}: labels[t] == warp(labels[0], flows[t]) wherever the source "
        f"lies in the sector; {int(differ.sum())} pixels entered the sector"
    )

# %%
fig, axes = plt.subplots(2, len(sequences), figsize=(3.2 * len(sequences), 6.6))
for j, (a, b) in enumerate(zip(sequences, wide_sequences)):
    for i, (name, s) in enumerate((("standard", a), ("wide", b))):
        show_echo(axes[i, j], s["frames"][0], s["labels"][0], f"{name}: {s['view']} ED")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## echo2d-clip: a real cine, in DICOM
#
# Ultrasound scanners store cines as DICOM files. pydicom ships one as an example: an apical four-chamber view, 30
# colour frames from a SonoSite scanner, about one heartbeat. DICOM is a list of tagged elements; `dcmread`
# parses them, and `pixel_array` decodes the compressed frames (here JPEG baseline, through Pillow, with the
# YBR colour space converted to RGB).

# %%
dcm = pydicom.dcmread(examples.get_path("ybr_color"))
for keyword in (
    "Modality",
    "Manufacturer",
    "SOPClassUID",
    "PhotometricInterpretation",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "FrameTime",
):
    print(f"{keyword:<26}{dcm[keyword].value}")
print(f"{'TransferSyntaxUID':<26}{dcm.file_meta.TransferSyntaxUID.name}")
rgb = dcm.pixel_array
print("pixel_array:", rgb.shape, rgb.dtype)

# %% [markdown]
# Around the sector, an ultrasound screen holds text, markers and a depth scale. The
# `SequenceOfUltrasoundRegions` tag says where the image data is and how large a pixel is:

# %%
region = dcm.SequenceOfUltrasoundRegions[0]
print(region)

# %% [markdown]
# The region's corners, $(84, 31)$ to $(595, 414)$, do not fit a $320 \times 240$ frame: this example was
# downsampled by 2 after acquisition, evidently, and kept the original coordinates. Halving them gives the box below
# (`PhysicalUnitsXDirection` 3 means centimetres, so a stored pixel is then about $2 \times 0.051 \approx 0.1$ cm).
# The `echo2d-clip` loader finds that factor, crops to the region, converts to grey (luma), keeps the sector (the
# convex hull of the largest bright component of the clip's temporal maximum, which drops the depth scale and
# the text), crops to it, pads to a square with the probe at the top, resizes to $160 \times 160$, and scales
# the whole clip by one factor (its 99.5th percentile inside the sector) so that brightness changes between
# frames stay real.

# %%
x0, y0, x1, y1 = (
    int(getattr(region, f"RegionLocation{n}")) // 2
    for n in ("MinX0", "MinY0", "MaxX1", "MaxY1")
)
clip = load_dataset("echo2d-clip", "test")
video = clip.sequence(0)

fig, axes = plt.subplots(
    1, 2, figsize=(11, 4.3), gridspec_kw={"width_ratios": [1.33, 1]}
)
axes[0].imshow(rgb[0])
axes[0].add_patch(
    Rectangle(
        (x0, y0),
        x1 - x0,
        y1 - y0,
        fill=False,
        ec="cyan",
        lw=1.5,
        label="ultrasound region / 2",
    )
)
(
    axes[0].set_title(f"DICOM frame 0 as stored ({rgb.shape[2]} x {rgb.shape[1]})"),
    axes[0].legend(loc="lower right"),
)
axes[0].set_xlabel("column (pixel)"), axes[0].set_ylabel("row (pixel)")
im = axes[1].imshow(video["frames"][0, 0], cmap="gray", vmin=0, vmax=1)
(
    axes[1].set_title("echo2d-clip frame 0 (160 x 160)"),
    axes[1].set_xlabel("column (pixel)"),
)
fig.colorbar(im, ax=axes[1], fraction=0.046, label="intensity")
plt.show()

# %%
clip_ts = np.linspace(0, len(video["frames"]) - 1, show_frames).round().astype(int)
fig, axes = plt.subplots(1, show_frames, figsize=(2.6 * show_frames, 3))
for ax, t in zip(axes, clip_ts):
    ax.imshow(video["frames"][t, 0], cmap="gray", vmin=0, vmax=1)
    ax.set_title(f"t = {t} ({t * video['frame_time_ms']:.0f} ms)", fontsize=10)
    ax.set_xticks([]), ax.set_yticks([])
fig.suptitle("echo2d-clip: the real A4C cine (no labels)")
plt.show()

# %% [markdown]
# The clip has no labels, so on it we can score image similarity, folding and cycle consistency, not Dice. It is
# one clip of one subject, so it has only a test split; asking for another says so:

# %% tags=["nbval-check-output"]
print(f"{len(clip)} pairs (frame 0 -> t), labels: {'moving_labels' in clip[0]}")
try:
    load_dataset("echo2d-clip", "train")
except ValueError as err:
    print("ValueError:", err)

# %% [markdown]
# ## All datasets at a glance
#
# Counts, image sizes and label fractions, measured here at this page's (small) parameters. Label fractions count
# every labelled frame: the moving images plus the atlas once for brain2d (for brain2d-subjects, whose fixed images
# differ too, the moving images plus the first fixed one), every frame of every sequence for the
# echo sets.


# %%
def describe(ds) -> dict:
    """Pairs, sequences, image size and label fractions (over all labelled frames) of
    one dataset split."""
    if hasattr(ds, "sequence"):
        frames = [s.get("labels") for s in ds.sequences()]
        n_seq = ds.num_sequences
    else:
        frames = [ds[0]["fixed_labels"]] + [
            ds[i]["moving_labels"] for i in range(len(ds))
        ]
        n_seq = "-"
    labels = (
        torch.cat([f.flatten() for f in frames if f is not None])
        if frames[0] is not None
        else None
    )
    fractions = (
        "-"
        if labels is None
        else " ".join(f"{v:.3f}" for v in torch.bincount(labels) / labels.numel())
    )
    h, w = ds[0]["moving"].shape[-2:]
    return {
        "pairs": len(ds),
        "sequences": n_seq,
        "size": f"{h} x {w}",
        "label fractions (0, 1, ...)": fractions,
    }


# %% tags=["nbval-check-output"]
rows = []
for split in ("train", "val", "test"):
    rows.append(
        (
            "brain2d",
            split,
            load_dataset("brain2d", split, seed=seed, num_pairs=brain_pairs),
        )
    )
for split in ("train", "val", "test"):
    rows.append(
        (
            "brain2d-subjects",
            split,
            load_dataset("brain2d-subjects", split, seed=seed, num_pairs=brain_pairs),
        )
    )
for split in ("train", "val", "test"):
    rows.append(
        (
            "echo2d-synthetic",
            split,
            load_dataset(
                "echo2d-synthetic",
                split,
                seed=seed,
                num_sequences=echo_sequences,
                frames=echo_frames,
                image_size=echo_size,
            ),
        )
    )
rows.append(("echo2d-clip", "test", clip))
print(
    f"{'dataset':<18}{'split':<6}{'pairs':>6}{'seqs':>6}{'size':>11}   label fractions "
    "(0, 1, ...)"
)
for name, split, ds in rows:
    d = describe(ds)
    print(
        f"{name:<18}{split:<6}{d['pairs']:>6}{d['sequences']:>6}{d['size']:>11}   "
        f"{d['label fractions (0, 1, ...)']}"
    )

# %% [markdown]
# Brain labels: background, CSF/other brain, grey matter, white matter. Echo labels: background, LV blood pool, LV
# myocardium. The left ventricle covers about 15 % of an echo frame, against about 65 % for the brain in a brain
# image; Dice is computed per label and ignores the background, so it scores the small heart on its own terms, but a
# loss that averages over all pixels (MSE) sees mostly tissue and sector background.
#
# ## The real datasets: LPBA40 and CAMUS
#
# Both need a registration with their providers and a manual download; the book never fetches them. Once you have
# them, two scripts turn them into the same format (atomic writes, a `manifest.json`), after which
# `load_dataset("lpba40", split)` and `load_dataset("camus", split)` work like the datasets above:
#
# ```bash
# python data_scripts/prepare_lpba40.py --help   # LONI's "delineation space" release: slice 80, 192 x 160, S01 = atlas
# python data_scripts/prepare_lpba40.py --src /path/to/LPBA40
# python data_scripts/prepare_camus.py --help    # CREATIS's CAMUS_public NIfTI release: 2CH and 4CH, 160 x 160
# python data_scripts/prepare_camus.py --src /path/to/CAMUS_public
# ```
#
# Files go under `$SEARCHMORPH_DATA` (default `~/.searchmorph/data`). Until then the loaders say what is missing:

# %%
try:
    load_dataset("lpba40", "test")
except FileNotFoundError as err:
    print(
        "FileNotFoundError:",
        str(err).splitlines()[0].split(":")[0],
        "(the message then says how to prepare it)",
    )

# %% [markdown]
# ## Exercises
#
# 1. Find the end-systolic frame of every synthetic test sequence from the labels alone (the frame with the
#    smallest blood pool) and compare it with `sequence(i)["es_frame"]`.
#
# ````{dropdown} Solution
# ```python
# for s in echo.sequences():
#     area = (s["labels"] == 1).flatten(1).sum(1)
#     print(s["view"], "smallest blood pool at frame", int(area.argmin()), "| es_frame:", s["es_frame"])
# ```
# They agree: the contraction is largest at `es_frame` by construction, and the cavity area shrinks monotonically
# with the contraction.
# ````
#
# 2. Is a brain2d subject from a farther slice harder to register? Compute the Dice of the *unregistered* pairs
#    (moving labels against fixed labels) for each test pair and plot it against `slice_offset_mm`.
#
# ````{dropdown} Solution
# ```python
# offsets, scores = [], []
# for i in range(len(brain)):
#     it = brain[i]
#     offsets.append(abs(it["slice_offset_mm"]))
#     scores.append(sm.dice(it["moving_labels"][None], it["fixed_labels"][None], [1, 2, 3]).mean().item())
# plt.plot(offsets, scores, "o")
# plt.xlabel("|slice offset| (mm)"), plt.ylabel("mean Dice before registration")
# plt.show()
# ```
# The initial Dice mixes two effects: the anatomical difference grows with the slice distance, and the random field
# (up to 8 pixels) is drawn independently of it, so the trend is there but noisy.
# ````

# %% [markdown]
# ## What we built
#
# - `load_dataset` for `brain2d` (MNI152 atlas pairs, 4 tissue labels), `brain2d-subjects` (pairs of virtual
#   subjects with random contrasts and artifacts, splits with a 3 mm gap), `echo2d-synthetic` (2CH/3CH/4CH cine
#   loops with exact labels and true fields, standard or wide scan settings) and `echo2d-clip` (a real DICOM A4C
#   cine), each with its limits stated.
# - NIfTI (affine, orientation) with nibabel and DICOM (tags, ultrasound regions, frames) with pydicom.
# - Proofs that the labels are exact: warped source labels for brain2d and for every virtual subject, warped ED
#   labels for every echo frame; the gap between the brain2d-subjects splits, checked slice by slice.
#
# [Next: 2. Warping](02_warping.ipynb)
