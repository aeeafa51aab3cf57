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
# # 6. The correlation pyramid
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/searchmorph-book/searchmorph-book/blob/main/notebooks/06_correlation_pyramid.ipynb)
#
# A search that only looks a few pixels around its current estimate cannot find a match that is twenty pixels
# away, and a search over the whole map finds the wrong match (chapter 5). SearchMorph's answer is RAFT's: keep
# the moving pixels at full feature resolution, but blur and shrink each pixel's correlation map, by average
# pooling the volume's last two axes with kernels 1, 2, 4 and 8 (Sec. III-B). On the coarse levels the same
# small search window covers a large area. This chapter builds the pyramid with loops, checks the library's
# `correlation_pyramid`, looks at what happens to sizes that do not divide, and shows one pixel's map on the four
# levels of a real brain pair.

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
import torch
import torch.nn.functional as F

import searchmorph_lite as sm
from searchmorph_lite.book import patch_features, setup, you_are_here
from searchmorph_lite.data import load_dataset

# %% tags=["parameters"]
seed = 0
device = "auto"
# brain pair for the figure (features at 48 x 40); the GPU scale of every chapter is in
# configs/book_gpu.yaml
image_size = (96, 80)
pair_index = 1  # brain2d test pair (its moving slice is 2 mm from the fixed one)
max_displacement = 32.0  # brain2d option, in pixels at 192 x 160 (default 8)
patch = 9  # hand-made features: normalised 9 x 9 patches (chapter 5)
levels = 4  # the paper's four kernels 1, 2, 4, 8
radius = 3  # the paper's search radius for brain MR

# %%
device = setup(seed, device)  # seeds torch; "auto": CUDA when present, else CPU


# %% tags=["remove-input"]
you_are_here("pyramid")

# %% [markdown]
# ## Pooling the fixed axes
#
# The paper pools "the last two dimensions of $C(h(M), h(F))$ with convolution kernels 1, 2, 4, 8" to get
# $\{C^0, C^1, C^2, C^3\}$. As RAFT does, we read this as average pooling with kernel and stride $2^s$:
#
# $$C^s_{i,j,k,l} = \frac{1}{4^s} \sum_{a=0}^{2^s-1} \sum_{b=0}^{2^s-1} C_{i,\,j,\,2^s k + a,\,2^s l + b},
#   \qquad C^s \in \mathbb{R}^{H \times W \times \lfloor H/2^s \rfloor \times \lfloor W/2^s \rfloor},
#   \qquad s = 0, 1, 2, 3.$$
#
# Only the fixed axes $(k, l)$ shrink; every moving pixel $(i, j)$ keeps its own map, now at four resolutions.
# With loops:


