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
# # 7. The diamond search module (eq. 3)
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/searchmorph-book/searchmorph-book/blob/main/notebooks/07_diamond_search.ipynb)
#
# At every iteration the deformation-field iterator needs to know, for each pixel, how well the features match
# *around where the current field sends it*. The search module answers with a search map: it warps each pixel
# with the current field, reads the correlation pyramid at a diamond of positions around the warped point on all
# four levels, and stacks the values as channels (Sec. III-C, Fig. 3). This chapter builds the diamond
# (`diamond_offsets`), compares it with RAFT's square window, writes the lookup with loops and checks
# `search_pyramid`, shows a coordinate-order trap that symmetric tests cannot catch, and proves that
# `search_features` gives the same search map without ever building the cost volume.

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

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from IPython.display import Code

import searchmorph_lite as sm
from searchmorph_lite.book import best_time as book_best_time
from searchmorph_lite.book import setup, you_are_here
from searchmorph_lite.brute_force import diamond_naive, search_naive
from searchmorph_lite.data import load_dataset

# %% tags=["parameters"]
seed = 0
device = "auto"
radius = 3  # the paper's search radius for brain MR (2 for echocardiography)
levels = 4  # pyramid levels, kernels 1, 2, 4, 8
naive_size = 8  # feature-map side of the loop-checked example
# brain pair for the figures (GPU scale of every chapter: configs/book_gpu.yaml)
image_size = (96, 80)
pair_index = 1  # brain2d test pair
max_displacement = 32.0  # brain2d option, in pixels at 192 x 160 (default 8)
# feature-map size and batch of the speed/memory comparison
bench_size = (64, 64)
bench_batch = 1

# %%
device = setup(seed, device)  # seeds torch; "auto": CUDA when present, else CPU


# %% tags=["remove-input"]
you_are_here("search")

# %% [markdown]
# ## Eq. 3: the diamond
#
# Let the current field be $\phi$. A pixel $X = (u, v)$ of the moving map is warped to
# $X^w = X + \phi(X)$, and the search looks at its neighbours within L1 distance $r$:
#
# $$\mathcal{P}(X^w)_r = \{X^w + D \mid D \in \mathbb{Z}^2, \|D\|_1 \le r\} \qquad (3)$$
#
# The offsets $D$ form a diamond. Row $D_0 = t$ holds $2(r - |t|) + 1$ offsets, so there are
# $K = \sum_{t=-r}^{r} \big(2(r-|t|)+1\big) = 2r^2 + 2r + 1$ of them. The brute-force set, straight from eq. 3,
# by looping over the enclosing square; like every loop the library's tests check against, it lives in
# `searchmorph_lite.brute_force`:

# %%
Code(inspect.getsource(diamond_naive), language="python")

# %%
for r in range(6):
    offsets = sm.diamond_offsets(r)
    assert set(map(tuple, offsets.tolist())) == diamond_naive(r)
    assert (
        len(offsets) == len(diamond_naive(r)) == 2 * r**2 + 2 * r + 1
    )  # no duplicates
print("diamond_offsets(r) == brute force, K = 2r^2 + 2r + 1, for r = 0..5")

# %% [markdown]
# `diamond_offsets(r)` returns a $(K, 2)$ tensor of (row, column) offsets in lexicographic order; that order is the
# order of the search map's channels. RAFT searches a $(2r+1) \times (2r+1)$ square instead
# (Teed and Deng, 2020). Per level, and for the whole 4-level search map:

# %% tags=["nbval-check-output"]
print(
    f"{'r':>3}{'diamond K':>11}{'square K':>10}"
    f"{'diamond, 4 levels':>19}{'square, 4 levels':>18}"
)
for r in range(6):
    k_d, k_s = 2 * r**2 + 2 * r + 1, (2 * r + 1) ** 2
    print(f"{r:>3}{k_d:>11}{k_s:>10}{levels * k_d:>19}{levels * k_s:>18}")

