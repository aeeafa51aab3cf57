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
# # 15. Diffeomorphic SearchMorph
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/searchmorph-book/searchmorph-book/blob/main/notebooks/15_diffeomorphic.ipynb)
#
# SearchMorph's iterator adds up displacement updates, and nothing stops the sum from folding: two neighbouring
# pixels can be sent past each other, and the warped image then holds tissue twice or not at all. The paper
# counts folded pixels (Tables I-III) but does not forbid them. This chapter goes beyond the paper. The iterator
# refines a *stationary velocity field* $v$ instead, and the displacement is its exponential $\exp(v)$, computed
# by scaling and squaring (Arsigny et al., 2006; VoxelMorph-diff, Dalca et al., 2019). We write the exponential in
# a few lines, prove it against the library and against the ODE it solves, and show that it does not fold where
# the same field used as a displacement does. Then we compare two models trained for the same CPU seconds on
# brain2d-subjects, one with displacements and one with velocities, on the same test pairs.

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
import json
import math
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

import searchmorph_lite as sm
from searchmorph_lite.book import setup, smooth_field, synchronize
from searchmorph_lite.data import load_dataset
from searchmorph_lite.provenance import card_of, describe, hardware_line

# %% tags=["parameters"]
seed = 0
device = "auto"
# PyTorch CPU threads: one is fastest for these small tensors and steady on a busy
# machine; 0: PyTorch's default
threads = 1
# brain2d-subjects test pairs scored live; full scale: 24 (the beyond suite's)
test_pairs = 4
# squarings of the chapter's own exponentials (the trained models use their config's)
integration_steps = 7
# the size of the random fields of the first sections
field_size = (96, 96)
# stored output of `python -m benchmarks --suite beyond`, relative to notebooks/ (the
# chapters' cwd)
results_file = "../benchmarks/beyond_results.json"

# %%
device = setup(seed, device, threads)  # seed, threads; returns the device
HARDWARE = hardware_line(device)

# %% [markdown]
# ## Why displacement fields fold
#
# A displacement field $u$ sends pixel $p$ of the fixed image to $p + u(p)$ in the moving one (chapter 2). That
# map is locally invertible where the Jacobian determinant $\det(I + \nabla u(p))$ is positive. Where it is zero
# or negative the map folds: a neighbourhood is flattened or turned inside out, and `sm.folding_ratio` counts such
# pixels (chapter 3). In one dimension the condition reads $1 + u'(x) > 0$: a displacement folds as soon as it
# falls by more than one pixel per pixel. A network's field is a sum of updates with no such constraint. The
# smoothness loss of eq. 9 makes folds rare, but it cannot forbid them.
#
# To see one, take a smooth random field, `smooth_field(shape, max_px, seed)` from `searchmorph_lite.book` (chapter
# 2's, here upsampled bilinearly from an 8 x 8 grid): random values on a coarse grid, interpolated to every pixel
# and scaled so that its largest component is `max_px` pixels. Chapter 3's `folding_ratio` tells whether
# $p + u(p)$ folds.


# %%
big = smooth_field(field_size, 16.0, seed=0)  # the chapter's "large velocity"

# %% tags=["nbval-check-output"]
for max_px in (2.0, 4.0, 8.0, 16.0):
    u = smooth_field(field_size, max_px, seed=0)
    print(f"max |u| {max_px:4.1f} px: {sm.folding_ratio(u).item():.3f} % folded pixels")


# %% [markdown]
# The same field folds or not depending only on its size: at 16 px, a few percent of the pixels fold. Below,
# the grid lines of the fixed image are drawn where $p + u(p)$ sends them, and the folded pixels are red.


# %%
def plot_grid(ax, flow, title, step=3):
    """Draw the image of the pixel grid under p -> p + flow(p) (flow (1, 2, H, W)) on
    ``ax``, every ``step`` pixels, with the folded pixels (det J <= 0) in red."""
    u = flow[0].double().cpu()
    rows, cols = torch.meshgrid(
        *[torch.arange(n, dtype=u.dtype) for n in u.shape[1:]], indexing="ij"
    )
    y, x = rows + u[0], cols + u[1]
    for i in range(0, y.shape[0], step):
        ax.plot(x[i], y[i], color="k", lw=0.5)
    for j in range(0, y.shape[1], step):
        ax.plot(x[:, j], y[:, j], color="k", lw=0.5)
    folded = sm.jacobian_determinant(flow.double().cpu())[0] <= 0
    ax.scatter(x[folded], y[folded], s=3, color="C3", label="det J <= 0")
    pct = 100 * folded.double().mean().item()
    ax.set(title=f"{title}: {pct:.2f} % folded", xlabel="column", ylabel="row")
    ax.set_aspect("equal")
    ax.invert_yaxis()


