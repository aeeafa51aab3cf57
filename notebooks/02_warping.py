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
# # 2. Warping: the spatial transformer (eq. 8)
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/searchmorph-book/searchmorph-book/blob/main/notebooks/02_warping.ipynb)
#
# Every registration network ends the same way: it has predicted a displacement field $\phi$ and must resample the
# moving image $M$ with it, so that the warped image $M' = \mathcal{T}(M, \phi)$ can be compared with the fixed
# image. SearchMorph uses the grid generator and sampler of the spatial transformer network (Jaderberg et al.,
# 2015) for this (box 4 of Fig. 1). It has no parameters, but it must be differentiable, because the whole network
# is trained through it. In this chapter we write the bilinear warp of eq. 8 with loops, check it against
# `searchmorph_lite.warp`, pin down the library's conventions (which channel is which, which way content moves),
# warp label maps without inventing labels, and learn why upsampling a field doubles its values.

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
import inspect
from functools import partial

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from IPython.display import Code

import searchmorph_lite as sm
from searchmorph_lite import book
from searchmorph_lite.book import setup
from searchmorph_lite.brute_force import bilinear_at, warp_naive
from searchmorph_lite.data import load_dataset

# %% tags=["parameters"]
seed = 0
device = "auto"
# the paper's brain size (H, W); the naive loop below visits every pixel in Python
image_size = (192, 160)
# largest displacement (pixels) of the smooth random field in the figures
strength = 4.0
# the random field is interpolated from this coarse grid: fewer points = smoother
control_points = (10, 8)
grid_step = 8  # spacing (pixels) of the grid lines drawn over the images
# nothing in this chapter is slow: configs/book_gpu.yaml leaves it as it is

# %%
device = setup(seed, device)  # seeds torch; "auto": CUDA when present, else CPU

# %% [markdown]
# We work on a real image: the fixed brain slice of the book's `brain2d` data (chapter 1), a 192 x 160 axial
# slice of the MNI152 template with its tissue labels (0 background, 1 CSF and other, 2 grey matter, 3 white
# matter). Images are `(B, C, H, W)` float tensors, label maps `(B, 1, H, W)` integer tensors.

# %%
pair = load_dataset("brain2d", "test", num_pairs=2, image_size=image_size)[0]
brain = pair["fixed"][None].to(device)  # (1, 1, H, W) in [0, 1]
labels = pair["fixed_labels"][None].to(device)  # (1, 1, H, W) int64
H, W = brain.shape[-2:]
print(
    "image:",
    tuple(brain.shape),
    brain.dtype,
    "| labels:",
    tuple(labels.shape),
    labels.unique().tolist(),
)

# %% [markdown]
# ## Eq. 8: bilinear sampling at displaced positions
#
# For each pixel $p$ of the output, the field gives a displaced position $p^w = p + \phi(p)$ in the moving image.
# $p^w$ usually falls between pixels, so the sampler blends the pixels $q$ around it, each weighted by how close
# it is along each axis:
#
# $$
# \mathcal{T}(M, \phi)(p) = \sum_{q \in \mathcal{N}(p^w)} M(q) \prod_{d \in \{x, y\}} \left(1 - |p^w_d - q_d|\right)
# \tag{8}
# $$
#
# Two remarks on the paper's text. It writes $p_d$ inside the product; the weight must use the neighbour's
# coordinate $q_d$, as in VoxelMorph. And it calls $\mathcal{N}(p^w)$ an "8-coordinate neighbourhood", which is
# the 3D case ($2^3$ corners); in 2D the neighbourhood is the $2^2 = 4$ pixels around $p^w$. Neighbours that fall
# outside the image contribute 0.
#
# The loops below say exactly that, one pixel at a time: `bilinear_at` is the sum over the four neighbours $q$
# of $p^w$, and `warp_naive` visits every pixel $p$ of every image and channel. They live in the library's
# `searchmorph_lite.brute_force`, the brute-force versions that the library's tests check `warp` against, so the
# book and the tests prove the same thing. Here is their source:

# %%
Code(
    inspect.getsource(bilinear_at) + "\n\n" + inspect.getsource(warp_naive),
    language="python",
)

# %% [markdown]
# A smooth random field to test it on: `searchmorph_lite.book.smooth_field` draws random displacements on a coarse
# grid of control points, interpolates them to every pixel (here bicubically) and scales them so that the largest
# displacement is `strength` pixels. This chapter's fields are all on the brain's grid, from `control_points`:


# %%
# smooth_field(max_disp, seed=seed): a field (1, 2, H, W), largest |component| max_disp
smooth_field = partial(
    book.smooth_field,
    (H, W),
    grid=control_points,
    cubic=True,
    draw_dtype=torch.float32,
    seed=seed,
    device=device,
)
flow = smooth_field(strength)
print(
    "flow:",
    tuple(flow.shape),
    "| largest displacement (px):",
    f"{flow.abs().max().item():.3g}",
)