# %% [markdown]
# The paper's $r = 3$ gives 25 positions per level and a 100-channel search map (RAFT's $r = 4$ square: 81 and
# 324). The diamond drops the square's corners: it reaches as far along the axes with about half the positions,
# and less far along the diagonals. The paper likens it to diamond block matching (Zhu and Ma, 2000), which
# searches the same shape repeatedly at one scale; SearchMorph searches it once per pyramid level per iteration.
#
# ## The lookup with loops
#
# For pixel $p$ and level $s$, level $s$ of $p$'s correlation map is read at $(p + \phi(p)) / 2^s + D$ for every
# offset $D$ (the warped point mapped onto the level, chapter 6), by bilinear interpolation (eq. 8's weights),
# reading 0 outside the map. We check this on an $8 \times 8$ example whose four levels are $8 \times 8$,
# $4 \times 4$, $2 \times 2$ and $1 \times 1$, with a random field of a few pixels so that many positions fall
# between pixels and some fall outside. The loops are the library's references: `bilinear_at` is eq. 8's sampler
# (chapter 2), and `search_naive` calls it for every pixel, level and offset; `offsets` is a list of (row,
# column) pairs, the rows of `sm.diamond_offsets(r)`:

# %%
Code(inspect.getsource(search_naive), language="python")


# %%
h_m, h_f = (
    torch.randn(1, 4, naive_size, naive_size),
    torch.randn(1, 4, naive_size, naive_size),
)
pyramid = sm.correlation_pyramid(sm.cost_volume(h_m, h_f), levels)
flow = 2.0 * torch.randn(1, 2, naive_size, naive_size)
offsets = sm.diamond_offsets(radius)
naive = search_naive(pyramid, flow, offsets.tolist())
library = sm.search_pyramid(pyramid, flow, radius)
assert torch.allclose(naive, library, atol=1e-5)
print("max |naive - library| =", f"{(naive - library).abs().max().item():.2e}")

# %% tags=["nbval-check-output"]
print(
    "search map (B, L*K, H, W):",
    tuple(library.shape),
    f"with L*K = {levels} x {len(offsets)}",
)

# %% [markdown]
# ## The coordinate-order trap
#
# RAFT keeps its coordinates as $(x, y)$, because `grid_sample` wants them so, and builds its window as
#
# ```python
# dx = torch.linspace(-r, r, 2 * r + 1)
# dy = torch.linspace(-r, r, 2 * r + 1)
# delta = torch.stack(torch.meshgrid(dy, dx), axis=-1)   # delta[..., 0] holds the dy values ...
# coords_lvl = centroid_lvl + delta_lvl                   # ... and is added to x
# ```
#
# so the "dy" offsets move $x$. For a square window this is harmless: swapping the two components of every offset
# maps the square onto itself, and only the order of the channels changes, which a network learns either way. The
# diamond is symmetric too. The mix-up becomes a bug as soon as something is *not* symmetric in the two axes: a
# field that moves rows and columns differently, or a check that compares channel $k$ with offset $k$. We keep
# (row, column) everywhere and flip to $(x, y)$ once, inside `sample_points`. Here is what a swap does:


# %%
def verdict(a: torch.Tensor, b: torch.Tensor) -> str:
    return "equal" if torch.allclose(a, b, atol=1e-5) else "WRONG"


def as_sets(search_map: torch.Tensor) -> torch.Tensor:
    """The values of each level sorted: compares what a level read, forgetting the
    order of its offsets."""
    return (
        search_map.view(search_map.shape[0], levels, -1, *search_map.shape[2:])
        .sort(dim=2)
        .values
    )


# %% tags=["nbval-check-output"]
fields = {
    "field (1.5, 1.5)": torch.full((1, 2, 8, 8), 1.5),
    "field (1.5, -2.25)": torch.tensor([1.5, -2.25])
    .view(1, 2, 1, 1)
    .repeat(1, 1, 8, 8),
}
for name, field in fields.items():
    truth = search_naive(pyramid, field, offsets.tolist())
    print(
        f"{name:<18} rows and columns swapped: "
        f"{verdict(sm.search_pyramid(pyramid, field.flip(1), radius), truth)}"
    )
line = torch.tensor(
    [[0, d] for d in range(-radius, radius + 1)]
)  # an asymmetric window: a horizontal line
for name, window in {"diamond": offsets, "horizontal line": line}.items():
    truth, swapped = (
        search_naive(pyramid, flow, window.tolist()),
        search_naive(pyramid, flow, window.flip(1).tolist()),
    )
    print(
        f"{name:<18} offsets swapped: channel by channel {verdict(swapped, truth)}, "
        f"as sets per level {verdict(as_sets(swapped), as_sets(truth))}"
    )