fig, axes = plt.subplots(1, 2, figsize=(11, 5.5), constrained_layout=True)
plot_grid(axes[0], smooth_field(field_size, 4.0, seed=0), "max |u| = 4 px")
plot_grid(axes[1], big, "max |u| = 16 px")
axes[1].legend(loc="lower right")
plt.show()

# %% [markdown]
# ## The stationary velocity and its exponential
#
# Instead of the displacement, let the network produce a velocity field $v$ and move every point along it for one
# unit of time, $\frac{d\phi_t}{dt} = v(\phi_t)$ with $\phi_0 = \mathrm{id}$. The end point $\phi_1 = \exp(v)$ is
# a diffeomorphism (smooth, with a smooth inverse $\exp(-v)$). Trajectories of an ODE cannot cross, so it does
# not fold. Scaling and squaring computes it from the group property
# $\exp(v) = \exp(v / 2^N)^{\circ 2^N}$. For $N$ large enough the first step is so small that
# $\mathrm{id} + v/2^N$ is invertible ($|\nabla v| / 2^N < 1$), and each squaring composes the current map with
# itself: with $\phi = \mathrm{id} + u$,
#
# $$
# u \leftarrow \frac{v}{2^N}, \qquad \text{then } N \text{ times:}\quad
# u \leftarrow u + u \circ (\mathrm{id} + u),
# $$
#
# because $(\mathrm{id} + u) \circ (\mathrm{id} + u)(p) = p + u(p) + u(p + u(p))$. The term
# $u \circ (\mathrm{id} + u)$ is the field $u$ sampled at $p + u(p)$, which is exactly `sm.warp(u, u)`: the image being
# warped is the field itself. $N$ warps do the work of $2^N$ small steps. Written out, it is a loop of one line:


# %%
def exponential(v: torch.Tensor, steps: int) -> torch.Tensor:
    """Displacement (B, ndim, *S) of exp(v) for a velocity v (B, ndim, *S): scaling
    and squaring with ``steps`` squarings."""
    u = v / 2**steps  # with enough steps, so small that id + u does not fold
    for _ in range(steps):
        # (id + u) o (id + u) = id + u + u(p + u(p)): warp the field by itself;
        # outside the grid read the border's displacement, not 0
        u = u + sm.warp(u, u, padding_mode="border")
    return u


# %% [markdown]
# The library's `sm.integrate_velocity(velocity, steps)` (in `searchmorph_lite/transform.py`) is the same
# computation. It also works in 3D, where `warp` samples trilinearly:

# %% tags=["nbval-check-output"]
for shape in (field_size, (24, 24, 24)):
    v = smooth_field(shape, 8.0, seed=1)
    ours = exponential(v, integration_steps)
    same = torch.equal(ours, sm.integrate_velocity(v, integration_steps))
    print(f"{len(shape)}D {shape}: exponential == sm.integrate_velocity: {same}")
    assert same

# %% [markdown]
# A check that does not share the code: integrate the ODE by brute force, with $2^N$ forward Euler steps
# $\phi \leftarrow \phi + v(\phi) / 2^N$. In exact arithmetic these are the same $2^N$ compositions of
# $\mathrm{id} + v/2^N$, grouped differently. The two differ only because scaling and squaring resamples its
# intermediate fields, so they should agree to a fraction of a pixel:


# %%
def euler(v: torch.Tensor, steps: int) -> torch.Tensor:
    """Displacement (B, ndim, *S) of the ODE's end point after 2**steps Euler steps."""
    d = torch.zeros_like(v)  # phi = id + d
    for _ in range(2**steps):
        d = d + sm.warp(v, d, padding_mode="border") / 2**steps  # v read at phi(p)
    return d