# %%
def pyramid_naive(volume: torch.Tensor, levels: int = 4) -> list[torch.Tensor]:
    """Level s (B, H, W, H // 2^s, W // 2^s): the fixed axes averaged over 2^s x 2^s
    blocks, with loops."""
    out = []
    for s in range(levels):
        k = 2**s
        # floor: trailing rows/columns are dropped
        hs, ws = (volume.shape[3] // k, volume.shape[4] // k)
        level = torch.zeros(*volume.shape[:3], hs, ws, dtype=volume.dtype)
        for m in range(hs):
            for n in range(ws):
                level[..., m, n] = volume[
                    ..., m * k : (m + 1) * k, n * k : (n + 1) * k
                ].mean(dim=(-2, -1))
        out.append(level)
    return out


# %% [markdown]
# The proof, on a volume of odd size, 13 x 11 feature pixels, so that no level divides evenly:

# %%
h_m, h_f = torch.randn(2, 4, 13, 11), torch.randn(2, 4, 13, 11)
volume = sm.cost_volume(h_m, h_f)
naive, library = pyramid_naive(volume, levels), sm.correlation_pyramid(volume, levels)
for s in range(levels):
    assert torch.allclose(naive[s], library[s], atol=1e-6)
err = max((a - b).abs().max().item() for a, b in zip(naive, library))
print("max |naive - library| =", f"{err:.2e}")

# %% tags=["nbval-check-output"]
for s, level in enumerate(library):
    print(f"C^{s}: kernel {2**s}, shape {tuple(level.shape)}")

# %% [markdown]
# The library does it with one call to `avg_pool2d` on the volume reshaped to $(B H W, 1, H, W)$: each moving
# pixel's map is an image, pooled like any other.
#
# ## Odd sizes drop the remainder
#
# 13 rows do not split into blocks of 8: level 3 averages rows 0-7 and drops rows 8-12 (and columns 8-10),
# exactly as `avg_pool2d` does. Changing the dropped entries changes level 0 but not level 3:

# %% tags=["nbval-check-output"]
changed = volume.clone()
changed[..., 8:, :] += 100.0  # fixed rows 8-12
changed[..., :, 8:] += 100.0  # fixed columns 8-10
new = sm.correlation_pyramid(changed, levels)
for s in range(levels):
    print(
        f"C^{s} unchanged after editing fixed rows 8-12 and columns 8-10: "
        f"{torch.equal(new[s], library[s])}"
    )

# %% [markdown]
# A match in a dropped strip is invisible on that level. SearchMorph avoids the question: the model asks for
# images divisible by 16 (`SearchMorph(...).size_multiple`), so the half-resolution features divide by 8.
# The pyramid costs little on top of the volume: $1 + \frac14 + \frac1{16} + \frac1{64} \approx 1.33$ times its
# memory.
#
# ## One pixel's map on the four levels
#
# We rebuild chapter 5's brain pair with its hand-made features (normalised 9 x 9 patches at half resolution,
# whose correlation is the patch NCC: `searchmorph_lite.book.patch_features`) and look at two moving pixels on
# each level: $(12, 9)$ on the edge of the frontal cortex, and chapter 5's query 1, $(31, 22)$, on the edge of a
# ventricle.


# %%
dataset = load_dataset(
    "brain2d",
    "test",
    num_pairs=pair_index + 1,
    image_size=image_size,
    max_displacement=max_displacement,
)
item = dataset.sample(pair_index, with_flow=True)
moving = F.avg_pool2d(item["moving"][None], 2).to(device)
fixed = F.avg_pool2d(item["fixed"][None], 2).to(device)
# ground truth, in half-resolution pixels
true_flow = F.avg_pool2d(item["flow"][None], 2).to(device) / 2
pyramid = sm.correlation_pyramid(
    sm.cost_volume(patch_features(moving, patch), patch_features(fixed, patch)), levels
)
print([tuple(level.shape[3:]) for level in pyramid])

# %% [markdown]
# Where does a feature-pixel position $x$ fall on level $s$? The library, like RAFT, divides: $x / 2^s$. So in
# the figure each level is drawn in feature-pixel units, with coarse pixel $k$ centred at $2^s k$. The search
# module's first step starts at $p$ itself ($\phi_0 = 0$) and reads a diamond of radius $r = 3$ around it *in
# each level's own pixels* (chapter 7); we draw those positions too. Averages shrink towards 0 on coarse levels,
# so each level gets its own colour scale.


# %%
def draw_level(ax, level_map: torch.Tensor, s: int, centre, match, r: int, lim: float):
    """Level-s map drawn in feature-pixel units, the radius-r diamond around centre,
    and the true match."""
    k = 2**s
    hs, ws = level_map.shape
    im = ax.imshow(
        level_map.cpu(),
        cmap="magma",
        vmin=-lim,
        vmax=lim,
        extent=(-0.5 * k, (ws - 0.5) * k, (hs - 0.5) * k, -0.5 * k),
    )
    d = sm.diamond_offsets(r)
    ax.plot(
        centre[1] + k * d[:, 1],
        centre[0] + k * d[:, 0],
        ".",
        c="lime",
        ms=4,
        label=f"diamond, r = {r}",
    )
    ax.plot(
        match[1], match[0], "o", mfc="none", mec="c", ms=12, mew=2, label="true match"
    )
    ax.set_xlim(-4.5, 44.5), ax.set_ylim(52.5, -4.5)
    return im


# %%
queries = [(12, 9), (31, 22)]
fig, axes = plt.subplots(
    2, levels, figsize=(3.6 * levels, 8.4), constrained_layout=True
)
for s in range(levels):
    lim = max(pyramid[s][0, i, j].abs().max().item() for i, j in queries)
    for row, (i, j) in enumerate(queries):
        match = (i + true_flow[0, 0, i, j].item(), j + true_flow[0, 1, i, j].item())
        im = draw_level(
            axes[row, s], pyramid[s][0, i, j], s, (i, j), match, radius, lim
        )
        axes[row, s].set_title(
            f"pixel {(i, j)}, $C^{s}$: kernel {2**s}, {tuple(pyramid[s].shape[3:])}",
            fontsize=10,
        )
        axes[row, s].set_xlabel("column (feature pixels)")
    fig.colorbar(
        im,
        ax=list(axes[:, s]),
        orientation="horizontal",
        shrink=0.8,
        label=f"$C^{s}$: reach ±{radius * 2**s} feature px",
    )
    axes[0, s].legend(loc="lower left", fontsize=7) if s == 0 else None
for row in range(2):
    axes[row, 0].set_ylabel("row (feature pixels)")
fig.suptitle(
    "Two moving pixels' correlation maps on the four pyramid levels (patch NCC, "
    "averaged)"
)
plt.show()

# %% [markdown]
# Each level is a blurred, smaller copy of the one before, and the diamond always has the same 25 positions. But a
# level-$s$ position is $2^s$ feature pixels ($2^{s+1}$ image pixels) wide, so the same radius reaches
# $\pm 3, \pm 6, \pm 12, \pm 24$ feature pixels (the colour bars' labels): "a larger receptive field in lower
# scales" (Sec. III-C).
#
# The two pixels show what the levels are good for. The cortex pixel sits on a large structure, the brain's
# outline: every level, even the 6 x 5 one, is brightest around its match. The ventricle pixel's match is a sharp
# peak in a neighbourhood of negative correlations (just beside an edge, the patch sees the opposite edge), and
# averaging 4 x 4 or 8 x 8 blocks washes it out. Fine levels say precisely where a match is, if it is near;
# coarse levels say roughly where it is, if it belongs to something large. The iterator sees all four at once and
# learns which to trust; trained features, unlike our patches, are smooth enough to survive some pooling.

# %%
for i, j in queries:
    match = (i + true_flow[0, 0, i, j].item(), j + true_flow[0, 1, i, j].item())
    found = []
    for s, level in enumerate(pyramid):
        m = level[0, i, j]
        block = divmod(m.argmax().item(), m.shape[1])
        found.append(block == (int(match[0] // 2**s), int(match[1] // 2**s)))
    print(
        f"pixel {(i, j)}: the brightest block holds the true match on levels 0-3: "
        f"{found}"
    )

# %% [markdown]
# One more detail of the drawing: look at the outlines of the coarse maps. The 6 x 5 map of level 3 spans rows
# -4 to 44, not 0 to 48. Coarse pixel $k$ averages feature pixels $2^s k, \dots, 2^s k + 2^s - 1$, whose centre
# is $2^s k + (2^s - 1)/2$, but $x / 2^s$ puts it at $2^s k$, the block's first pixel. Every level $s$ is thus
# read by the search module $(2^s - 1)/2$ feature pixels up and to the left of its content: 0, 0.5, 1.5 and 3.5
# pixels. RAFT has the same convention (it divides its coordinates by $2^s$ and samples with
# `align_corners=True`); the shift is the same for every pixel and every image, so a trained network absorbs it.

# %% [markdown]
# ## Exercises
#
# 1. Pooling is linear. Show that level $s$ of the pyramid equals the correlation of $h(M)$ with the *pooled*
#    fixed features, $\sum_d h(M)_{i,j,d}\,\text{avgpool}_{2^s}(h(F))_{k,l,d}$, on the random 13 x 11 example.
#    Why does this matter for memory?
#
# ````{dropdown} Solution
# ```python
# for s in range(levels):
#     pooled = F.avg_pool2d(h_f, 2**s) if s else h_f
#     direct = torch.einsum("bdij,bdkl->bijkl", h_m, pooled)
#     assert torch.allclose(direct, library[s], atol=1e-5)
# ```
# Averaging products $h(M)_{ij} \cdot h(F)_{kl}$ over a block of $(k, l)$ is the product with the averaged
# $h(F)$, because $h(M)_{ij}$ does not depend on $(k, l)$. So the pyramid never needs the full volume: pool the
# fixed features (4 small images) and correlate. Chapter 7 pushes this one step further and also skips all the
# pairs the search never reads.
# ````
#
# 2. With the paper's sizes (features 96 x 80, 4 levels), how many numbers does the whole pyramid hold for one
#    pair, and how many does the diamond search with $r = 3$ read from it per iteration?
#
# ```{dropdown} Solution
# The volume holds $7680^2 = 58{,}982{,}400$ numbers; the pyramid $7680 \cdot (7680 + 1920 + 480 + 120) =
# 78{,}336{,}000$ (times 4 bytes: about 299 MiB). The search reads $4 \cdot 25 = 100$ values per moving pixel,
# $768{,}000$ in all: about 1 % of what was computed and stored.
# ```
#
# ## What we built
#
# The correlation pyramid as loops over $2^s \times 2^s$ blocks, equal to `sm.correlation_pyramid`.
# Odd sizes: the trailing rows and columns are dropped at each level, as `avg_pool2d` does.
# One pixel's map on four levels: a fixed radius reaches $r \cdot 2^s$ feature pixels on level $s$.
#
# [Next: 7. The diamond search module](07_diamond_search.ipynb)