# %% [markdown]
# A test with a symmetric field, or one that only compares sets of values, passes with the axes swapped; the
# field $(1.5, -2.25)$ and the channel-by-channel comparison catch it. This is why the book's tests use fields
# that differ on the two axes.
#
# ## The same search map without the cost volume
#
# Pooling and bilinear sampling are both linear, so they commute with the inner product. Write
# $\bar h^s(F) = \text{avgpool}_{2^s}\, h(F)$ for the pooled fixed features and $\mathcal{S}[g](x)$ for the
# bilinear sample of a map $g$ at a real position $x$, a weighted sum $\sum_q w_q(x)\, g_q$. Then
#
# $$C^s_{p,q} = \frac{1}{4^s} \sum_{a,b} \langle h(M)_p, h(F)_{2^s q + (a, b)} \rangle
#   = \langle h(M)_p, \bar h^s(F)_q \rangle,
# \qquad
# \mathcal{S}[C^s_{p,\cdot}](x) = \sum_q w_q(x) \langle h(M)_p, \bar h^s(F)_q \rangle
#   = \big\langle h(M)_p,\ \mathcal{S}[\bar h^s(F)](x) \big\rangle.$$
#
# So `search_features` pools the fixed features (4 small images per level), samples them at the $K$ positions of
# every pixel, and takes inner products with $h(M)_p$: $O(L \cdot K \cdot D \cdot HW)$ numbers instead of the
# $O((HW)^2)$ volume. Outside the map both read 0. RAFT's `AlternateCorrBlock` uses the same identity (with a CUDA
# kernel); SearchMorph-lite uses it by default (`SearchMorphConfig(all_pairs=False)`).

# %%
h_m, h_f = torch.randn(2, 4, 16, 12), torch.randn(2, 4, 16, 12)
field = 3.0 * torch.randn(
    2, 2, 16, 12
)  # large enough that some positions leave the map
via_volume = sm.search_pyramid(
    sm.correlation_pyramid(sm.cost_volume(h_m, h_f, normalize=True), levels),
    field,
    radius,
)
direct = sm.search_features(h_m, h_f, field, radius, levels, normalize=True)
assert torch.allclose(via_volume, direct, atol=1e-5)
print(
    "max |search_pyramid(correlation_pyramid(cost_volume)) - search_features| =",
    f"{(via_volume - direct).abs().max().item():.2e}",
)

# %% [markdown]
# What each path costs, measured on a `bench_size` feature map. The "memory" columns count the bytes of the big
# tensors each path creates: the volume and its pyramid, or the sampled features of the largest level. Memory is
# a matter of counting; time is not: on a CPU and at this small size the lean path can be the slower one (it
# samples $L \cdot K$ positions of $D$ channels for every pixel, where the all-pairs path does one large matrix
# product), and times vary between machines and runs, so this cell's output is not checked and its last line
# says what this run measured.


# %%
def best_time(fn, repeats: int = 3) -> float:
    """Best seconds of fn(); the device synchronised around each call (on a GPU the
    kernels run asynchronously: without it the clock stops when they are queued)."""
    return book_best_time(fn, device, repeats)


b, (h, w), r = bench_batch, bench_size, radius
k = len(sm.diamond_offsets(r))
f_m, f_f = (
    torch.randn(b, 4, h, w, device=device),
    torch.randn(b, 4, h, w, device=device),
)
field = 2.0 * torch.randn(b, 2, h, w, device=device)
with torch.no_grad():
    pyr = sm.correlation_pyramid(sm.cost_volume(f_m, f_f), levels)
    t_all = best_time(
        lambda: sm.search_pyramid(
            sm.correlation_pyramid(sm.cost_volume(f_m, f_f), levels), field, r
        )
    )
    t_lean = best_time(lambda: sm.search_features(f_m, f_f, field, r, levels))
