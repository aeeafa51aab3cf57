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
# # 5. The cost volume
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/searchmorph-book/searchmorph-book/blob/main/notebooks/05_cost_volume.ipynb)
#
# The correlation layer compares every pixel of $h(M)$ with every pixel of $h(F)$ and stores all the answers in
# one four-dimensional array, the cost volume (Sec. III-B, eq. 1-2). Everything the search module reads later is
# a value of this volume or of its pooled copies. In this chapter we compute eq. 1 with four loops, check the
# library's `cost_volume` against it, measure how fast the volume's memory grows with the image size (the fourth
# power of the side), and look at one pixel's row of the volume on a real brain pair, with hand-made features so
# that its peak means something before any network is trained.

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
import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from IPython.display import Code

import searchmorph_lite as sm
from searchmorph_lite.book import patch_features, setup, you_are_here
from searchmorph_lite.data import load_dataset

# %% tags=["parameters"]
seed = 0
device = "auto"
# brain pair for the figure (features at 48 x 40); the GPU scale of every chapter is in
# configs/book_gpu.yaml
image_size = (96, 80)
pair_index = 1  # brain2d test pair: its moving slice is 2 mm from the fixed one
# brain2d option, in pixels at 192 x 160 (default 8): larger deformations to find
max_displacement = 32.0
patch = 9  # side of the normalised patches we use as hand-made features
# measure the volume's bytes for images up to this side; larger ones are computed only
measure_up_to = 128

# %%
device = setup(seed, device)  # seeds torch; "auto": CUDA when present, else CPU

# %% tags=["remove-input"]
you_are_here("cost volume")

# %% [markdown]
# ## Eq. 1-2: every pixel against every pixel
#
# With feature maps $h(M), h(F) \in \mathbb{R}^{H \times W \times D}$ (here $H, W$ are the *feature* map's size,
# half the image's), the paper defines
#
# $$C_{ijkl} = \sum_d h(M)_{i,j,d} \cdot h(F)_{k,l,d} \qquad (1)$$
#
# $$C(h(M), h(F)) \in \mathbb{R}^{H \times W \times H \times W} \qquad (2)$$
#
# The first two indices walk over the moving map, the last two over the fixed map: $C_{ij\cdot\cdot}$ is an
# $H \times W$ image that says how much moving pixel $(i, j)$ looks like each fixed pixel. Four loops and a dot
# product, in our layout (batch first, channels before space). This loop lives in the library's
# `searchmorph_lite.brute_force`, the brute-force versions the library's tests check against, so the book and
# the tests prove the same thing; here is its source:

# %%
from searchmorph_lite.brute_force import cost_volume_naive

Code(inspect.getsource(cost_volume_naive), language="python")


# %% [markdown]
# The library computes the same thing as one matrix product: flatten space, then
# $C = h(M)^\top h(F)$ for a $D \times HW$ matrix on each side (`torch.einsum("bdm,bdn->bmn", ...)`), and reshape.
# It can also divide by $\sqrt{D}$ (`normalize=True`), as RAFT does. The paper does not scale; SearchMorph's
# config scales by default (`SearchMorphConfig(normalize_correlation=True)`), for the reason shown after the proof.

# %%
h_m = torch.randn(2, 4, 5, 4)  # batch 2, D = 4 channels, a 5 x 4 feature map
h_f = torch.randn(2, 4, 5, 4)
naive = cost_volume_naive(h_m, h_f)
assert torch.allclose(naive, sm.cost_volume(h_m, h_f), atol=1e-6)
assert torch.allclose(
    naive / math.sqrt(4), sm.cost_volume(h_m, h_f, normalize=True), atol=1e-6
)
err = (naive - sm.cost_volume(h_m, h_f)).abs().max().item()
print("max |naive - library| =", f"{err:.2e}")

# %% tags=["nbval-check-output"]
print("volume shape (B, H, W, H, W):", tuple(sm.cost_volume(h_m, h_f).shape))