# %% tags=["nbval-check-output"]
v = big.double()
ss, ode = sm.integrate_velocity(v, integration_steps), euler(v, integration_steps)
gap = (ss - ode).norm(dim=1).max().item()
print(
    f"{2**integration_steps} Euler steps vs {integration_steps} squarings of a "
    f"{v.abs().max().item():.0f} px velocity: max |difference| < 0.2 px: {gap < 0.2}"
)
print(f"largest displacement of exp(v): {ss.abs().max().item():.1f} px")
assert gap < 0.2

# %% [markdown]
# ## Proofs: the identity, translations, the inverse, and no folding
#
# Four properties the exponential must have, each checked on a tensor.
#
# 1. $\exp(0) = \mathrm{id}$: the zero velocity gives the zero displacement, exactly.
# 2. A constant velocity $t$ is a translation by $t$. Every squaring samples a constant field, which returns it,
#    and adds it: $t/2^N$ doubles $N$ times. The border padding keeps this exact up to the image edge.
# 3. $\exp(-v)$ inverts $\exp(v)$: going from $p$ to $p + a(p)$ with $a = \exp(v)$, then along $b = \exp(-v)$,
#    returns to $p$, i.e. $a(p) + b(p + a(p)) \approx 0$. The naive inverse of a *displacement*, $-u$, is not
#    one: $u(p) - u(p + u(p))$ is zero only for translations.
# 4. A large smooth velocity does not fold, while the same field used as a displacement does.

# %% tags=["nbval-check-output"]
zero = torch.zeros(2, 2, *field_size)
print(
    "1. exp(0) == 0:", torch.equal(sm.integrate_velocity(zero, integration_steps), zero)
)
for t in ([1.5, -2.25], [1.5, -2.25, 0.75]):
    n = len(t)
    shape = field_size if n == 2 else (24, 24, 24)
    const = torch.tensor(t).view(1, n, *[1] * n).expand(1, n, *shape).contiguous()
    err = (sm.integrate_velocity(const, integration_steps) - const).abs().max().item()
    print(
        f"2. {n}D: exp(constant {t}) is that translation, max error < 1e-5 px: "
        f"{err < 1e-5}"
    )
    assert err < 1e-5

# %%
margin = 8  # the border padding is not the true field outside: skip 8 px of edge
a = sm.integrate_velocity(big.double(), integration_steps)
b = sm.integrate_velocity(-big.double(), integration_steps)
inside = (..., slice(margin, -margin), slice(margin, -margin))
residual = (a + sm.warp(b, a, padding_mode="border")).norm(dim=1)[inside]
u = big.double()  # the same field as a displacement, "inverted" by negation
naive = (u + sm.warp(-u, u, padding_mode="border")).norm(dim=1)[inside]

# %% tags=["nbval-check-output"]
# Checked: 2 decimals of errors of ~0.1 px; float rounding moves them by ~1e-12
print(
    f"3. exp(v) then exp(-v), {big.abs().max().item():.0f} px velocity, inside a "
    f"{margin} px margin: max error {residual.max().item():.2f} px, "
    f"mean {residual.mean().item():.3f} px"
)
print(
    f"   u then -u (displacement): max error {naive.max().item():.2f} px, "
    f"mean {naive.mean().item():.3f} px"
)
# Tolerance: sampling the fields bilinearly 2 x 7 times costs a few hundredths of a
# pixel on average; the naive inverse is off by pixels.
assert residual.mean() < 0.05 and residual.max() < 1.0
assert naive.mean() > 10 * residual.mean()

# %% tags=["nbval-check-output"]
print("4. folding of random smooth velocities (5 seeds), as a displacement -> exp(v):")
for max_px in (8.0, 16.0):
    for s in range(5):
        vel = smooth_field(field_size, max_px, seed=s)
        raw = sm.folding_ratio(vel).item()
        integrated = sm.folding_ratio(
            sm.integrate_velocity(vel, integration_steps)
        ).item()
        print(
            f"   max |v| {max_px:4.1f} px, seed {s}: {raw:6.3f} % -> {integrated:.3f} %"
        )
        assert integrated == 0.0

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 5.5), constrained_layout=True)
plot_grid(axes[0], big, "v used as the displacement")
plot_grid(axes[1], sm.integrate_velocity(big, integration_steps), "exp(v)")
axes[0].legend(loc="lower right")
plt.show()

