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
# # 3. Losses and metrics: what the network optimises and how we score it (eq. 9)
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/searchmorph-book/searchmorph-book/blob/main/notebooks/03_losses_metrics.ipynb)
#
# SearchMorph learns without ground-truth fields: the only training signal is eq. 9, how similar the warped moving
# image is to the fixed image plus a penalty on rough fields. The paper then scores registrations with two
# metrics: the Dice overlap of anatomical labels and the fraction of pixels where the field folds (a non-positive
# Jacobian determinant). This chapter writes each of them with loops, checks it against `searchmorph_lite`, and
# shows on a real brain slice what each one rewards and what it misses.

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

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from IPython.display import Code
from matplotlib.colors import ListedColormap, TwoSlopeNorm

import searchmorph_lite as sm
from searchmorph_lite import book
from searchmorph_lite.book import setup
from searchmorph_lite.brute_force import dice_naive, jacobian_naive, local_ncc_naive
from searchmorph_lite.data import load_dataset

# %% tags=["parameters"]
seed = 0
device = "auto"
image_size = (192, 160)  # the paper's brain size (H, W)
window = 9  # LNCC window (pixels), VoxelMorph's default
# weight of the smoothness term; the paper uses 2 with LNCC (brain) and 0.01 with MSE
# (echo)
alpha = 2.0
naive_size = (48, 40)  # the naive sliding-window LNCC loops over this many pixels
# largest displacement (pixels) of the random field in the Jacobian figure: it folds
fold_strength = 20.0
# nothing in this chapter is slow: configs/book_gpu.yaml leaves it as it is

# %%
device = setup(seed, device)  # seeds torch; "auto": CUDA when present, else CPU

# %% [markdown]
# A real pair from the book's `brain2d` data (chapter 1): a moving slice (a neighbouring MNI152 slice under a
# random smooth deformation, with intensity changes) and the fixed atlas slice, both with tissue labels
# (1 CSF and other brain, 2 grey matter, 3 white matter).

# %%
pair = load_dataset("brain2d", "test", num_pairs=2, image_size=image_size)[0]
# (1, 1, H, W)
moving, fixed = (pair["moving"][None].to(device), pair["fixed"][None].to(device))
moving_labels, fixed_labels = (
    pair["moving_labels"][None].to(device),
    pair["fixed_labels"][None].to(device),
)
H, W = fixed.shape[-2:]
print("images:", tuple(fixed.shape), "| labels:", fixed_labels.unique().tolist())

# %% [markdown]
# ## Eq. 9: similarity plus smoothness
#
# $$
# \mathcal{L}(M, F, \phi) = \mathcal{L}_{sim}\big(\mathcal{T}(M, \phi), F\big) + \alpha\, \mathcal{L}_{reg}(\phi)
# \tag{9}
# $$
#
# $\mathcal{T}(M, \phi)$ is the warped moving image of chapter 2. The paper uses two similarity terms, the mean
# squared error (MSE) for ultrasound and the local normalised cross-correlation (LNCC) for MR, and the "l2-loss" on
# the field's spatial gradient as $\mathcal{L}_{reg}$. We build the three pieces, then the sum.
#
# ### MSE
#
# $\mathcal{L}_{MSE}(A, B) = \frac{1}{|\Omega|} \sum_{p \in \Omega} \big(A(p) - B(p)\big)^2$ over the pixels
# $\Omega$.


