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
# per *pair* of positions, $N^2$ values for $N$ positions, and a brain volume has millions of positions. This
# chapter takes SearchMorph to 3D in three steps: the diamond of eq. 3 becomes an octahedron; the search reads
# the pooled fixed features directly (chapter 7's lean search), so the volume is never built; and a 3D model,
# trained here on a CPU, registers 3D brain volumes, next to ANTs SyN and a 3D VoxelMorph on the same pairs.

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
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pandas as pd
import torch

import searchmorph_lite as sm
from searchmorph_lite.data import load_dataset
from searchmorph_lite.provenance import card_of, describe

# %% tags=["parameters"]
seed = 0
device = "auto"
# PyTorch CPU threads: one is steady on a shared machine; 0: PyTorch's default
threads = 1
# brain3d test pairs registered live by the networks (the stored table has 8)
test_pairs = 2
# pairs that ANTs SyN registers live (a few seconds each at 48^3 on a CPU); 0: none
ants_pairs = 1
# the stored results of `python benchmarks/beyond.py` (None: do not read them)
results_file = "../benchmarks/beyond_results.json"

# %%
torch.manual_seed(seed)
device = sm.default_device() if device == "auto" else torch.device(device)
if threads:
    torch.set_num_threads(threads)
os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")  # repeatable ANTs
STORED = None
if results_file and Path(results_file).is_file():
    STORED = json.loads(Path(results_file).read_text())
print("stored results:", "found" if STORED else "not found", f"({results_file})")

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
# searched positions and takes inner products. The table below is `benchmarks/memory3d.py`'s stored output: the
# first column by the formula, the second measured (the bytes of tensors alive at once while `search_features`
# builds one search map). We recompute the formula here and check the stored column.


# %%
def all_pairs_bytes(features: tuple[int, ...], levels: int = 4) -> int:
    """Float32 bytes of the all-pairs volume over ``features`` and its pooled levels."""
    n = math.prod(features)
    pooled = [math.prod(s >> level for s in features) for level in range(levels)]
    return 4 * n * sum(pooled)


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
# ## The data: 3D virtual subjects
#
# `load_dataset("brain3d", split, voxel_mm=4)` builds pairs from the MNI152 template at 2 mm that ships with
# nilearn, averaged to 4 mm and cropped to 48 x 48 x 48 voxels (the brain spans 39 x 45 x 37). As the 2D virtual
# subjects of chapter 1, both volumes of a pair are deformed independently (an affine jitter, a large- and a
# small-scale smooth warp), get a T1 or a random per-tissue contrast, a bias field, blur and Rician noise, and
# keep exact labels (CSF and other brain, grey matter, white matter). Test subjects are drawn from their own
# random stream and their warps use control grids that no training subject used. What it cannot give: another
# anatomy. Every subject is one template deformed, so the test measures unseen deformations and contrasts, not
# unseen brains (LPBA40, through `data_scripts/`, has real ones).
#
# We train at 4 mm because the CPU of this project cannot train at 2 mm in the time we have: a 2 mm volume has 5.6x
# the voxels, so each training pair would cost about 5.6x the CPU seconds per pair printed below.

# %%
test_set = load_dataset("brain3d", "test", voxel_mm=4)
items = [test_set[i] for i in range(test_pairs)]
pair = items[0]
size = tuple(pair["moving"].shape[1:])
print(f"brain3d test: {len(test_set)} pairs of {size} voxels")