# %% [markdown]
# The right panel is the same velocity, exponentiated: the grid is still strongly bent (the largest displacement
# of $\exp(v)$ is printed above), but no cell is turned over.
# "Does not fold" holds up to discretisation. $\exp(v)$ is sampled on the pixel grid, and a velocity that bends
# faster than the grid can resolve (much rougher than these fields, or far larger) can still show a few pixels
# with $\det J \le 0$ after integration. Exercise 1 finds how many squarings a given large field needs.
#
# ## How the model uses it
#
# `SearchMorphConfig(diffeomorphic=True, integration_steps=7)` changes one thing in `SearchMorph.forward`
# (`searchmorph_lite/model.py`). The iterator still accumulates $\phi_t = \phi_{t-1} + \Delta\phi$ at 1/2
# resolution, but that sum is now read as a velocity $v$. After upsampling, `model.exponential` returns
# $\exp(v)$ as the displacement that warps the moving image, and the result carries the velocity in `.velocity`
# besides `.flow`. The search and the GRU still look around $p + v(p)$, which agrees with $\exp(v)$ to first order.
# Searching around $\exp(v)$ instead would cost `integration_steps` warps per iteration. One forward pass of a
# small untrained model, in 2D and in 3D, shows the contract:

# %% tags=["nbval-check-output"]
TINY = dict(
    widths=(4, 8, 8),
    feature_dim=4,
    context_dim=8,
    hidden_dim=8,
    motion_dim=8,
    levels=2,
    radius=1,
    iterations=3,
)
for ndim, size in ((2, (48, 40)), (3, (16, 16, 16))):
    torch.manual_seed(seed)
    cfg = sm.SearchMorphConfig(
        ndim=ndim, diffeomorphic=True, integration_steps=7, **TINY
    )
    tiny = sm.SearchMorph(cfg).eval()
    moving, fixed = torch.rand(1, 1, *size), torch.rand(1, 1, *size)
    with torch.no_grad():
        out = tiny(moving, fixed)
    assert out.velocity.shape == out.flow.shape == (1, ndim, *size)
    assert torch.allclose(out.flow, sm.integrate_velocity(out.velocity, 7))
    assert torch.allclose(out.warped, sm.warp(moving, out.flow))
    print(
        f"{ndim}D: velocity and flow {tuple(out.flow.shape)}, "
        f"flow == integrate_velocity(velocity, 7): True, {len(out.flows)} fields kept"
    )
plain = sm.SearchMorph(sm.SearchMorphConfig(**TINY))(moving[..., 0], fixed[..., 0])
print("a displacement model's result has velocity:", plain.velocity)

# %% [markdown]
# ## Trained: displacement against velocity on brain2d-subjects
#
# The package ships two models trained side by side for the same CPU seconds on brain2d-subjects. The data are
# inter-subject pairs of "virtual subjects" made from MNI152 slices at 192 x 160 (chapter 1;
# `searchmorph_lite/data/brain_subjects.py`), with new pairs every epoch and test slabs 3 mm away from every
# training slice. `brain2d-displacement` is the paper's displacement field
# (`configs/beyond_brain2d_displacement.yaml`), and `brain2d-diffeomorphic` is the same network, data, loss and
# budget with `diffeomorphic: true, integration_steps: 7` (`configs/beyond_brain2d_diffeomorphic.yaml`). Their
# provenance, from the checkpoints' metadata:

# %%
SHIPPED = {
    "displacement": "brain2d-displacement",
    "diffeomorphic": "brain2d-diffeomorphic",
}
models = {k: sm.load_pretrained(name, device=device) for k, name in SHIPPED.items()}
budget = {}
for kind, model in models.items():
    meta = model.metadata or {}
    cpu = meta.get("train_cpu_seconds") or sum(
        meta.get("history", {}).get("cpu_seconds", [])
    )
    budget[kind] = (cpu, meta.get("epochs"))
    print(
        describe(SHIPPED[kind], card_of(model)) + f"; {cpu:.0f} CPU s of training steps"
    )
    print(
        f"    config: diffeomorphic={model.config.diffeomorphic}, integration_steps="
        f"{model.config.integration_steps}, iterations={model.config.iterations}"
    )