# %% [markdown]
# **Why divide by $\sqrt D$.** A correlation is a sum of $D$ products. For features with unit variance the
# products have unit variance too, so the sum's spread grows like $\sqrt D$, and so would the inputs of the GRU
# that reads these values. Dividing by $\sqrt D$ keeps them near 1 whatever the feature width (the same argument as
# attention's $1/\sqrt{d_k}$). With the paper's $D = 4$ the factor is only 2.

# %%
for d in (4, 64, 256):
    a, b = torch.randn(1, d, 16, 16), torch.randn(1, d, 16, 16)
    raw, scaled = (
        sm.cost_volume(a, b).std().item(),
        sm.cost_volume(a, b, normalize=True).std().item(),
    )
    print(
        f"D = {d:>3}: std of C = {raw:6.2f} (sqrt(D) = {math.sqrt(d):5.2f}), after / "
        f"sqrt(D): {scaled:.2f}"
    )

# %% [markdown]
# **Which map comes first.** Eq. 1 puts $h(M)$ first. SearchMorph's field lives on the fixed image's grid
# (`warp` samples $M$ at $p + \phi(p)$ for every fixed pixel $p$), so the model asks, for each *fixed* pixel,
# where it is in $M$, and calls `cost_volume(h_f, h_m)`. The two orders are transposes of each other:

# %% tags=["nbval-check-output"]
swapped = sm.cost_volume(h_f, h_m)
print(
    "C(h(F), h(M)) is C(h(M), h(F)) with its two pixel pairs swapped:",
    torch.allclose(swapped, sm.cost_volume(h_m, h_f).permute(0, 3, 4, 1, 2)),
)

# %% [markdown]
# In this chapter and the next two we keep the paper's order, $h(M)$ first.
#
# ## What it costs: the fourth power of the side
#
# An $N \times N$ image gives $\frac N2 \times \frac N2$ features and a volume of $(\frac N2)^4$ numbers: double
# the side and the volume grows 16 times. We compute the float32 bytes for the paper's $D = 4$ features, and for
# the smaller sizes also build the volume and ask the tensor for its `nbytes`.

# %% tags=["nbval-check-output"]
MB = 2**20
sizes = [64, 96, 128, 160, 192]
rows = []
print(
    f"{'image':>9}{'features':>14}{'image MiB':>11}{'features MiB':>14}"
    f"{'volume MiB':>12}{'measured MiB':>14}"
)
for n in sizes:
    h = n // 2
    image_b, feat_b, vol_b = 4 * n * n, 4 * 4 * h * h, 4 * h**4
    measured = ""
    if n <= measure_up_to:
        f = torch.zeros(1, 4, h, h, device=device)
        measured_b = sm.cost_volume(f, f).nbytes
        assert measured_b == vol_b
        measured = f"{measured_b / MB:.2f}"
    rows.append((n, image_b, feat_b, vol_b))
    print(
        f"{f'{n} x {n}':>9}{f'{h} x {h} x 4':>14}{image_b / MB:>11.3f}"
        f"{feat_b / MB:>14.3f}"
        f"{vol_b / MB:>12.2f}"
        f"{measured:>14}"
    )

# %% [markdown]
# The images are tiny; the volume is not. At the paper's brain size, 192 x 160, the features are 96 x 80 and one
# pair's volume holds $7680^2 \approx 59$ million numbers, 225 MiB; a batch of 8 needs 1.8 GiB before the pyramid
# (next chapter, +33 %) and before autograd keeps anything for the backward pass. In 3D (a 160 x 192 x 224
# volume, features at half resolution) one volume would need about 2.7 TiB. This is why the library's default
# path never builds it (chapter 7).

# %% tags=["nbval-check-output"]
paper = 4 * (96 * 80) ** 2
print(
    f"192 x 160 image, one pair: {paper / MB:.1f} MiB; batch of 8: "
    f"{8 * paper / 2**30:.2f} GiB"
)
print(f"3D, 160 x 192 x 224: {4 * (80 * 96 * 112) ** 2 / 2**40:.2f} TiB")