# %%
warped_naive = warp_naive(brain.cpu(), flow.cpu())[0, 0]  # (H, W)
warped = sm.warp(brain, flow)

# %% tags=["nbval-check-output"]
assert torch.allclose(warped_naive, warped[0, 0].cpu(), atol=1e-5)
err = (warped_naive - warped[0, 0].cpu()).abs().max().item()
print("max |naive - library| < 1e-5:", err < 1e-5)

# %% [markdown]
# The loop and `searchmorph_lite.warp` agree to float precision, so from now on we use the library. It computes the
# same sum with tensor operations (and in 3D with 8 neighbours). The module form `sm.SpatialTransformer()` wraps
# it; as the paper says, it learns nothing:

# %% tags=["nbval-check-output"]
stn = sm.SpatialTransformer()
print(
    "parameters in the spatial transformer:", sum(p.numel() for p in stn.parameters())
)
assert torch.equal(stn(brain, flow), warped)

# %% [markdown]
# It is differentiable, though, with respect to the field: this is what lets the similarity loss of chapter 3
# train the network that predicts $\phi$. The gradient of a loss with respect to every displacement exists:

# %% tags=["nbval-check-output"]
phi = flow.clone().requires_grad_(True)
loss = sm.mse_loss(sm.warp(brain, phi), brain)
loss.backward()
print(
    "gradient shape:",
    tuple(phi.grad.shape),
    "| non-zero gradients:",
    bool(phi.grad.abs().sum() > 0),
)

# %% [markdown]
# ## What it looks like
#
# To see the deformation we draw the moving image's grid lines where they land in the warped image. Output pixel
# $p$ shows the moving image at $p + \phi(p)$, so $p$ lies on the moving image's row line $r$ exactly when the row
# coordinate of $p + \phi(p)$ equals $r$: the warped grid is made of the contour lines of the two sampling
# coordinates, drawn every `grid_step` pixels.


# %%
def show_warp(ax, image, field, title):
    """Draw image warped by field (1, 2, H, W), with the moving image's grid lines
    where they land."""
    ax.imshow(sm.warp(image, field)[0, 0].cpu(), cmap="gray", vmin=0, vmax=1)
    coords = (
        sm.identity_grid((H, W), device=field.device) + field[0]
    ).cpu()  # p + phi(p): (2, H, W)
    for c, n in zip(coords, (H, W)):
        ax.contour(
            c,
            levels=torch.arange(0, n, grid_step).tolist(),
            colors="gold",
            linewidths=0.6,
        )
    ax.set_title(title)
    ax.set_xlabel("column (pixel)")
    ax.set_ylabel("row (pixel)")


# %%
fig, axes = plt.subplots(1, 3, figsize=(14, 5))
show_warp(axes[0], brain, torch.zeros_like(flow), "moving M with a regular grid")
show_warp(axes[1], brain, flow, f"warped M' = T(M, φ), max |φ| = {strength:g} px")
magnitude = flow[0].norm(dim=0).cpu()
im = axes[2].imshow(magnitude, cmap="viridis")
step = 12
rows, cols = torch.meshgrid(
    torch.arange(0, H, step), torch.arange(0, W, step), indexing="ij"
)
axes[2].quiver(
    cols,
    rows,
    flow[0, 1, ::step, ::step].cpu(),
    flow[0, 0, ::step, ::step].cpu(),
    color="white",
    angles="xy",
    scale_units="xy",
    scale=0.5,
)
axes[2].set_ylim(H - 1, 0)
axes[2].set_title("φ: magnitude (colour), direction (arrows, x2)")
axes[2].set_xlabel("column (pixel)")
fig.colorbar(im, ax=axes[2], fraction=0.046, label="|φ(p)| (pixels)")
plt.show()

# %% [markdown]
# The arrows show where each output pixel *reads from*: $p + \phi(p)$. Content moves the opposite way, as the next
# section proves.
#
# ## Conventions: channels, directions, and the sign of a shift
#
# Three facts that every later chapter relies on:
#
# 1. A field has shape `(B, 2, H, W)` in **pixels**; channel 0 is the displacement along **rows** (down is
#    positive), channel 1 along **columns** (right is positive). This matches the order of the tensor axes, as in
#    VoxelMorph.
# 2. `warp(moving, flow)` evaluates the moving image at $p + \phi(p)$: the field lives on the *fixed* image's grid
#    and points into the moving image (a "pull" or backward warp). Every output pixel gets exactly one value, so
#    there are no holes.
# 3. Hence a constant field of $+5$ along columns makes every output pixel read the pixel 5 columns to its right:
#    the content moves 5 pixels to the **left**.
#
# We check the third fact on the brain: the warped image equals the original shifted left by 5 columns, exactly
# (integer displacements copy pixels, no interpolation), and the last 5 columns read outside the image and are 0.
# `exact=True` asks `warp` for its gather path, which reads integer positions bit for bit; the default path, the
# fused `grid_sample` kernel, rescales positions to $[-1, 1]$ and is exact only to about $10^{-7}$ times the size.