def show_slices(volumes: dict, title: str = "") -> None:
    """The middle axial, coronal and sagittal slice of each (D, H, W) volume."""
    fig, axes = plt.subplots(
        3, len(volumes), figsize=(2.6 * len(volumes), 7.2), constrained_layout=True
    )
    for col, (name, vol) in enumerate(volumes.items()):
        v = np.asarray(vol)
        d, h, w = (n // 2 for n in v.shape)
        for row, (cut, label) in enumerate(
            ((v[d], "axial"), (v[:, h], "coronal"), (v[:, :, w], "sagittal"))
        ):
            axes[row, col].imshow(cut, cmap="gray")
            axes[row, col].set(xticks=[], yticks=[])
            if col == 0:
                axes[row, col].set_ylabel(label)
        axes[0, col].set_title(name)
    fig.suptitle(title)
    plt.show()


show_slices(
    {
        "moving": pair["moving"][0],
        "fixed": pair["fixed"][0],
        "moving labels": pair["moving_labels"][0],
        "fixed labels": pair["fixed_labels"][0],
    },
    "a brain3d test pair (4 mm)",
)

# %% [markdown]
# ## SearchMorph-3D
#
# `SearchMorphConfig(ndim=3)` is the model of chapter 9 with every convolution, pooling and interpolation made 3D
# (`searchmorph_lite/_nd.py` picks them) and the octahedron in place of the diamond. The shipped `brain3d` and its
# baseline `brain3d-voxelmorph` were trained side by side on this project's CPU for the same CPU seconds:

# %%
models = {
    "VoxelMorph-3D": sm.load_pretrained("brain3d-voxelmorph", device=device),
    "SearchMorph-3D": sm.load_pretrained("brain3d", device=device),
}
cards = {}
for name, model in models.items():
    meta = model.metadata
    cards[name] = {
        "cpu_seconds": sum(meta["history"].get("cpu_seconds", [])),
        "epochs": meta["epochs"],
        "pairs": meta["train_pairs"],
    }
    print(describe(name, card_of(model)))
    seen = cards[name]["epochs"] * cards[name]["pairs"]  # at most (last epoch cut)
    print(
        f"    {cards[name]['cpu_seconds']:.0f} CPU seconds of training steps, "
        f"{cards[name]['epochs']} epochs of {cards[name]['pairs']} new pairs "
        f"(the last cut by the budget): about "
        f"{cards[name]['cpu_seconds'] / max(seen, 1):.1f} CPU s per pair; "
        f"{sum(p.numel() for p in model.parameters()):,} parameters"
    )
sm3d = models["SearchMorph-3D"]
print("search offsets per level:", len(sm.diamond_offsets(sm3d.config.radius, ndim=3)))


# %%
def score(item: dict, flow: np.ndarray) -> tuple[float, float]:
    """(mean Dice over labels 1-3, % folding) of ``flow`` (3, D, H, W) on ``item``."""
    f = torch.from_numpy(np.ascontiguousarray(flow)).double()[None]
    warped = sm.warp(item["moving_labels"][None].double(), f, mode="nearest").round()
    d = sm.dice(warped.long(), item["fixed_labels"][None], [1, 2, 3])[0]
    return float(torch.nanmean(d)), float(sm.folding_ratio(f)[0])


live = {name: [] for name in ["Identity", *models]}
fields = {}
for i, item in enumerate(items):
    m, f = item["moving"][0].numpy(), item["fixed"][0].numpy()
    live["Identity"].append(score(item, np.zeros((3, *m.shape))))
    for name, model in models.items():
        with torch.no_grad():
            warped, flow = sm.register(m, f, model)
        live[name].append(score(item, flow))
        if i == 0:
            fields[name] = (warped, flow)

# %% [markdown]
# One test pair, before and after. The last column is the determinant of SearchMorph-3D's Jacobian
# $\det(I + \nabla\phi)$: 1 where the field keeps volume, below 1 where it shrinks, $\le 0$ where it folds.

# %%
warped_sm, flow_sm = fields["SearchMorph-3D"]
jac = sm.jacobian_determinant(torch.from_numpy(flow_sm)[None])[0].numpy()
show_slices(
    {
        "moving": pair["moving"][0],
        "fixed": pair["fixed"][0],
        "VoxelMorph-3D": fields["VoxelMorph-3D"][0],
        "SearchMorph-3D": warped_sm,
        "|fixed - SM-3D|": np.abs(pair["fixed"][0].numpy() - warped_sm),
        "det J (SM-3D)": jac,
    },
    "test pair 0",
)

# %% tags=["nbval-check-output"]
# Checked: 3 decimals of Dice and % folding; float rounding moves them by ~1e-5.
for name, rows in live.items():
    dice_, fold = np.mean(rows, axis=0)
    print(
        f"{name:<15} mean Dice {dice_:.3f}   folding {fold:.3f} %"
        f"   ({len(rows)} test pairs)"
    )

# %% [markdown]
# ## The 3D table
#
# The full comparison is `python benchmarks/beyond.py`, run once on an idle machine with torch and ITK at the
# same thread count; its stored output is read here. Every method registers the same 8 test pairs and is scored
# by the same `score` function as above (the live numbers of the first pairs are checked against it). ANTs SyN
# and Affine run through `sm.baselines.ants_register` with a fixed seed.

# %%
if STORED and "3d" in STORED:
    table = {}
    for row in STORED["3d"]["rows"]:
        table[row["method"]] = {
            "Dice (std)": f"{row['dice_mean']:.3f} ({row['dice_std']:.3f})",
            "% folding": f"{row['folding_mean']:.3f}",
            "det J min": f"{row['jacobian']['min']:.2f}",
            "s / pair": f"{row['seconds_mean']:.2f}",
        }
        if row["method"] in live:
            stored_pairs = [(p["dice"], p["folding"]) for p in row["per_pair"]]
            n = min(len(live[row["method"]]), len(stored_pairs))
            ours = live[row["method"]][:n]
            assert np.allclose(ours, stored_pairs[:n], atol=2e-3), row["method"]
    print(
        f"stored: {STORED['3d']['data']}, {STORED['3d']['rows'][0]['pairs']} pairs; "
        f"{STORED['machine']}, {STORED['threads']} threads for torch and ITK "
        f"(1-min load {STORED['load_at_start']:.2f} at the start)"
    )
    display(pd.DataFrame(table).T.rename_axis("method"))
else:
    print("no stored 3D table: run `python benchmarks/beyond.py` (about 10 minutes)")

# %% [markdown]
# ANTs SyN is the classical reference. A live run on the first pair (seeded, one ITK thread) shows what it does
# here, scored by the same function:

# %%
if ants_pairs:
    from searchmorph_lite.baselines import ants_register

    for item in items[:ants_pairs]:
        start = time.perf_counter()
        _, flow_syn = ants_register(item["moving"][0], item["fixed"][0], "SyN", seed=1)
        seconds = time.perf_counter() - start
        d, fold = score(item, flow_syn)
        print(f"ANTs SyN: Dice {d:.3f}, folding {fold:.3f} %, {seconds:.1f} s")

# %% [markdown]
# What the numbers say (generated from the stored table when it is present, else from the live pairs):

# %%
if STORED and "3d" in STORED:
    means = {r["method"]: r for r in STORED["3d"]["rows"]}
    rank = sorted(means, key=lambda k: -means[k]["dice_mean"])
    smr, syn, vm = means["SearchMorph-3D"], means["ANTs SyN"], means["VoxelMorph-3D"]
    print("ranking by mean Dice:", " > ".join(rank))
    for other, row in (("ANTs SyN", syn), ("VoxelMorph-3D", vm)):
        gap = smr["dice_mean"] - row["dice_mean"]
        verb = "beats" if gap > 0 else "loses to"
        print(
            f"SearchMorph-3D {verb} {other} by {abs(gap):.3f} Dice "
            f"({smr['dice_mean']:.3f} vs {row['dice_mean']:.3f}), folding "
            f"{smr['folding_mean']:.3f} % vs {row['folding_mean']:.3f} %, "
            f"{smr['seconds_mean']:.2f} s vs {row['seconds_mean']:.2f} s per pair"
        )
    ident = means["Identity"]["dice_mean"]
    print(
        f"gain over the identity: SearchMorph-3D {smr['dice_mean'] - ident:+.3f}, "
        f"VoxelMorph-3D {vm['dice_mean'] - ident:+.3f}, "
        f"SyN {syn['dice_mean'] - ident:+.3f}"
    )
else:
    ident = np.mean(live["Identity"], axis=0)[0]
    for name in models:
        gain = np.mean(live[name], axis=0)[0] - ident
        print(f"{name}: {gain:+.3f} Dice over identity")

# %% [markdown]
# Read these numbers with the budget in mind: each network had a few thousand CPU seconds, some hundreds of
# training pairs, where the paper's 2D models had 1500 GPU epochs. These are in-distribution results (test
# subjects from the same template, new deformations and contrast draws); chapter 11's out-of-distribution
# questions apply in 3D too, and this chapter does not answer them.
#
# ## From the command line
#
# The CLI registers two NIfTI volumes with a 3D checkpoint, writes the warped moving volume on the fixed
# volume's grid and keeps its affine. A 2D model refuses a volume in one line. We write the test pair as two
# NIfTI files with a 4 mm affine and run it:

# %%
with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = [-96.0, -96.0, -72.0]
    for key in ("moving", "fixed"):
        nib.save(nib.Nifti1Image(pair[key][0].numpy(), affine), tmp / f"{key}.nii.gz")
    base = [sys.executable, "-m", "searchmorph_lite", "register"]
    args = ["--moving", tmp / "moving.nii.gz", "--fixed", tmp / "fixed.nii.gz"]
    out = tmp / "warped.nii.gz"
    done = subprocess.run(
        [*base, *args, "--checkpoint", "brain3d", "--out", out, "--device", "cpu"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    result = nib.load(out)
    same = np.allclose(result.affine, affine)
    print("warped:", result.shape, "| affine of the fixed volume kept:", same)
    refused = subprocess.run(
        [*base, *args, "--checkpoint", "brain2d", "--out", tmp / "w2.nii.gz"],
        capture_output=True,
        text=True,
    )
    print("a 2D model:", refused.stderr.strip().splitlines()[-1].replace(str(tmp), "…"))
    assert refused.returncode != 0 and not (tmp / "w2.nii.gz").exists()

# %% [markdown]
# ## Exercises
#
# 1. The octahedron of radius $r$ holds $(2r + 1)(2r^2 + 2r + 3) / 3$ offsets. Check the formula against
#    `sm.diamond_offsets(r, ndim=3)` for $r = 0, \dots, 6$, and compute how many correlations per voxel the
#    search map of a 4-level SearchMorph-3D with the shipped model's radius, 2 (`sm3d.config.radius`), holds.
#
# ````{dropdown} Solution
# ```python
# for r in range(7):
#     assert len(sm.diamond_offsets(r, ndim=3)) == (2 * r + 1) * (2 * r**2 + 2 * r + 3) // 3
# per_voxel = 4 * len(sm.diamond_offsets(2, ndim=3))  # 4 levels x 25 offsets = 100
# ```
# The formula counts the layers of the octahedron: layer $z$ ($|z| \le r$) is a 2D diamond of radius $r - |z|$.
# Radius 2 reads 25 offsets per level, 100 correlations per voxel: the motion encoder's input is almost 2x
# wider than in 2D (4 x 13 = 52 at radius 2), one reason the 3D model is slow on a CPU.
# ````
#
# 2. The shipped 3D models train at 4 mm. What would training at 2 mm (80 x 96 x 80) cost, per step and in
#    memory, and what would you change in the model to make it affordable on this CPU?
#
# ```{dropdown} Solution
# A step costs about 5.6x more (5.6x more voxels) than the CPU seconds per pair printed for the shipped models,
# so the same budget sees 5.6x fewer pairs. The lean search's memory grows linearly (the table above), the all-pairs
# volume quadratically. Cheaper options: fewer iterations during training (the cost is dominated by the
# iterations' search, GRU and loss at full resolution), radius 1 (7 offsets per level instead of 25), a
# narrower trunk (`widths`), or a stride of 4 for the features; or train at 4 mm and run at 2 mm with the field
# upsampled, as the paper does for its final x2.
# ```