# %%
n = torch.tensor([r[0] for r in rows], dtype=torch.float64)
fig, ax = plt.subplots(figsize=(6.5, 4.5))
# the image (1 channel) and the features (4 channels on a quarter of the pixels) have
# the same size: one line
for col, label, marker in [
    (1, "image (1 ch) = features (4 ch at 1/2 res)", "o"),
    (3, "cost volume (H, W, H, W)", "^"),
]:
    ax.loglog(n, [r[col] / MB for r in rows], marker=marker, label=label)
ax.loglog(
    n[n <= measure_up_to],
    [r[3] / MB for r in rows if r[0] <= measure_up_to],
    "k*",
    ms=12,
    label="measured (tensor.nbytes)",
)
ax.set_xticks(sizes, [str(s) for s in sizes])
ax.set_xticks([], minor=True)
ax.set_xlabel("image side N (pixels)")
ax.set_ylabel("float32 memory (MiB)")
ax.set_title("Cost volume grows like N^4, images like N^2")
ax.legend()
plt.show()

# %% [markdown]
# ## One row of the volume on a real brain pair
#
# An untrained encoder's features are not yet descriptors (chapter 4), so to see what a *good* volume looks like
# we hand-make features: each pixel's $9 \times 9$ neighbourhood, minus its mean, scaled to unit length. The
# inner product of two such vectors is the normalised cross-correlation (NCC) of the two patches, a classical
# similarity that ignores brightness and contrast changes. We compute them at half resolution, where SearchMorph's
# features live. Chapters 6 and 9 use the same features, so they are in the library, `searchmorph_lite.book`:

# %%
Code(inspect.getsource(patch_features), language="python")

# %% [markdown]
# The pair comes from `brain2d` with its ground truth: the moving image was made as `warp(source, flow)`, so
# moving pixel $p$ shows the anatomy at $p + \text{flow}(p)$ of the source slice, 2 mm from the fixed slice. That
# point is the true match of $p$ in $F$ (up to the 2 mm of anatomy).

# %%
dataset = load_dataset(
    "brain2d",
    "test",
    num_pairs=pair_index + 1,
    image_size=image_size,
    max_displacement=max_displacement,
)
item = dataset.sample(pair_index, with_flow=True)
moving = F.avg_pool2d(item["moving"][None], 2).to(device)  # half resolution, like h(M)
fixed = F.avg_pool2d(item["fixed"][None], 2).to(device)
# in half-resolution pixels
true_flow = F.avg_pool2d(item["flow"][None], 2).to(device) / 2
h_m, h_f = patch_features(moving, patch), patch_features(fixed, patch)
volume = sm.cost_volume(h_m, h_f)
print("features", tuple(h_m.shape), "-> volume", tuple(volume.shape))

# %%
queries = [
    (31, 22),
    (14, 21),
]  # (row, col) on the 48 x 40 moving grid: ventricle edge, front of the ventricles
fig, axes = plt.subplots(1, 4, figsize=(15, 4.6))
axes[0].imshow(moving[0, 0].cpu(), cmap="gray")
axes[0].set_title("moving M (1/2 res), query pixels")
axes[1].imshow(fixed[0, 0].cpu(), cmap="gray")
axes[1].set_title("fixed F (1/2 res), true matches")
for n, (i, j) in enumerate(queries):
    match = (i + true_flow[0, 0, i, j].item(), j + true_flow[0, 1, i, j].item())
    row = volume[0, i, j].cpu()
    peak = divmod(row.argmax().item(), row.shape[1])
    axes[0].plot(j, i, "r+", ms=14, mew=2)
    axes[0].annotate(str(n + 1), (j + 1.5, i - 1), color="r")
    axes[1].plot(match[1], match[0], "o", mfc="none", mec="c", ms=12, mew=2)
    im = axes[2 + n].imshow(row, cmap="magma", vmin=-1, vmax=1)
    axes[2 + n].plot(
        match[1], match[0], "o", mfc="none", mec="c", ms=12, mew=2, label="true match"
    )
    axes[2 + n].plot(
        peak[1], peak[0], "x", c="lime", ms=10, mew=2, label="largest value"
    )
    axes[2 + n].set_title(f"C[{i}, {j}, :, :] for query {n + 1}")
    axes[2 + n].legend(loc="upper right", fontsize=8)
    fig.colorbar(im, ax=axes[2 + n], shrink=0.8, label="correlation (patch NCC)")