assert models["diffeomorphic"].config.diffeomorphic
assert not models["displacement"].config.diffeomorphic
(cpu_d, ep_d), (cpu_v, ep_v) = budget["displacement"], budget["diffeomorphic"]
print(
    f"budgets: {cpu_v:.0f} vs {cpu_d:.0f} CPU s "
    f"({100 * (cpu_v / cpu_d - 1):+.0f} % for the velocity), {ep_v} vs {ep_d} epochs"
    + (
        ": not the same seconds, so read the comparison with care"
        if abs(cpu_v / cpu_d - 1) > 0.05
        else ": the same seconds within 5 %"
    )
)
ref = sm.load_pretrained("brain2d").metadata or {}  # chapter 11's model
ref_cpu = ref.get("train_cpu_seconds") or sum(
    ref.get("history", {}).get("cpu_seconds", [])
)
print(
    f"each had about 1/{ref_cpu / cpu_d:.0f} of the training CPU seconds of chapter "
    f"11's brain2d ({ref_cpu:.0f} s): a comparison of the two fields early in training"
)

# %% [markdown]
# Each test pair is scored as the benchmarks' `beyond` suite scores it (`benchmarks/beyond.py`: the library's
# `searchmorph_lite.scoring.run_methods`, with its `jacobian` hook for $\det J$), so the live numbers can be tied
# to its stored table. The field comes from the public `sm.register`, the moving labels are warped with nearest
# neighbour, and we take the mean Dice over labels 1-3 (CSF and other brain, grey matter, white matter), the
# folding % and $\det J$ at every pixel. The identity (the zero field) is the floor.

# %%
LABELS = [1, 2, 3]


def score(pair: dict, flow) -> tuple[float, float, np.ndarray]:
    """(mean Dice over LABELS, % folding, det J of every pixel) of a field (ndim, *S)
    on a dataset pair, as the beyond suite's run_methods and jacobian hook score it."""
    f = torch.as_tensor(np.ascontiguousarray(flow)).double()[None]
    warped = sm.warp(pair["moving_labels"][None].double(), f, mode="nearest")
    d = sm.dice(warped.round().long(), pair["fixed_labels"][None], LABELS)[0]
    jac = sm.jacobian_determinant(f)[0].numpy().ravel()
    return float(torch.nanmean(d)), float(sm.folding_ratio(f)[0]), jac


test_set = load_dataset("brain2d-subjects", "test", num_pairs=test_pairs)
items = [test_set[i] for i in range(len(test_set))]
scores, seconds = {}, {}
for kind, model in {"identity": None, **models}.items():
    rows, start = [], time.perf_counter()
    for x in items:
        m, f = x["moving"][0].numpy(), x["fixed"][0].numpy()
        with torch.no_grad():
            flow = (
                np.zeros((2, *m.shape))
                if model is None
                else sm.register(m, f, model)[1]
            )
        rows.append(score(x, flow))
    seconds[kind] = (time.perf_counter() - start) / len(items)
    scores[kind] = {
        "dice": np.array([r[0] for r in rows]),
        "folding": np.array([r[1] for r in rows]),
        "jac": np.concatenate([r[2] for r in rows]),
    }

# %% tags=["nbval-check-output"]
print(f"brain2d-subjects test, first {test_pairs} pairs, 192 x 160")
# Checked: 3 decimals of Dice and folding, 2 of det J; the integer count of folded
# pixels. Thread counts and machines move a field by ~1e-6 px, these by ~1e-5 at most.
table = {}
for kind, s in scores.items():
    jac = s["jac"]
    table[kind] = {
        "Dice (std)": f"{s['dice'].mean():.3f} ({s['dice'].std():.3f})",
        "% folding": f"{s['folding'].mean():.3f}",
        "folded pixels": int((jac <= 0).sum()),
        "det J min": f"{jac.min():.2f}",
        "det J 0.1 / 99.9 %ile": f"{np.percentile(jac, 0.1):.2f} / "
        f"{np.percentile(jac, 99.9):.2f}",
    }
pd.DataFrame(table).T.rename_axis("model")

# %% [markdown]
# The whole distribution of $\det J$ tells more than its fraction below zero. A field that folds nowhere can
# still squeeze some pixels to near zero area, and the tails show how close each model comes to folding. The
# histogram below pools every pixel of every test pair, with counts on a log scale. The maps show pair 0.