# %%
def mse_naive(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared difference of two images (H, W), one pixel at a time."""
    total = 0.0
    for x, y in zip(a.flatten().tolist(), b.flatten().tolist()):
        total += (x - y) ** 2
    return total / a.numel()


# %% tags=["nbval-check-output"]
naive = mse_naive(moving[0, 0].cpu(), fixed[0, 0].cpu())
assert abs(naive - sm.mse_loss(moving, fixed).item()) < 1e-6
print("MSE(moving, fixed) =", f"{naive:.4g}")

# %% [markdown]
# ### LNCC
#
# MSE compares raw intensities, so it penalises a pair whose brightness differs even where the anatomy matches:
# MR intensities change between scanners and across one image (bias field). LNCC compares *local patterns*
# instead. For every pixel $p$ take the $n = 9 \times 9$ window $\mathcal{W}(p)$ around it, subtract each
# image's mean $\bar A(p), \bar B(p)$ over that window, and correlate:
#
# $$
# \mathrm{cc}(p) = \frac{\Big(\sum_{q \in \mathcal{W}(p)} \big(A(q) - \bar A(p)\big)\big(B(q) - \bar B(p)\big)\Big)^2}
# {\sum_{q \in \mathcal{W}(p)} \big(A(q) - \bar A(p)\big)^2 \;
#  \sum_{q \in \mathcal{W}(p)} \big(B(q) - \bar B(p)\big)^2 + \varepsilon},
# \qquad
# \mathcal{L}_{LNCC}(A, B) = -\frac{1}{|\Omega|} \sum_{p} \mathrm{cc}(p).
# $$
#
# $\mathrm{cc}(p) \in [0, 1]$ is the squared correlation coefficient of the two patches: 1 when one patch is an
# increasing or decreasing affine function of the other. Windows reaching past the border read zeros (as in
# VoxelMorph, whose LNCC the library follows), and $\varepsilon = 10^{-5}$ keeps flat background windows at 0
# instead of 0/0. The loop, one window at a time, is the library's brute-force reference in
# `searchmorph_lite.brute_force`, the one its tests check `sm.local_ncc` against:

# %%
Code(inspect.getsource(local_ncc_naive), language="python")

# %% [markdown]
# We run it on a downsampled copy, so that it finishes in a blink:

# %%
small = lambda x: F.interpolate(x, size=naive_size, mode="area")  # noqa: E731
# (H, W) map of cc(p), in float64
cc_naive = local_ncc_naive(small(moving).double(), small(fixed).double(), window)[0, 0]

# %% tags=["nbval-check-output"]
cc_lib = sm.local_ncc(small(moving).double(), small(fixed).double(), window=window)[
    0, 0
]
assert torch.allclose(cc_naive, cc_lib, atol=1e-8)
assert torch.isclose(
    -cc_naive.mean(),
    sm.lncc_loss(small(moving).double(), small(fixed).double(), window=window),
)
print("max |naive - library| < 1e-8:", (cc_naive - cc_lib).abs().max().item() < 1e-8)
print("LNCC loss (downsampled pair) =", f"{-cc_naive.mean().item():.4g}")

# %% [markdown]
# (The comparison runs in float64: the library computes window sums with a convolution and the variance as
# $\sum a^2 - (\sum a)^2 / n$, which in float32 loses digits where a window is nearly flat.) From now on
# `sm.local_ncc` and `sm.lncc_loss` do the work. What LNCC buys: change the fixed image's intensities by a smooth
# gain (a bias field) and a gamma curve. The anatomy is untouched, yet MSE sees a difference as large as the one
# between the moving and the fixed brain; LNCC barely moves. (An image compared with itself scores about -0.72,
# not -1: in the flat black background both windows have zero variance and count as 0.)

# %% tags=["nbval-check-output"]
rows = torch.linspace(0, 1, H, device=device)[:, None]
gain = 0.4 + 1.2 * rows  # a bias field: darker at the front, brighter at the back
relit = gain * fixed**0.6  # and a gamma curve
for name, other in (
    ("same image", fixed),
    ("relit copy", relit),
    ("moving image", moving),
):
    print(
        f"{name:13s} MSE {sm.mse_loss(other, fixed).item():.4f}   "
        f"LNCC loss {sm.lncc_loss(other, fixed, window=window).item():.4f}"
    )

# %% [markdown]
# ### Smoothness: the l2 gradient penalty
#
# A field that matches intensities perfectly can still be anatomically absurd, tearing and folding tissue. The
# regulariser penalises the squared spatial derivatives of each component $u_k$ of the field, with forward
# differences, averaged over pixels and over the two axes:
#
# $$
# \mathcal{L}_{reg}(\phi) = \frac{1}{2} \sum_{d \in \{\text{rows}, \text{cols}\}} \frac{1}{|\Omega_d|}
# \sum_{p} \sum_{k} \big(u_k(p + e_d) - u_k(p)\big)^2 ,
# $$
#
# where $\Omega_d$ is the set of pixels that have a neighbour along $d$ (and the mean runs over channels $k$ too).


# %%
def grad_l2_naive(flow: torch.Tensor) -> float:
    """Smoothness penalty of one field (2, H, W) with explicit forward differences."""
    channels, h, w = flow.shape
    f = flow.tolist()
    rows = sum(
        (f[k][i + 1][j] - f[k][i][j]) ** 2
        for k in range(channels)
        for i in range(h - 1)
        for j in range(w)
    )
    cols = sum(
        (f[k][i][j + 1] - f[k][i][j]) ** 2
        for k in range(channels)
        for i in range(h)
        for j in range(w - 1)
    )
    return (rows / (channels * (h - 1) * w) + cols / (channels * h * (w - 1))) / 2


# smooth_field(max_disp, seed=seed): chapter 2's smooth random field (1, 2, H, W),
# largest |component| max_disp pixels
smooth_field = partial(
    book.smooth_field,
    (H, W),
    grid=(10, 8),
    cubic=True,
    draw_dtype=torch.float32,
    seed=seed,
    device=device,
)


# %% tags=["nbval-check-output"]
smooth = smooth_field(4.0)
noisy = 4.0 * (
    2 * torch.rand(1, 2, H, W, generator=torch.Generator().manual_seed(seed)) - 1
).to(device)
for name, f in (("smooth field", smooth), ("noisy field", noisy)):
    reg = grad_l2_naive(f[0].cpu())
    assert abs(reg - sm.grad_l2_loss(f).item()) < 1e-4 * max(1.0, reg)
    print(f"{name:12s} max |u| = {f.abs().max().item():.3g} px, L_reg = {reg:.4g}")

# %% [markdown]
# Both fields move pixels by up to 4 pixels; the noisy one costs over a thousand times more. The whole of eq. 9 is
# `sm.registration_loss(warped, fixed, flow, similarity="lncc", alpha=2.0)`:

# %% tags=["nbval-check-output"]
warped = sm.warp(moving, smooth)
total = sm.registration_loss(warped, fixed, smooth, similarity="lncc", alpha=alpha)
assert torch.isclose(
    total, sm.lncc_loss(warped, fixed) + alpha * sm.grad_l2_loss(smooth)
)
print("eq. 9 with LNCC, alpha =", alpha, ":", f"{total.item():.4f}")

# %% [markdown]
# ### What the similarity terms see: a loss landscape
#
# Training moves the field downhill on $\mathcal{L}_{sim}$. To see the landscape on a real image, shift a copy of
# the fixed slice by 3 pixels along the columns, then try every constant column shift from -12 to +12 pixels as a
# "field" and record both losses. Both are lowest at the shift that undoes the displacement; LNCC's valley is
# narrower, because it compares $9 \times 9$ patterns rather than the whole image.


# %%
def constant_field(dc: float) -> torch.Tensor:
    f = torch.zeros(1, 2, H, W, device=device)
    f[:, 1] = dc
    return f


shifted = sm.warp(fixed, constant_field(-3.0))  # content moved 3 px to the right
shifts = torch.arange(-12, 12.5, 0.5)
fields = torch.zeros(len(shifts), 2, H, W, device=device)
fields[:, 1] = shifts.view(-1, 1, 1).to(
    device
)  # one constant field per candidate, as a batch
candidates = sm.warp(shifted.expand(len(shifts), -1, -1, -1), fields)
targets = fixed.expand(len(shifts), -1, -1, -1)
# per-pair MSE and LNCC loss
mse_curve = ((candidates - targets) ** 2).mean(dim=(1, 2, 3)).cpu()
lncc_curve = -sm.local_ncc(candidates, targets, window=window).mean(dim=(1, 2, 3)).cpu()

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
axes[0].imshow(torch.cat([shifted, fixed], dim=-1)[0, 0].cpu(), cmap="gray")
axes[0].set_title("moving (fixed shifted 3 px right) | fixed")
axes[0].set_xlabel("column (pixel)")
axes[0].set_ylabel("row (pixel)")
axes[1].plot(shifts, mse_curve / mse_curve.max(), label="MSE (scaled to max 1)")
axes[1].plot(shifts, lncc_curve, label="LNCC loss")
axes[1].axvline(3, color="gray", ls="--", lw=0.8, label="true shift (+3)")
axes[1].set_xlabel("candidate constant column displacement (pixels)")
axes[1].set_ylabel("loss")
axes[1].set_title("similarity landscapes")
axes[1].legend()
plt.show()

# %% [markdown]
# ## Dice: do the labels overlap?
#
# Intensities can match for the wrong reason, so the paper scores registration on anatomical labels: warp the
# moving labels with the field (nearest neighbour, chapter 2) and measure their overlap with the fixed labels,
# for each label $l$:
#
# $$
# \mathrm{Dice}_l(A, B) = \frac{2\, |A_l \cap B_l|}{|A_l| + |B_l|} \in [0, 1],
# $$
#
# with $A_l$ the set of pixels labelled $l$ in $A$. 1 is perfect overlap. (The paper's Sec. IV-B says "a lower Dice
# index indicates better model performance"; that is a slip, its tables rank higher Dice as better.) The library's
# reference counts the pixels of one label, straight from the formula:

# %%
Code(inspect.getsource(dice_naive), language="python")

# %% tags=["nbval-check-output"]
tissues = [1, 2, 3]
naive = [dice_naive(moving_labels.cpu(), fixed_labels.cpu(), lab) for lab in tissues]
library = sm.dice(moving_labels, fixed_labels, labels=tissues)[0]  # (B, L) -> (L,)
assert torch.allclose(torch.tensor(naive), library.cpu().double().float(), atol=1e-6)
for lab, d in zip(("CSF/other", "grey matter", "white matter"), naive):
    print(f"Dice before registration, {lab:12s} {d:.4f}")

# %%
fa = (fixed_labels[0, 0] == 2).cpu()
ma = (moving_labels[0, 0] == 2).cpu()
overlap = torch.zeros(H, W, 3)
overlap[fa & ma] = torch.tensor([1.0, 1.0, 1.0])  # both: white
overlap[fa & ~ma] = torch.tensor([0.1, 0.6, 1.0])  # only fixed: blue
overlap[~fa & ma] = torch.tensor([1.0, 0.4, 0.1])  # only moving: orange
fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
axes[0].imshow(moving[0, 0].cpu(), cmap="gray")
axes[0].set_title("moving")
axes[1].imshow(fixed[0, 0].cpu(), cmap="gray")
axes[1].set_title("fixed")
axes[2].imshow(overlap)
axes[2].set_title(
    "grey matter: both (white), fixed only (blue),\n"
    f"moving only (orange); Dice = {naive[1]:.3f}"
)
for ax in axes:
    ax.set_xlabel("column (pixel)")
axes[0].set_ylabel("row (pixel)")
plt.show()

# %% [markdown]
# ## The Jacobian determinant: does the field fold?
#
# The mapping $p \mapsto p + u(p)$ is locally a linear map with matrix $J(p) = I + \nabla u(p)$. Its determinant
# says what happens to a small area around $p$: $\det J > 1$ expands, $0 < \det J < 1$ shrinks, and
# $\det J \le 0$ means the mapping turns the area inside out: the field **folds**, which no real anatomy does.
# In 2D, with $u = (u_0, u_1)$ along (rows, cols):
#
# $$
# \det J(p) = \Big(1 + \frac{\partial u_0}{\partial r}\Big)\Big(1 + \frac{\partial u_1}{\partial c}\Big)
# - \frac{\partial u_0}{\partial c}\,\frac{\partial u_1}{\partial r} .
# $$
#
# We estimate the derivatives with central differences, $\partial u / \partial r \approx (u(r+1) - u(r-1))/2$, and
# one-sided differences on the border rows and columns, as the library does. The library's reference, one
# 2 x 2 matrix at a time:

# %%
Code(inspect.getsource(jacobian_naive), language="python")

# %% tags=["nbval-check-output"]
folding = smooth_field(fold_strength)
det_naive = jacobian_naive(folding.cpu().double())[0]  # (H, W)
det_lib = sm.jacobian_determinant(folding.double())[0].cpu()
assert torch.allclose(det_naive, det_lib, atol=1e-10)
print(
    "max |naive - library| < 1e-10:", (det_naive - det_lib).abs().max().item() < 1e-10
)

# %% [markdown]
# Three fields whose answers we know:
#
# - zero displacement: $J = I$, so $\det J = 1$ everywhere;
# - an affine field $u(p) = A p + t$: $\nabla u = A$ everywhere, so $\det J = \det(I + A)$, exactly (the differences
#   of a linear function are exact, even one-sided ones);
# - the smooth random field above at 20 pixels: strong enough that the grid of chapter 2 crossed itself, so some
#   determinants must be negative.

# %% tags=["nbval-check-output"]
zero = torch.zeros(1, 2, H, W, device=device, dtype=torch.float64)
assert torch.equal(
    sm.jacobian_determinant(zero),
    torch.ones(1, H, W, device=device, dtype=torch.float64),
)
A = torch.tensor([[0.10, -0.30], [0.20, 0.05]], dtype=torch.float64)  # d u_k / d x_j
grid = sm.identity_grid(
    (H, W), dtype=torch.float64
)  # (2, H, W): row and column of every pixel
affine = (
    torch.einsum("kj,jhw->khw", A, grid) + torch.tensor([2.0, -1.0]).view(2, 1, 1)
)[None].to(device)
expected = torch.linalg.det(torch.eye(2, dtype=torch.float64) + A).item()
assert torch.allclose(
    sm.jacobian_determinant(affine),
    torch.full((1, H, W), expected, dtype=torch.float64, device=device),
)
print("zero field: det J = 1 everywhere")
print("affine field: det J =", f"{expected:.4f}", "everywhere = det(I + A)")
print(
    f"random field, {fold_strength:g} px: smallest det J =",
    f"{det_lib.min().item():.3f}",
)

# %% [markdown]
# ## Folding ratio
#
# The paper's second metric is the share of pixels where the field folds, "% of $|J_\phi| \le 0$". The library's
# `folding_ratio` returns it in percent (0 to 100), optionally only inside a mask such as the brain.

# %% tags=["nbval-check-output"]
naive_ratio = 100.0 * (det_naive <= 0).double().mean().item()
assert abs(naive_ratio - sm.folding_ratio(folding).item()) < 1e-4
brain_mask = fixed_labels > 0
print("folding ratio, whole image:", f"{naive_ratio:.4g} %")
print(
    "folding ratio, inside the brain:",
    f"{sm.folding_ratio(folding, mask=brain_mask).item():.4g} %",
)
for s in (4.0, 8.0, 12.0, 16.0, 20.0):
    print(
        f"  max |u| = {s:4.1f} px -> {sm.folding_ratio(smooth_field(s)).item():.4g} % "
        "folded"
    )

# %% [markdown]
# The same random pattern folds only once it is strong enough: a smooth field with small displacements has
# $\det J$ close to 1 everywhere. A figure of the Jacobian map, with a diverging colour map centred at 1 (no area
# change, white), shrinking in blue, expanding in red, and the folded pixels outlined in black on the warped brain:

# %%
det_map = det_lib.numpy()
fig, axes = plt.subplots(1, 2, figsize=(12, 5))
im = axes[0].imshow(
    det_map,
    cmap="RdBu_r",
    norm=TwoSlopeNorm(
        vmin=min(det_map.min(), 0.0), vcenter=1.0, vmax=max(det_map.max(), 2.0)
    ),
)
axes[0].contour(det_map <= 0, levels=[0.5], colors="black", linewidths=1.0)
axes[0].set_title(f"det J of a random field, max |u| = {fold_strength:g} px")
fig.colorbar(im, ax=axes[0], fraction=0.046, label="det J (1 = area preserved)")
axes[1].imshow(sm.warp(fixed, folding)[0, 0].cpu(), cmap="gray")
axes[1].imshow(
    np.ma.masked_where(det_map > 0, det_map), cmap=ListedColormap(["red"]), alpha=0.8
)
axes[1].set_title(
    f"warped fixed image; folded pixels in red ({sm.folding_ratio(folding).item():.2f} "
    "%)"
)
for ax in axes:
    ax.set_xlabel("column (pixel)")
    ax.set_ylabel("row (pixel)")
plt.show()

# %% [markdown]
# ## Exercises
#
# 1. LNCC ignores affine intensity changes within a window. Check that
#    `sm.lncc_loss(2.5 * fixed + 0.3, fixed)` is close to -1 except in flat windows, while the MSE is huge. Why is
#    the loss not exactly -1 (hint: look at `sm.local_ncc` on the background)?
#
# ````{dropdown} Solution
# ```python
# cc = sm.local_ncc(2.5 * fixed + 0.3, fixed)
# print(sm.lncc_loss(2.5 * fixed + 0.3, fixed).item(), sm.mse_loss(2.5 * fixed + 0.3, fixed).item())
# print("mean cc where the fixed window is not flat:", cc[sm.local_ncc(fixed, fixed) > 0.5].mean().item())
# ```
# In the flat black background both windows have zero variance, so $\mathrm{cc} = 0 / \varepsilon = 0$ there. And
# windows reaching past the image border see zero padding, which the shift by 0.3 turns into a visible edge.
# ````
#
# 2. Find, by bisection, the smallest strength at which `smooth_field(strength)` folds at least one pixel.
#
# ````{dropdown} Solution
# ```python
# lo, hi = 0.0, fold_strength  # folds at hi, not at lo
# for _ in range(20):
#     mid = (lo + hi) / 2
#     lo, hi = (lo, mid) if sm.folding_ratio(smooth_field(mid)).item() > 0 else (mid, hi)
# print(f"folding starts near max |u| = {hi:.2f} px")
# ```
# For a field $s\,v$ with fixed shape $v$, $\det(I + s \nabla v)$ first reaches 0 where an eigenvalue of
# $\nabla v$ is most negative: the threshold is $s = -1/\lambda_{\min}$, so doubling the smoothness of the pattern
# doubles the strength it can take before folding.
# ````

# %% [markdown]
# ## What we built
#
# - Eq. 9 from its parts: `mse_loss`, `local_ncc`/`lncc_loss` (invariant to local brightness changes),
#   `grad_l2_loss`, and `registration_loss`, each equal to its loop version.
# - The paper's metrics: `dice` per label, `jacobian_determinant` (1 for no change, $\det(I + A)$ for affine
#   fields, $\le 0$ where a field folds) and `folding_ratio` in percent.
#
# [Next: 4. Encoders](04_encoders.ipynb)
