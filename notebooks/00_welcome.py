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
# # 0. Welcome: registration, the map of the book, and setup
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/searchmorph-book/searchmorph-book/blob/main/notebooks/00_welcome.ipynb)
#
# This book rebuilds SearchMorph (Fan et al., *SearchMorph: Multi-scale Correlation Iterative Network for
# Deformable Registration*), a network that aligns one medical image onto another by predicting a dense
# displacement for every pixel and refining it over a few iterations. This chapter says what deformable
# registration is, lays out which chapter builds which box of the paper's Fig. 1, gets the library running
# locally or on Colab, and takes a first look at the two kinds of images the paper registers: brain MR slices and
# echocardiography frames.

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
import matplotlib.pyplot as plt
import numpy as np
import pydicom
import torch
from nilearn import datasets
from pydicom import examples

import searchmorph_lite as sm
from searchmorph_lite.book import setup

# %% tags=["parameters"]
seed = 0
device = "auto"
fixed_z_mm = 16  # axial MNI slice used as the fixed image (lateral ventricles, caudate)
# the moving slice lies this far above it: a real anatomical difference
moving_offset_mm = 5
echo_frames = (0, 12)  # two frames of the echocardiography cine to compare
# nothing to scale in this chapter (configs/book_gpu.yaml leaves it out); it runs in a
# few seconds everywhere.

# %%
device = setup(seed, device)  # seeds torch; "auto": CUDA when present, else CPU

# %% [markdown]
# ## What deformable registration is
#
# Two images of the same anatomy rarely line up: two people's brains differ in shape, and a beating heart changes
# shape from frame to frame. *Registration* finds where each point of one image, the **fixed** image $F$, lies in
# the other, the **moving** image $M$. *Deformable* registration allows a different displacement for every pixel:
# a field $u$ that assigns to each pixel $p$ of $F$ a vector $u(p)$, so that the moving image sampled at the
# displaced positions looks like the fixed one,
#
# $$
# M\big(p + u(p)\big) \approx F(p) \quad \text{for every pixel } p .
# $$
#
# The resampled image $M' = M \circ (\mathrm{Id} + u)$ is the *warped* moving image; the spatial transformer of
# chapter 2 computes it (the paper's eq. 8). Classical methods such as SyN (Avants et al., 2008) search for $u$
# by optimising each pair of images anew: about a second per small 2D pair on a CPU (chapter 12 prints the time per
# pair on your machine), more for larger images and volumes. Learning-based methods such as VoxelMorph (Balakrishnan
# et al., 2019) and SearchMorph train a network once, without ground-truth fields, to output $u$ in one forward
# pass: the network is scored only by how similar $M'$ is to $F$ and how smooth $u$ is (eq. 9, chapter 3).
#
# ## The map of the book
#
# The paper's Fig. 1 has four components; each gets its own chapters, and each chapter ends by importing the
# piece it built from the library `searchmorph_lite`.
#
# | Fig. 1 component | Paper | Chapters | Library |
# | --- | --- | --- | --- |
# | (1) feature encoder and context encoder | Sec. III-A | 4 | `FeatureEncoder`, `ContextEncoder` |
# | (2) correlation layer: cost volume, 4-level pyramid | eq. 1-2 | 5, 6 | `cost_volume`, `correlation_pyramid` |
# | (3) deformation-field iterator: search, GRU | eq. 3-7 | 7, 8 | `search_pyramid`, `DeformationFieldIterator` |
# | (4) spatial transformer (STN) | eq. 8 | 2 | `warp`, `SpatialTransformer`, `upsample_flow` |
# | loss and metrics | eq. 9, Sec. IV-B | 3 | `lncc_loss`, `grad_l2_loss`, `dice`, `jacobian_determinant` |
#
# Chapter 1 prepares the data, chapter 9 assembles `SearchMorph` (and the `VoxelMorph` baseline), chapter 10
# trains them, and chapters 11, 12 and 13 repeat the paper's Tables I (brain), II (echocardiography) and III
# (ablations) at a scale that runs on a laptop. Chapters 14, 15 and 16 go beyond the paper: the same model in 3D,
# a diffeomorphic field, and features at full resolution.
#
# | Part | Chapters |
# | --- | --- |
# | Getting started | [1. Data](01_data.ipynb) |
# | Building blocks | [2. Warping](02_warping.ipynb), [3. Losses and metrics](03_losses_metrics.ipynb), [4. Encoders](04_encoders.ipynb), [5. Cost volume](05_cost_volume.ipynb), [6. Pyramid](06_correlation_pyramid.ipynb), [7. Diamond search](07_diamond_search.ipynb), [8. ConvGRU iterator](08_convgru_iterator.ipynb) |
# | The model | [9. Assembling SearchMorph](09_searchmorph.ipynb), [10. Training](10_training.ipynb) |
# | Experiments | [11. Brain MR](11_brain_evaluation.ipynb), [12. Echocardiography](12_echocardiography.ipynb), [13. Ablations](13_ablations.ipynb) |
# | Beyond the paper | [14. 3D](14_three_d.ipynb), [15. Diffeomorphic](15_diffeomorphic.ipynb), [16. Full resolution](16_full_resolution.ipynb) |