mem_all = sum(level.nbytes for level in pyr)
mem_lean = b * 4 * k * h * w * 4  # the (B, D, K, H, W) samples of one level, float32
print(f"features {b} x 4 x {h} x {w}, r = {radius}, {levels} levels, on {device.type}")
print(
    f"all pairs (volume + pyramid + lookup): {t_all * 1e3:8.1f} ms, "
    f"{mem_all / 2**20:8.1f} MiB"
)
print(
    f"search_features:                       {t_lean * 1e3:8.1f} ms, "
    f"{mem_lean / 2**20:8.1f} MiB"
)
faster = "search_features" if t_lean < t_all else "the all-pairs path"
print(
    f"in this run: {faster} is faster "
    f"({max(t_all, t_lean) / min(t_all, t_lean):.1f}x); "
    f"search_features uses {mem_all / mem_lean:.0f}x less memory"
)

# %% [markdown]
# At the paper's training scale the memory gap decides whether the model fits on a GPU at all
# (`python benchmarks/correlation.py --batch 8` measures whole training steps):

# %% tags=["nbval-check-output"]
npix, k = 96 * 80, len(sm.diamond_offsets(radius))
pyramid_bytes = 8 * 4 * npix * sum(npix // 4**s for s in range(levels))
samples_bytes = 8 * 4 * k * npix * 4
print(
    f"192 x 160 images, batch 8: volume + pyramid {pyramid_bytes / 2**30:.2f} GiB, "
    f"search_features' samples {samples_bytes / 2**20:.1f} MiB per level"
)

# %% [markdown]
# ## The diamond on a real image
#
# Back to chapter 5's brain pair. We take the moving pixel $X = (18, 29)$ of the half-resolution grid, where the
# true field is largest, warp it with that field to $X^w$, and draw the search positions of each level over the
# fixed image as that level sees it: averaged over $2^s \times 2^s$ blocks, in the level's own pixels. This is the
# paper's Fig. 3 on real data.

# %%
dataset = load_dataset(
    "brain2d",
    "test",
    num_pairs=pair_index + 1,
    image_size=image_size,
    max_displacement=max_displacement,
)
item = dataset.sample(pair_index, with_flow=True)
fixed = F.avg_pool2d(item["fixed"][None], 2)  # the feature grid, 1/2 resolution
# the field an ideal iterator would have found
true_flow = F.avg_pool2d(item["flow"][None], 2) / 2
X = (18, 29)
Xw = (
    X[0] + true_flow[0, 0, X[0], X[1]].item(),
    X[1] + true_flow[0, 1, X[0], X[1]].item(),
)
print(
    f"X = {X}, phi(X) = ({Xw[0] - X[0]:.2f}, {Xw[1] - X[1]:.2f}), X^w = ({Xw[0]:.2f}, "
    f"{Xw[1]:.2f})"
)

# %%
fig, axes = plt.subplots(2, levels // 2, figsize=(9, 9.6), constrained_layout=True)
d = sm.diamond_offsets(radius)
for s, ax in enumerate(axes.flat):
    view = F.avg_pool2d(fixed, 2**s)[0, 0] if s else fixed[0, 0]
    ax.imshow(view, cmap="gray")
    cy, cx = Xw[0] / 2**s, Xw[1] / 2**s
    ax.plot(
        cx + d[:, 1],
        cy + d[:, 0],
        "o",
        c="lime",
        ms=3 + s,
        label=f"diamond, r = {radius}",
    )
    ax.plot(X[1] / 2**s, X[0] / 2**s, "o", c="k", mec="w", ms=7, label="X")
    ax.plot(cx, cy, "o", c="r", ms=7, label="$X^w$")
    ax.set_title(
        f"level {s}: {tuple(view.shape)}, 1 px = {2 ** (s + 1)} image px", fontsize=11
    )
    ax.set_xlabel(f"column (level-{s} pixels)", fontsize=10)
    ax.set_ylabel(f"row (level-{s} pixels)", fontsize=10)
axes.flat[0].legend(loc="lower left", fontsize=9)
fig.suptitle(f"The search positions of X on the four levels (K = {len(d)} per level)")
plt.show()

# %% [markdown]
# The diamond is the same in every panel, 25 positions spaced one level pixel apart, while the image under it gets
# coarser: on level 0 it covers a few gyri, on level 3 half the brain. Drawn on one grid, that is four nested
# diamonds, each twice the size of the last. Below for $r = 1, 2, 3$, in half-resolution (feature) pixels, and then
# as a widget to try other radii.


# %%
def draw_search_area(ax, r: int) -> None:
    """The four levels' diamond positions around X^w, in feature pixels, over the
    half-resolution fixed image."""
    ax.imshow(fixed[0, 0], cmap="gray")
    d = sm.diamond_offsets(r)
    for s, colour in reversed(
        list(zip(range(levels), ["lime", "cyan", "orange", "magenta"]))
    ):  # fine on top
        ax.plot(
            Xw[1] + 2**s * d[:, 1],
            Xw[0] + 2**s * d[:, 0],
            "o",
            c=colour,
            ms=3,
            label=f"level {s}",
        )
    ax.plot(Xw[1], Xw[0], "*", c="r", mec="w", ms=12, label="$X^w$")
    ax.set_xlim(-0.5, fixed.shape[3] - 0.5), ax.set_ylim(fixed.shape[2] - 0.5, -0.5)
    reach = r * 2 ** (levels - 1)
    ax.set_title(f"r = {r}: {levels * len(d)} channels, reach ±{reach} px", fontsize=11)
    ax.set_xlabel("column (feature pixels)")


fig, axes = plt.subplots(1, 3, figsize=(10.5, 4.4), constrained_layout=True)
for r, ax in zip((1, 2, 3), axes):
    draw_search_area(ax, r)
axes[0].set_ylabel("row (feature pixels)")
axes[0].legend(loc="lower left", fontsize=9)
plt.show()


# %%
def explore(r: int = radius) -> None:
    fig, ax = plt.subplots(figsize=(5, 5.5))
    draw_search_area(ax, r)
    ax.legend(loc="lower left", fontsize=8)
    plt.show()


_ = widgets.interact(
    explore, r=widgets.IntSlider(value=radius, min=0, max=6, description="radius r")
)

# %% [markdown]
# The paper notes that "theoretically, r should be larger than the maximum deformation". With the pyramid, the
# coarsest level already reaches $r \cdot 2^{L-1}$ feature pixels, 24 for $r = 3$ (48 image pixels); the finer
# levels then locate the match precisely once the field has brought it near.
#
# ## Exercises
#
# 1. RAFT uses a $9 \times 9$ square ($r = 4$). Which diamond radius has at least as many positions per level?
#    Compare how far the two windows reach along an axis and along a diagonal.
#
# ```{dropdown} Solution
# The square has 81 positions; the diamond has 61 at $r = 5$ and 85 at $r = 6$, so $r = 6$. Along an axis the
# diamond with $r = 6$ reaches 6 level pixels, the square 4; along the diagonal the diamond reaches $(3, 3)$, the
# square $(4, 4)$. For the same budget the diamond trades diagonal reach for axial reach.
# ```
#
# 2. Check the linearity argument for one pixel and one level by hand: pick $p = (5, 7)$, level 2 and the real
#    position $x = (1.3, 0.6)$ on the random $16 \times 12$ example, and show that sampling the level-2
#    correlation map at $x$ equals the inner product of $h(M)_p$ with the bilinear sample of the pooled fixed
#    features.
#
# ````{dropdown} Solution
# ```python
# p, x = (5, 7), torch.tensor([[[1.3, 0.6]]])                       # (N=1, P=1, 2)
# level2 = sm.correlation_pyramid(sm.cost_volume(h_m, h_f), levels)[2][0, p[0], p[1]]
# from_volume = sm.bilinear_sample(level2[None, None], x)[0, 0, 0]
# pooled = F.avg_pool2d(h_f, 4)[:1]                                  # (1, D, 4, 3)
# from_features = (h_m[0, :, p[0], p[1]] * sm.bilinear_sample(pooled, x)[0, :, 0]).sum()
# assert torch.allclose(from_volume, from_features, atol=1e-5)
# ```
# ````
#
# ## What we built
#
# The diamond of eq. 3, `sm.diamond_offsets(r)`: $K = 2r^2 + 2r + 1$ offsets per level, against RAFT's $(2r+1)^2$.
# The search map with loops (`searchmorph_lite.brute_force.search_naive`), equal to `sm.search_pyramid`, and a field
# that differs on the two axes to test it.
# `sm.search_features`: the same map from pooled features, without the $(HW)^2$ volume.
#
# [Next: 8. The ConvGRU iterator](08_convgru_iterator.ipynb)