for ax in axes:
    ax.set_xlabel("column (pixels at 1/2 res)")
axes[0].set_ylabel("row (pixels at 1/2 res)")
plt.tight_layout()
plt.show()

# %% [markdown]
# Each correlation map is bright wherever the fixed image has a patch like the query's. For query 1, on the edge
# of a ventricle, the largest value sits on the true match and stands out. Query 2's map is much flatter: its
# patch is mostly smooth tissue, many fixed patches resemble it, and the largest value lies far from the true
# match, although the true match is still bright. The brain is nearly symmetric and full of repeated edges. Over
# all brain pixels, the largest value of the row lands within 1.5 pixels of the true match for most, not all:

# %%
h, w = volume.shape[1:3]
true_pos = sm.identity_grid((h, w), device=device) + true_flow[0]  # (2, h, w)
peak = volume[0].reshape(h, w, -1).argmax(dim=-1)
dist = ((peak // w - true_pos[0]) ** 2 + (peak % w - true_pos[1]) ** 2).sqrt()
brain = F.avg_pool2d(item["fixed_labels"][None].float(), 2)[0, 0].to(device) > 0.5
print(
    f"{patch} x {patch} patches: argmax within 1.5 px of the true match for "
    f"{(dist[brain] < 1.5).float().mean().item():.0%} of brain pixels"
)

# %% [markdown]
# That is the case for a *local* search: SearchMorph never takes the argmax over the whole map. It starts each
# pixel at its current estimate $p + \phi(p)$ and only looks at a small neighbourhood there (chapter 7), on a
# pyramid of blurred copies of the map (chapter 6) that see further without seeing everything.
#
# ## Exercises
#
# 1. Repeat the last measurement with 3 x 3 and 5 x 5 patches. Why do small patches find their match less
#    often?
#
# ````{dropdown} Solution
# ```python
# for size in (3, 5, 7, 9, 11):
#     vol = sm.cost_volume(patch_features(moving, size), patch_features(fixed, size))
#     peak = vol[0].reshape(h, w, -1).argmax(dim=-1)
#     dist = ((peak // w - true_pos[0]) ** 2 + (peak % w - true_pos[1]) ** 2).sqrt()
#     print(size, f"{(dist[brain] < 1.5).float().mean().item():.0%}")
# ```
# A 3 x 3 patch (9 numbers, 8 after removing the mean) describes little more than the local gradient, and
# thousands of fixed pixels have a similar one; the success rate drops to well under a quarter. Larger patches are
# more distinctive, until they become so large that the deformation changes them (and they straddle the skull).
# A trained encoder learns this trade-off, with only 4 channels, by summarising a large receptive field.
# ````
#
# 2. A GPU has 16 GiB. From which square image size does a batch of 8 cost volumes (float32, features at 1/2
#    resolution) no longer fit, ignoring everything else?
#
# ```{dropdown} Solution
# $8 \cdot 4 \cdot (N/2)^4 \le 16 \cdot 2^{30}$ gives $N/2 \le (2^{29})^{1/4} \approx 152$, so $N \approx 304$
# pixels: already at 320 x 320 the volumes alone fill the card.
# ```
#
# ## What we built
#
# Eq. 1-2 as four loops, equal to `sm.cost_volume` (one matrix product), with the optional $1/\sqrt D$ scaling.
# The memory law: $(N/2)^4$ floats for an $N \times N$ image, 225 MiB per pair at the paper's 192 x 160.
# A real correlation map, whose peak finds the true match with good features, but not uniquely.
#
# [Next: 6. The correlation pyramid](06_correlation_pyramid.ipynb)