# %% tags=["nbval-check-output"]
shift = torch.zeros(1, 2, H, W, device=device)
shift[:, 1] = 5.0  # +5 along columns
shifted = sm.warp(brain, shift, exact=True)
assert torch.equal(
    shifted[..., :, :-5], brain[..., :, 5:]
)  # output column j = input column j + 5
assert torch.all(shifted[..., :, -5:] == 0)


def centre(img: torch.Tensor) -> torch.Tensor:
    return (img[0, 0].sum(0) * torch.arange(W, device=device)).sum() / img.sum()


print(
    "centre of mass, column: before",
    f"{centre(brain).item():.2f}",
    "after",
    f"{centre(shifted).item():.2f}",
)

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
axes[0].imshow(brain[0, 0].cpu(), cmap="gray")
axes[0].set_title("M")
axes[1].imshow(shifted[0, 0].cpu(), cmap="gray")
axes[1].set_title("warp(M, φ) with φ = (0, +5)")
im = axes[2].imshow((shifted - brain)[0, 0].cpu(), cmap="RdBu_r", vmin=-0.5, vmax=0.5)
axes[2].set_title("difference: content moved left")
for ax in axes:
    ax.axvline(W // 2, color="yellow", lw=0.8)
    ax.set_xlabel("column (pixel)")
axes[0].set_ylabel("row (pixel)")
fig.colorbar(im, ax=axes[2], fraction=0.046, label="intensity difference")
plt.show()

# %% [markdown]
# ## Warping label maps: nearest neighbour
#
# To score a registration with Dice (chapter 3) we warp the moving image's *labels* with the same field. Bilinear
# blending is wrong for labels: halfway between white matter (3) and CSF (1) it invents grey matter (2), and most
# blends are not even integers. `mode="nearest"` rounds $p + \phi(p)$ to the nearest pixel and copies its label.

# %% tags=["nbval-check-output"]
lab = labels.float()
blended = sm.warp(lab, flow)  # bilinear: wrong for labels
nearest = sm.warp(lab, flow, mode="nearest")
print("non-integer pixels, bilinear:", int((blended != blended.round()).sum()))
print("non-integer pixels, nearest: ", int((nearest != nearest.round()).sum()))
assert set(nearest.unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
for ax, img, title in zip(
    axes, (lab, blended, nearest), ("labels", "warped, bilinear", "warped, nearest")
):
    im = ax.imshow(
        img[0, 0, 60:130, 40:120].cpu(),
        cmap="viridis",
        vmin=0,
        vmax=3,
        interpolation="nearest",
    )
    ax.set_title(title + " (zoom)")
    ax.set_xlabel("column (pixel, from 40)")
axes[0].set_ylabel("row (pixel, from 60)")
fig.colorbar(im, ax=axes[2], fraction=0.046, label="label (0 bg, 1 CSF, 2 GM, 3 WM)")
plt.show()

# %% [markdown]
# ## Upsampling a field: why the displacements double
#
# SearchMorph's iterator works at half resolution and upsamples its last field by 2 to the image size (Fig. 1,
# $\phi \to \Phi$). Resizing a field is not like resizing an image: its *values* are distances in pixels of the grid
# they live on. A displacement of 1 pixel on the half-resolution grid spans 2 pixels of the full-resolution grid,
# so the upsampled field must be multiplied by the factor. `sm.upsample_flow(flow, 2)` does both (bilinear
# resizing, then $\times 2$). A constant field shows it most simply:

# %% tags=["nbval-check-output"]
const = (
    torch.tensor([1.5, -2.0], device=device)
    .view(1, 2, 1, 1)
    .expand(1, 2, H // 2, W // 2)
)
up = sm.upsample_flow(const, 2)
print("coarse", tuple(const.shape), "-> fine", tuple(up.shape))
assert torch.allclose(up, 2 * const[:, :, :1, :1].expand(1, 2, H, W))
print("fine-grid values:", up[0, :, 0, 0].tolist())

# %% [markdown]
# On a smooth field: take a full-resolution field $\phi$, make its half-resolution version the way a network would
# see it (average-pool the positions, halve the distances), and upsample it back, once with the factor and once
# without. Only the first recovers $\phi$, and warps the brain like $\phi$ does.

# %% tags=["nbval-check-output"]
# the field on the half-resolution grid, in half-resolution pixels
coarse = F.avg_pool2d(flow, 2) / 2
with_factor = sm.upsample_flow(coarse, 2)
without_factor = F.interpolate(
    coarse, scale_factor=2, mode="bilinear", align_corners=False
)
for name, f in (
    ("upsample_flow (x2)", with_factor),
    ("interpolate only", without_factor),
):
    field_err = (f - flow).abs().max().item()
    image_err = sm.mse_loss(sm.warp(brain, f), sm.warp(brain, flow)).item()
    print(
        f"{name:18s} max field error {field_err:.2g} px | MSE of the warped image "
        f"{image_err:.1e}"
    )

# %% [markdown]
# ## Explore: deformation strength
#
# The same field at a few strengths, then a slider to try others (the slider needs a running kernel; on the web
# page it shows its first setting). Past about 15 pixels this field's grid starts to cross itself: the field
# *folds* space, which chapter 3 learns to detect with the Jacobian determinant.

# %%
fig, axes = plt.subplots(1, 4, figsize=(16, 4.8), layout="constrained")
for ax, s in zip(axes, (0.0, 5.0, 10.0, 20.0)):
    show_warp(ax, brain, smooth_field(s), f"max |φ| = {s:g} px")
plt.show()


# %%
def explore(max_displacement=4.0):
    fig, ax = plt.subplots(figsize=(4.5, 5))
    show_warp(
        ax, brain, smooth_field(max_displacement), f"max |φ| = {max_displacement:g} px"
    )
    plt.show()


slider = widgets.FloatSlider(
    value=strength,
    min=0,
    max=20,
    step=1,
    description="max |φ| (px)",
    style={"description_width": "initial"},
)
# noqa: E703 (the ; hides the returned function's repr)
widgets.interact(explore, max_displacement=slider)

# %% [markdown]
# ## Exercises
#
# 1. Write `warp_naive_border(image, flow)` for an image (H, W) and a field (2, H, W): `warp_naive` with
#    `padding_mode="border"`, where positions outside the image read the nearest border pixel instead of 0. Check
#    it against `sm.warp(..., padding_mode="border")` with a field that pushes content out.
#
# ````{dropdown} Solution
# Clamp $p^w$ into the image before finding its neighbours; the weights then stay inside.
# ```python
# def warp_naive_border(image, flow):
#     h, w = image.shape
#     clamped = torch.stack([(torch.arange(h)[:, None] + flow[0]).clamp(0, h - 1),
#                            (torch.arange(w)[None, :] + flow[1]).clamp(0, w - 1)])
#     grid = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")).float()
#     return warp_naive(image[None, None], (clamped - grid)[None])[0, 0]
#
# push = torch.zeros(1, 2, H, W); push[:, 1] = 30.0
# assert torch.allclose(warp_naive_border(brain[0, 0].cpu(), push[0]),
#                       sm.warp(brain.cpu(), push, padding_mode="border")[0, 0], atol=1e-5)
# ```
# ````
#
# 2. Warping twice is not warping with the sum of the fields. Show that
#    `warp(warp(M, u), v)` equals `warp(M, w)` with $w(p) = v(p) + u(p + v(p))$, i.e.
#    `w = v + warp(u, v)`, and that `u + v` is worse.
#
# ````{dropdown} Solution
# `warp(warp(M, u), v)(p) = warp(M, u)(p + v(p)) = M(p + v(p) + u(p + v(p)))`.
# ```python
# u, v = smooth_field(4.0, seed=1), smooth_field(4.0, seed=2)
# twice = sm.warp(sm.warp(brain, u), v)
# composed = v + sm.warp(u, v)
# print("MSE with v + warp(u, v):", sm.mse_loss(sm.warp(brain, composed), twice).item())
# print("MSE with u + v:         ", sm.mse_loss(sm.warp(brain, u + v), twice).item())
# ```
# The composed field matches up to interpolation error; the plain sum does not. SearchMorph's iterator adds
# updates ($\phi_t = \phi_{t-1} + \Delta\phi$) instead of composing them: its updates are small and predicted
# from features sampled at the current field, so the network learns the correction.
# ````

# %% [markdown]
# ## What we built
#
# - `warp_naive` (`searchmorph_lite.brute_force`): eq. 8 with loops, equal to `sm.warp` (and
#   `sm.SpatialTransformer`), which is differentiable.
# - The conventions: channel 0 rows, channel 1 columns, sample at $p + \phi(p)$, so $+5$ columns moves content left;
#   `mode="nearest"` for labels.
# - `sm.upsample_flow`: resizing a field multiplies its displacements by the factor.
#
# [Next: 3. Losses and metrics](03_losses_metrics.ipynb)