# %%
BINS = np.linspace(-0.5, 3.0, 71)  # benchmarks/beyond.py's JAC_BINS
fig, axes = plt.subplots(1, 3, figsize=(16, 4.2), constrained_layout=True)
for kind, color in (("displacement", "C0"), ("diffeomorphic", "C3")):
    counts, _ = np.histogram(np.clip(scores[kind]["jac"], BINS[0], BINS[-1]), BINS)
    # empty bins drawn at 0.5, below the axis' lower limit
    axes[0].stairs(np.maximum(counts, 0.5), BINS, color=color, lw=1.5, label=kind)
axes[0].axvline(0, color="k", ls="--", lw=1, label="det J = 0 (fold)")
axes[0].set(
    yscale="log",
    xlabel="det J (clipped to [-0.5, 3])",
    ylabel="pixels",
    ylim=(0.8, None),
    title=f"det J over {test_pairs} test pairs",
)
axes[0].legend()
n_pix = items[0]["moving"][0].numel()
for ax, kind in zip(axes[1:], ("displacement", "diffeomorphic")):
    det = scores[kind]["jac"][:n_pix].reshape(items[0]["moving"].shape[1:])
    im = ax.imshow(det, cmap="RdBu_r", vmin=0, vmax=2)
    if (det <= 0).any():
        ax.contour(det <= 0, levels=[0.5], colors="k", linewidths=1)
    ax.set(title=f"{kind}, pair 0 (black: det J <= 0)", xticks=[], yticks=[])
fig.colorbar(im, ax=axes[1:], label="det J")
plt.show()

# %% [markdown]
# The issue that asked for this model set its goal in advance: folding about zero (we read "about zero" as under
# 0.01 % of the pixels, about 3 pixels of a 192 x 160 image) at a mean Dice within 0.01 of the displacement model,
# on the same pairs. The sentences below are generated from the table; the paired standard error says whether a
# difference of that size is resolved by this many pairs.

# %% tags=["nbval-check-output"]
GOAL_FOLDING, GOAL_DICE = 0.01, 0.01  # % of pixels; Dice


def verdict(dice_disp, dice_diff, fold_disp, fold_diff, n_pairs):
    """The goal's sentences from per-pair Dice and folding % of both models."""
    gap = dice_disp - dice_diff  # > 0: the velocity loses Dice
    se = gap.std(ddof=1) / math.sqrt(n_pairs) if n_pairs > 1 else float("nan")
    fd, fv = fold_disp.mean(), fold_diff.mean()
    lines = [
        f"folding: diffeomorphic {fv:.3f} %, displacement {fd:.3f} % -> "
        + ("goal met" if fv < GOAL_FOLDING else "GOAL MISSED: the velocity model folds")
    ]
    if fd < GOAL_FOLDING:
        lines.append(
            "  the displacement model does not fold on these pairs either: "
            "here the velocity has nothing to prevent"
        )
    lines.append(
        f"Dice: diffeomorphic {dice_diff.mean():.3f}, "
        f"displacement {dice_disp.mean():.3f}, "
        f"difference {round(-gap.mean(), 3) + 0.0:+.3f} (paired SE {se:.3f}) -> "
        + (
            "goal met (within 0.01)"
            if gap.mean() <= GOAL_DICE
            else "GOAL MISSED: the velocity costs more than 0.01 Dice"
        )
    )
    if abs(gap.mean()) > 2 * se:
        better = "displacement" if gap.mean() > 0 else "diffeomorphic"
        lines.append(f"  the {better} model is better by more than 2 paired SE")
    else:
        lines.append(
            f"  the difference is within 2 paired SE: {n_pairs} pairs do not resolve it"
        )
    both = fv < GOAL_FOLDING and gap.mean() <= GOAL_DICE
    untested = (
        " (its folding half untested: neither model folds)" if fd < GOAL_FOLDING else ""
    )
    lines.append("overall: the goal is " + ("met" + untested if both else "NOT met"))
    return lines


d, dv = scores["displacement"], scores["diffeomorphic"]
print(f"live, {test_pairs} pairs:")
print(
    "\n".join(verdict(d["dice"], dv["dice"], d["folding"], dv["folding"], test_pairs))
)
floor = scores["identity"]["dice"].mean()
for kind in models:
    gain = round(scores[kind]["dice"].mean() - floor, 3) + 0.0
    print(f"{kind} vs identity: Dice {gain:+.3f}")