# %% [markdown]
# ## Running the chapters
#
# **Locally.** From a clone of the repository, install PyTorch first (pinned, so pip does not pull a multi-GB CUDA
# build you may not need), then the pinned dependencies and the library in editable mode:
#
# ```bash
# pip install torch==2.13.0 && pip install -r requirements.txt && pip install --no-deps -e .
# jupyter lab notebooks/
# ```
#
# **On Colab.** Open a chapter with its badge. The first code cell of every chapter notices Colab and installs the
# library from GitHub, keeping Colab's PyTorch. Choose *Runtime > Change runtime type > GPU* for the larger
# settings.
#
# **Parameters.** The cell tagged `parameters` near the top of each chapter holds small defaults that run in
# seconds on a CPU (this is how the book is built and tested); a comment gives the GPU-scale values. With
# papermill you can change them without editing the notebook: `papermill in.ipynb out.ipynb -p seed 1`.
#
# **Setup.** Every chapter's setup cell, right after `parameters`, is one call, `searchmorph_lite.book.setup(seed,
# device, threads)`: it seeds PyTorch, sets its CPU threads when the chapter has a `threads` parameter, and returns
# the device. With `device = "auto"` that is `searchmorph_lite.default_device()`: `cuda` when PyTorch sees a GPU,
# `cpu` otherwise. The setup cell above already ran; here is what it found on the machine that ran this page:

# %%
print("PyTorch", torch.__version__, "| searchmorph_lite", sm.__version__)
print("device:", device, "| CUDA available:", torch.cuda.is_available())

# %% [markdown]
# ## A first look: a brain slice
#
# The paper registers the 80th axial slice of each LPBA40 brain to an atlas. The book's stand-in ships with
# nilearn: the MNI152 2009a T1 template, an average of 152 adult brains at 1 mm resolution (Fonov et al., 2009,
# 2011). It is read from a file inside the nilearn package, so nothing is downloaded. We take an axial slice
# through the lateral ventricles and show it with anterior at the top and the subject's left on the left.

# %%
mni = datasets.load_mni152_template(resolution=1)
volume = mni.get_fdata(dtype=np.float32)
print(
    "volume shape (x, y, z):",
    volume.shape,
    "| voxel size (mm):",
    mni.header.get_zooms(),
)


def axial_slice(z_mm: float) -> np.ndarray:
    """Axial slice (rows anterior -> posterior, columns left -> right) of the template
    at height z_mm."""
    k = int(round(np.linalg.solve(mni.affine, [0.0, 0.0, z_mm, 1.0])[2]))
    return np.ascontiguousarray(volume[:, :, k].T[::-1])


fixed_np = axial_slice(fixed_z_mm)
moving_np = axial_slice(fixed_z_mm + moving_offset_mm)

# %%
fig, ax = plt.subplots(figsize=(4.5, 5))
im = ax.imshow(fixed_np, cmap="gray")
ax.set_title(f"MNI152 2009a, axial slice z = {fixed_z_mm} mm")
ax.set_xlabel("column (left → right, mm)")
ax.set_ylabel("row (anterior → posterior, mm)")
fig.colorbar(im, ax=ax, fraction=0.046, label="T1 intensity")
plt.show()

# %% [markdown]
# ## A first look: an echocardiography cine
#
# The paper's second task tracks the heart through a cardiac cycle in ultrasound sequences. pydicom ships a real
# apical four-chamber cine (30 colour frames from a SonoSite scanner) as an example file, again read from inside
# the installed package. We convert the frames to grey levels and compare two of them.