# %% [markdown]
# ## The stored benchmark, at full scale
#
# `python -m benchmarks --suite beyond` scores the same models, with the same scores, on 24 test pairs on an idle
# machine. It adds ANTs SyN, the seconds per pair and the peak memory of one forward pass, and stores them in
# `benchmarks/beyond_results.json`. When that file is present, the cell below shows its 2D rows and asserts that
# the live Dice and folding of the first pairs agree with its `per_pair` values (atol 2e-3 for Dice, one pixel for
# folding), which ties the stored table to this chapter's code.

# %%
stored_path = Path(results_file)
stored = json.loads(stored_path.read_text()) if stored_path.exists() else None
if stored is None or "2d" not in stored:
    print(
        f"{stored_path} is missing (or has no 2d part): run "
        "`python -m benchmarks --suite beyond` to add ANTs SyN, timings and the "
        "24-pair table"
    )
else:
    rows2d = stored["2d"]["rows"]
    by_model = {r.get("model"): r for r in rows2d}
    one_pixel = 100.0 / n_pix
    for kind, name in SHIPPED.items():
        row = by_model[name]
        for i, r in enumerate(row["per_pair"][: len(items)]):
            assert abs(r["dice"] - scores[kind]["dice"][i]) <= 2e-3, (kind, i, "Dice")
            assert abs(r["folding"] - scores[kind]["folding"][i]) <= one_pixel + 1e-9, (
                kind,
                i,
                "folding",
            )
    n_checked = min(len(items), len(by_model[SHIPPED["displacement"]]["per_pair"]))
    print(
        "stored output of `python -m benchmarks --suite beyond` on "
        f"{stored['machine']}, "
        f"{stored['threads']} threads ({stored['2d']['data']}); the live scores of "
        f"the first {n_checked} pairs agree with its per_pair values"
    )
    show = [r for r in rows2d if r.get("model") in SHIPPED.values()]
    show += [r for r in rows2d if r["method"] == "ANTs SyN"]
    stored_table = {}
    for r in show:
        jac = r["jacobian"]
        cpu, peak = r.get("train_cpu_seconds"), r.get("peak_forward_bytes")
        stored_table[r["method"]] = {
            "pairs": r["pairs"],
            "Dice (std)": f"{r['dice_mean']:.3f} ({r['dice_std']:.3f})",
            "% folding": f"{r['folding_mean']:.3f}",
            "det J min": f"{jac['min']:.2f}",
            "% det J <= 0": f"{100 * jac['fraction_nonpositive']:.3f}",
            "s / pair": f"{r['seconds_mean']:.2f}",
            "train CPU s": f"{cpu:.0f}" if cpu else "-",
            "epochs": r.get("epochs") or "-",
            "peak forward": f"{peak / 1e6:.0f} MB" if peak else "-",
        }
    display(pd.DataFrame(stored_table).T.rename_axis("method"))  # noqa: F821
    sd, sv = by_model[SHIPPED["displacement"]], by_model[SHIPPED["diffeomorphic"]]
    pp = {
        k: {q: np.array([p[q] for p in r["per_pair"]]) for q in ("dice", "folding")}
        for k, r in (("disp", sd), ("diff", sv))
    }
    syn = next((r for r in rows2d if r["method"] == "ANTs SyN"), None)
    for kind, r in (("displacement", sd), ("diffeomorphic", sv)):
        if syn is not None:
            gap = round(r["dice_mean"] - syn["dice_mean"], 3) + 0.0
            print(
                f"{kind} vs ANTs SyN: Dice {gap:+.3f} ("
                + ("the network loses" if gap < 0 else "the network wins")
                + f"), {r['seconds_mean']:.2f} vs {syn['seconds_mean']:.2f} s per pair"
            )
    print(f"stored, {sd['pairs']} pairs:")
    print(
        "\n".join(
            verdict(
                pp["disp"]["dice"],
                pp["diff"]["dice"],
                pp["disp"]["folding"],
                pp["diff"]["folding"],
                sd["pairs"],
            )
        )
    )

# %% [markdown]
# ## What the velocity costs
#
# The exponential is `integration_steps` warps of a full-resolution field (192 x 160 here) on top of the
# network. At inference `register` keeps only the last field (`keep_flows=False`), so it is integrated once:
# 7 warps per pair. In training the sequence loss needs every iteration's field (chapter 10), and each is
# integrated, so a step costs `iterations x integration_steps` extra warps (28 to 56 with the 4 to 8 training
# iterations of these configs), plus their backward pass. In the same CPU seconds the diffeomorphic model can
# therefore take fewer steps; the budget line above gives both models' CPU seconds and epochs. The timings below
# are from this run, on a machine that may be busy (not checked):

# %%
model = models["diffeomorphic"]
x = items[0]
with torch.no_grad():
    out = model(
        x["moving"][None].to(device), x["fixed"][None].to(device), keep_flows=False
    )
    assert torch.allclose(out.flow, sm.integrate_velocity(out.velocity, 7))
    vel = out.velocity
    synchronize(device)  # on a GPU: time the kernels, not their queueing
    start = time.perf_counter()
    for _ in range(10):
        sm.integrate_velocity(vel, model.config.integration_steps)
    synchronize(device)
    t_exp = (time.perf_counter() - start) / 10
print(
    f"exp(v) of one 192 x 160 velocity, {model.config.integration_steps} squarings: "
    f"{1e3 * t_exp:.1f} ms on {HARDWARE}"
)
print(
    "register + score per pair: "
    + ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items())
)
print(
    f"this pair: max |v| {vel.abs().max().item():.2f} px, "
    f"max |exp(v) - v| {(out.flow - vel).abs().max().item():.3f} px"
)

# %% [markdown]
# ## Exercises
#
# 1. How many squarings does a large velocity need? For `v_big = smooth_field(field_size, 24.0, seed=1,
#    grid=12)` (rougher and larger than the fields above), find the smallest `integration_steps` in 0..12 for
#    which `sm.integrate_velocity(v_big, steps)` has no folded pixel (`sm.folding_ratio(...) == 0`). Try
#    `seed=0` too: what happens, and why?
#
# ````{dropdown} Solution
# ```python
# v_big = smooth_field(field_size, 24.0, seed=1, grid=12)
# folding = [sm.folding_ratio(sm.integrate_velocity(v_big, s)).item() for s in range(13)]
# smallest_steps = next((s for s, f in enumerate(folding) if f == 0.0), None)
# print(smallest_steps, [round(f, 3) for f in folding])
# ```
# With `steps=0` the velocity is used as a displacement, and several percent of its pixels fold. Each squaring
# halves the first step $v/2^N$, and once that step no longer folds, neither does any composition of it. The
# field needs only a few squarings, and 7 leaves a margin. With `seed=0` the folding falls to a few hundredths of
# a percent and then stays there, however many steps: that field bends faster than the pixel grid resolves, so
# the bilinear resampling of each squaring, not the step size, limits it. That is the "up to discretisation" of
# the model's docstring. A smoother velocity (the smoothness loss) or a finer grid is the remedy.
# ````
#
# 2. The search and the GRU of the diffeomorphic model look around $p + v(p)$, not around $p + \exp(v)(p)$, where
#    the moving pixel really is. When does that matter? What would searching around $\exp(v)$ cost per
#    iteration, and how would you measure whether it helps?
#
# ```{dropdown} Solution
# $\exp(v) = v + \tfrac12 (\nabla v)\, v + \dots$, so the two positions differ by about $|v|\,|\nabla v| / 2$:
# nothing for a translation, more for large deformations with strong shear. The last cell prints
# $\max |\exp(v) - v|$ for one test pair; compare it with the reach of the search (radius 3 at 1/2 resolution,
# 6 px at full resolution on the finest level). Searching around $\exp(v)$ needs the exponential of the coarse
# velocity at every iteration: `integration_steps` warps at 1/2 resolution per iteration, in training and at
# inference, where now there is only one full-resolution exponential per pair. To measure it, add that switch
# (`where = sm.integrate_velocity(where, steps)` on the 1/2-resolution field before `lookup`), train both
# variants for the same CPU seconds as here, and compare Dice with the paired standard error, on larger
# deformations (`max_displacement`) as well.
# ```
#
# ## What we built
#
# The exponential of a stationary velocity by scaling and squaring, in a few lines, checked against the library
# and against 128 Euler steps of its ODE. Checks that $\exp(0) = 0$, that a constant is a translation, that
# $\exp(-v)$ inverts $\exp(v)$, and that large smooth velocities do not fold. The diffeomorphic SearchMorph's
# contract (`flow == integrate_velocity(velocity)`), and a same-budget comparison with the displacement model whose
# verdict is generated from its numbers.
#
# [Next: 16. Full-resolution features](16_full_resolution.ipynb)