# %%
echo = pydicom.dcmread(examples.get_path("ybr_color"))
# (frames, rows, cols): pydicom converts YBR to RGB; RGB -> grey
cine = echo.pixel_array.mean(axis=-1) / 255.0
print(
    "modality:",
    echo.Modality,
    "| frames, rows, cols:",
    cine.shape,
    "| frame time (ms):",
    float(echo.FrameTime),
)

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
a, b = echo_frames
for ax, t in zip(axes[:2], echo_frames):
    ax.imshow(cine[t], cmap="gray", vmin=0, vmax=1)
    ax.set_title(f"frame {t} (t = {t * float(echo.FrameTime):.0f} ms)")
    ax.set_xlabel("column (pixel)")
    ax.set_ylabel("row (pixel)")
im = axes[2].imshow(cine[b] - cine[a], cmap="RdBu_r", vmin=-0.5, vmax=0.5)
axes[2].set_title(f"frame {b} − frame {a}")
axes[2].set_xlabel("column (pixel)")
fig.colorbar(im, ax=axes[2], fraction=0.046, label="intensity difference")
plt.show()

# %% [markdown]
# The difference image is not zero: the walls and valves moved between the two frames. Registering frame $b$
# onto frame $a$ means finding, for every pixel, the motion that explains that difference.
#
# ## Moving, fixed, and what registration has to remove
#
# Back to the brain. We make a registration problem out of two real slices: the fixed image is the slice at
# $z = 16$ mm, the moving image the slice 5 mm above it. The anatomy really differs between them (the ventricles
# and sulci change shape), which is the kind of difference the paper's inter-subject brain task has. We turn them
# into the `(B, C, H, W)` tensors every function of the library takes and measure their mismatch with the mean
# squared error (chapter 3).

# %%
fixed = torch.from_numpy(fixed_np)[None, None].to(device)  # (1, 1, H, W)
moving = torch.from_numpy(moving_np)[None, None].to(device)
print("image tensor shape (B, C, H, W):", tuple(fixed.shape))

# %% tags=["nbval-check-output"]
print("MSE(moving, fixed) =", f"{sm.mse_loss(moving, fixed).item():.4g}")
print("MSE(fixed, fixed)  =", f"{sm.mse_loss(fixed, fixed).item():.4g}")

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
for ax, img in zip(axes, (moving_np, fixed_np)):
    ax.imshow(img, cmap="gray", vmin=0, vmax=1)
    ax.set_xlabel("column (mm)")
    ax.set_ylabel("row (mm)")
axes[0].set_title(f"moving M (z = {fixed_z_mm + moving_offset_mm} mm)")
axes[1].set_title(f"fixed F (z = {fixed_z_mm} mm)")
im = axes[2].imshow(moving_np - fixed_np, cmap="RdBu_r", vmin=-0.6, vmax=0.6)
axes[2].set_title("M − F: what registration must explain")
axes[2].set_xlabel("column (mm)")
fig.colorbar(im, ax=axes[2], fraction=0.046, label="intensity difference")
plt.show()

# %% [markdown]
# Red and blue rims along the ventricles and the cortex are shape differences: a good field $u$ moves them
# into place and the difference image fades. Not all of it can fade: some structures exist in one slice and not the
# other, which is why registration quality is also measured on labels (Dice, chapter 3) and not on intensities
# alone.

# %% [markdown]
# ## Exercises
#
# 1. How does the mismatch grow with the distance between the two slices? Compute the MSE between the slice at
#    16 mm and the slices 1, 2, ..., 10 mm above it and plot it.
#
# ````{dropdown} Solution
# ```python
# offsets = np.arange(1, 11)
# errors = [sm.mse_loss(torch.from_numpy(axial_slice(fixed_z_mm + d))[None, None], fixed.cpu()).item()
#           for d in offsets]
# plt.plot(offsets, errors, "o-")
# plt.xlabel("distance between slices (mm)")
# plt.ylabel("MSE")
# plt.show()
# ```
# The error grows roughly monotonically with distance: nearby slices share most of their anatomy.
# ````
#
# 2. Is the echocardiography frame difference larger at end-systole? Find the frame that differs most from frame
#    0 in mean squared error.
#
# ````{dropdown} Solution
# ```python
# errors = ((cine - cine[0]) ** 2).mean(axis=(1, 2))
# print("most different frame:", int(errors.argmax()))
# ```
# The most different frame is where the heart is most contracted relative to frame 0, near end-systole.
# ````

# %% [markdown]
# ## What we built
#
# - A definition: deformable registration finds a per-pixel displacement $u$ with $M(p + u(p)) \approx F(p)$.
# - A map from the paper's Fig. 1 to the chapters, and a working setup (`searchmorph_lite.book.setup`).
# - Two real images to work on, a brain slice pair and an echocardiography cine, loaded offline.
#
# [Next: 1. Data](01_data.ipynb)
