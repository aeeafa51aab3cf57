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
# # 9. Assembling SearchMorph, and the VoxelMorph baseline
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/searchmorph-book/searchmorph-book/blob/main/notebooks/09_searchmorph.ipynb)
#
# Chapters 2 to 8 built the four boxes of the paper's Fig. 1 one at a time: the encoders, the correlation layer and
# its pyramid, the deformation-field iterator with its search module and ConvGRU, and the spatial transformer. This
# chapter puts them together as `SearchMorph` and reads its `forward` box by box on a real brain pair. On the way we
# settle a question the paper leaves open (which image's features ask the questions in the correlation), map the
# configuration to the ablations of Table III, count parameters against the VoxelMorph baseline (Balakrishnan et
# al., 2019), prove that the memory-lean search gives the same field as the paper's all-pairs cost volume, and
# cover what using a model takes: registering images of any size, saving and loading checkpoints, and its speed.

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
import dataclasses
import platform
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

import searchmorph_lite as sm
from searchmorph_lite.book import draw_pipeline, n_params, patch_features, setup
from searchmorph_lite.data import load_dataset
from searchmorph_lite.model import ABLATIONS

# %% tags=["parameters"]
seed = 0
device = "auto"
# PyTorch CPU threads: one is fastest for these small tensors and steady on a busy
# machine (more threads on shared cores slow training several-fold); 0: PyTorch's
# default
threads = 1
image_size = (192, 160)  # the paper's brain MR size
pair_index = 1  # brain2d test pair
# std of the untrained flow head's last layer, so that untrained fields are a few
# pixels
lively_std = 0.5
# translation (rows, columns, in half-resolution pixels) of the query experiment
shift = (2, -3)
odd_size = (181, 149)  # an image size the network cannot take as it is
timing_repeats = 3  # forward passes per model in the timing

# %%
# seed, deterministic kernels (same numbers on every rerun), threads; returns the device
device = setup(seed, device, threads, deterministic=True)

# %% [markdown]
# ## Fig. 1 as code
#
# `SearchMorph(config)(moving, fixed)` takes images $(B, 1, H, W)$ and returns a `RegistrationResult`: the final
# field `flow` $(B, 2, H, W)$ in pixels, the warped moving image `warped`, and `flows`, the field after every
# iteration. An untrained SearchMorph starts at the identity (its flow head's last layer is initialised near zero,
# chapter 8), which would make every comparison below trivially true. So we give that layer larger random weights
# (`lively_std`): the untrained network then outputs smooth random fields of a few pixels. They are not
# registrations, but they exercise every path of the code.

# %%
pair = load_dataset("brain2d", "test", num_pairs=pair_index + 1, image_size=image_size)[
    pair_index
]
moving, fixed = pair["moving"][None].to(device), pair["fixed"][None].to(device)

torch.manual_seed(seed)
# eval: running BN statistics
model = sm.SearchMorph(sm.SearchMorphConfig()).to(device).eval()
nn.init.normal_(model.iterator.flow_head[-1].weight, std=lively_std)
cfg = model.config
# tensor shapes of one forward pass, recorded by hooks for the diagram below
shapes = {}
hooks = [
    model.encoder.register_forward_hook(
        lambda mod, inp, out: shapes.update(features=out[0].shape, context=out[2].shape)
    ),
    model.iterator.register_forward_hook(
        lambda mod, inp, out: shapes.update(
            {"search map": inp[1].shape, "field": out[1].shape}
        )
    ),
]
with torch.no_grad():
    result = model(moving, fixed)
for hook in hooks:
    hook.remove()
print(
    "flow",
    tuple(result.flow.shape),
    "| warped",
    tuple(result.warped.shape),
    "|",
    len(result.flows),
    "fields",
    f"| largest displacement {result.flow.abs().max().item():.1f} px",
)

# %% [markdown]
# Here is the paper's Fig. 1 as this library builds it, with the shape of every tensor on its arrow, read from
# that forward pass (hooks on `model.encoder` and `model.iterator`). Everything between the encoder and the
# upsampling lives at half resolution. The all-pairs volume is drawn with the shape it would have: by default
# the model never builds it (chapter 7), and below we prove that this changes nothing.


# %%
def fmt(shape) -> str:
    return "(" + ",".join(str(n) for n in shape) + ")"


b, _, hh, ww = shapes["features"]
labels = {
    "images": f"M, F\n{fmt(moving.shape)}",
    "features": f"h(M), h(F)\n{fmt(shapes['features'])}",
    "volume": fmt((b, hh, ww, hh, ww)),
    "pyramid": f"{cfg.levels} levels: fixed\naxes / 1, 2, 4, 8",
    "search map": fmt(shapes["search map"]),
    "field": fmt(shapes["field"]),
    "full field": fmt(result.flow.shape),
    "context": f"context {fmt(shapes['context'])}",
    "loop": f"phi_t {fmt(shapes['field'])}, {cfg.iterations} iterations",
}
fig, ax = plt.subplots(figsize=(9.5, 5))
draw_pipeline(ax, shapes=labels)
ax.set_title(
    f"SearchMorph (Fig. 1) on one {image_size[0]} x {image_size[1]} pair", fontsize=11
)
plt.show()

# %% [markdown]
# Now `forward`, box by box, with the shapes on this $192 \times 160$ pair. The library's `forward` is about
# fifteen lines, and the cells below are those lines.
#
# **(1) The shared encoder** (chapter 4). `model.encoder` runs one U-Net trunk on $[M, F]$ stacked, once; its
# feature head splits 8 channels into $h(M)$ and $h(F)$, its context head gives 32 channels.

# %%
with torch.no_grad():
    h_m, h_f, context = model.encoder(moving, fixed)
print(
    "h(M)",
    tuple(h_m.shape),
    "| h(F)",
    tuple(h_f.shape),
    "| context",
    tuple(context.shape),
)

# %% [markdown]
# **(2) The correlation lookup** (chapters 5-7). As RAFT's `CorrBlock`, a lookup is built once per pair from
# the query features (the fixed image's, see below) and the searched ones, and then called with the current
# field: `lookup(flow)` returns the search map. Three lookups share this signature, and the model picks one in
# `__init__` with one line, `self.make_lookup = partial(LOOKUPS[config.lookup], radius=..., levels=...,
# normalize=...)`, so the loop never asks which one it has:

# %% tags=["nbval-check-output"]
for flags in ({}, {"all_pairs": True}, {"use_search": False}):
    c = sm.SearchMorphConfig(**flags)
    lookup_class = sm.SearchMorph(c).make_lookup.func
    print(
        f"SearchMorphConfig({', '.join(f'{k}={v}' for k, v in flags.items())})".ljust(
            38
        ),
        f"-> {c.lookup!r:<19} -> sm.{lookup_class.__name__}",
    )
print("this model:", model.make_lookup.func.__name__, model.make_lookup.keywords)

# %% [markdown]
# `AllPairsLookup` builds the volume of eq. 1-2 and its pyramid in `__init__`, `OnTheFlyLookup` only pools the
# searched features, and `WarpedFeaturesLookup` is Table III's "w/o search module".
#
# **(3) The deformation-field iterator** (chapter 8). The field starts at $\phi_0 = 0$ and the GRU's memory
# at `iterator.initial_hidden(context, ...)`, $\tanh$ of a $1 \times 1$ convolution of the context. At every
# iteration the lookup reads the four-level pyramid on a diamond of radius $r$ around $p + \phi_{t-1}(p)$; the
# search position uses the detached field, and the update is added: $\phi_t = \phi_{t-1} + \Delta\phi$.
# **(4) Upsampling and the spatial transformer** (chapter 2): each iteration's field is upsampled $2\times$ (its
# displacements doubled) to the image grid, and the last one warps $M$.

# %% [markdown]
# **(2) Correlation layer** (chapters 5-6) and **(3) the deformation-field iterator** (chapters 7-8). The field
# starts at $\phi_0 = 0$ and the GRU's memory at $\tanh$ of a $1 \times 1$ convolution of the context. At every
# iteration the search module reads the four-level correlation pyramid on a diamond of radius $r$ around
# $p + \phi_{t-1}(p)$; by default `search_features` computes those values directly from pooled features, never
# building the $(HW)^2$ volume (chapter 7 proved the two equal, and below we prove it for the whole model). The
# search positions use the detached field, and the update is added: $\phi_t = \phi_{t-1} + \Delta\phi$.

# %%
with torch.no_grad():
    lookup = sm.OnTheFlyLookup(
        h_f, h_m, cfg.radius, cfg.levels, cfg.normalize_correlation
    )
    hidden = model.iterator.initial_hidden(context, h_f)
    flow = torch.zeros(1, 2, *h_f.shape[2:], device=device)  # phi_0 = 0
    fields = []
    for _ in range(cfg.iterations):
        # search around p + phi_{t-1}(p), no gradient through "where"
        where = flow.detach()
        hidden, delta = model.iterator(hidden, lookup(where), context, where)
        flow = flow + delta  # phi_t = phi_{t-1} + delta phi
        fields.append(sm.upsample_flow(flow, 2))  # (4) back to the image grid ...
    warped = sm.warp(moving, fields[-1])  # ... and the spatial transformer
print(
    "search map",
    tuple(lookup(flow).shape),
    "| memory",
    tuple(hidden.shape),
    "| phi",
    tuple(flow.shape),
    "-> flow",
    tuple(fields[-1].shape),
)

# %% [markdown]
# The paper upsamples "at the last iteration" only; we upsample every iteration's field because the training
# loss of chapter 10 scores all of them. Box by box, we get the model's output exactly:

# %% tags=["nbval-check-output"]
assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(fields, result.flows))
assert torch.allclose(warped, result.warped, atol=1e-5)
print(
    f"{cfg.iterations} fields and the warped image: box by box == model(moving, fixed)"
)

# %% [markdown]
# ## Which features ask: the fixed image is the query
#
# Eq. 1 writes $C_{ijkl} = \sum_d h(M)_{ijd}\, h(F)_{kld}$, moving first, and chapters 5-7 kept that order. But
# which image's pixels should *ask* "where is my match?" is decided by the spatial transformer: `warp(M, flow)`
# fills fixed pixel $p$ with $M(p + \text{flow}(p))$, so the field lives on the fixed grid and must say, for each
# **fixed** pixel, where it sits in $M$. The search must therefore centre on fixed pixels and look around in the
# moving features: `search_features(h_f, h_m, ...)`, the fixed features first. The paper warps $M$ with its field,
# which is only consistent with this reading.
#
# A direct test: make $M$ a copy of $F$ translated by `shift` $= (2, -3)$ pixels, so that $M(p) = F(p - s)$. As
# features we use normalised $5 \times 5$ patches (chapter 5's `patch_features`, a hand-made descriptor: no
# training needed), and for every pixel we keep the diamond offset with the highest correlation, once with $F$
# asking and once with $M$ asking.


# %%
def best_offsets(query: torch.Tensor, searched: torch.Tensor, r: int) -> torch.Tensor:
    """Field (1, 2, H, W) on the query's grid: for each query pixel, the diamond offset
    with the best correlation."""
    zero = query.new_zeros(1, 2, *query.shape[2:])
    scores = sm.search_features(
        query, searched, zero, r, levels=1
    )  # (1, K, H, W), chapter 7
    return (
        sm.diamond_offsets(r)
        .to(query.device)[scores.argmax(1)]
        .permute(0, 3, 1, 2)
        .float()
    )


# %% tags=["nbval-check-output"]
f_half = F.avg_pool2d(fixed, 2)  # the features' resolution
m_half = torch.roll(f_half, shifts=shift, dims=(2, 3))  # M(p) = F(p - s)
h_fix, h_mov = (patch_features(x, 5, eps=1e-6) for x in (f_half, m_half))
r = sum(abs(v) for v in shift) + 1  # the diamond must reach s
ask_fixed, ask_moving = best_offsets(h_fix, h_mov, r), best_offsets(h_mov, h_fix, r)
inside = (f_half > 0.05)[
    0, 0
]  # brain pixels; in the flat background every offset matches equally well
s = torch.tensor(shift, dtype=torch.float, device=device)[:, None]
for name, field, expected in (
    ("fixed asks (the library)", ask_fixed, s),
    ("moving asks", ask_moving, -s),
):
    hits = (field[0][:, inside] == expected).all(0).float().mean().item()
    # exact=True: whole-pixel offsets copy pixels bit for bit
    warped_m = sm.warp(m_half, field, exact=True)
    err = (warped_m - f_half)[0, 0][inside].square().mean().item()
    print(
        f"{name:<25} best offset = {'+s' if expected is s else '-s'} at "
        f"{100 * hits:.1f} % of brain pixels "
        f"| MSE(warp(M, field), F) in the brain = {err:.3g}"
    )
print(
    f"{'no registration':<25}{'':<44}| MSE(M, F) in the brain = "
    f"{(m_half - f_half)[0, 0][inside].square().mean().item():.3g}"
)

# %%
fig, axes = plt.subplots(1, 4, figsize=(15, 4.3), constrained_layout=True)
(
    axes[0].imshow(m_half[0, 0].cpu(), cmap="gray"),
    axes[0].set_title(f"M = F shifted by {shift}"),
)
panels = [
    ("M − F", m_half),
    ("warp(M, field from F asking) − F", sm.warp(m_half, ask_fixed)),
    ("warp(M, field from M asking) − F", sm.warp(m_half, ask_moving)),
]
for ax, (title, img) in zip(axes[1:], panels):
    im = ax.imshow((img - f_half)[0, 0].cpu(), cmap="RdBu_r", vmin=-0.6, vmax=0.6)
    ax.set_title(title, fontsize=10)
for ax in axes:
    ax.set_xlabel("column (half-res pixel)")
axes[0].set_ylabel("row (half-res pixel)")
fig.colorbar(im, ax=axes[1:], fraction=0.02, label="intensity difference")
plt.show()

# %% [markdown]
# With $F$ asking, the best offset is $+s$ at every brain pixel and warping $M$ with it reproduces $F$ exactly there
# (the crescent below the brain comes from the flat background, where all offsets tie and `argmax` takes the first
# one, $(-r, 0)$, which reaches up into the brain). With $M$ asking, the moving pixels find their matches in $F$ at
# $-s$, as they should; but that field lives on the moving grid and answers the inverse question, so `warp` moves
# the image the wrong way and doubles the misalignment. For a translation the two answers differ only in sign; for
# a general deformation they are inverse maps on different grids, and no sign flip fixes it. This is why
# `SearchMorph` calls `search_features(h_f, h_m, ...)` (and `cost_volume(h_f, h_m)`), the fixed features first.
#
# ## The configuration and Table III
#
# `SearchMorphConfig` is a frozen dataclass: the paper's numbers where it gives them, our choices elsewhere, each
# commented in `model.py`.

# %%
for f in dataclasses.fields(sm.SearchMorphConfig):
    print(f"{f.name:<22}{f.default!r}")

# %% [markdown]
# Four flags remove one component each, the ablations of Table III (chapter 13 trains them):
#
# | Table III row | Config | What changes in `forward` |
# | --- | --- | --- |
# | w/o context | `use_context=False` | no context head; the memory starts at zero; the GRU sees motion only |
# | w/o Search Module | `use_search=False` | no correlation: the GRU sees $[h(F), \text{warp}(h(M), \phi)]$ |
# | w/o Corr Pyramid | `use_pyramid=False` | one pyramid level (the full-resolution cost volume) instead of four |
# | w/o Iteration | `iterations=1` | one pass of the iterator (Table I's "SearchMorph (w/o iter)") |
#
# `searchmorph_lite.model.ABLATIONS` holds these switches, name -> config changes, for this chapter and chapter 13.
# What each variant's iterator receives, and its size (`n_params` counts a module's parameters):


# %% tags=["nbval-check-output"]
small = torch.rand(1, 1, 64, 64, device=device)
rows = {}
for name, flags in ABLATIONS.items():
    torch.manual_seed(seed)
    v = sm.SearchMorph(sm.SearchMorphConfig(**flags)).to(device).eval()
    with torch.no_grad():
        n_fields = len(v(small, small).flows)
    rows[name] = {
        "lookup": v.make_lookup.func.__name__,
        "search map": v.iterator.motion_encoder[0].in_channels - 2,
        "context": v.config.context_dim if v.config.use_context else 0,
        "GRU input": v.iterator.gru.conv_z.in_channels - v.config.hidden_dim,
        "parameters": f"{n_params(v):,}",
        "fields": n_fields,
    }
pd.DataFrame(rows).T

# %% [markdown]
# ## SearchMorph and VoxelMorph, side by side
#
# VoxelMorph (Balakrishnan et al., 2019) is the paper's main deep-learning baseline: one U-Net sees $[M, F]$ and
# outputs the field in one shot, at full resolution. `sm.VoxelMorph` follows its 2D configuration (encoder
# 16-32-32-32, decoder 32-32-32-32-32-16-16) and returns the same `RegistrationResult`, so every later chapter can
# swap one model for the other.

# %% tags=["nbval-check-output"]
vm = sm.VoxelMorph(sm.VoxelMorphConfig()).to(device).eval()
parts = [
    ("SearchMorph", "encoder: trunk (run once)", model.encoder.trunk),
    ("SearchMorph", "encoder: feature head", model.encoder.feature_head),
    ("SearchMorph", "encoder: context head", model.encoder.context_head),
    ("SearchMorph", "iterator: initial memory", model.iterator.init_hidden),
    ("SearchMorph", "iterator: motion encoder", model.iterator.motion_encoder),
    ("SearchMorph", "iterator: ConvGRU", model.iterator.gru),
    ("SearchMorph", "iterator: flow head", model.iterator.flow_head),
    ("VoxelMorph", "encoder", vm.unet.down),
    ("VoxelMorph", "decoder", vm.unet.up),
    ("VoxelMorph", "extra full-resolution convs", vm.extra),
    ("VoxelMorph", "flow layer", vm.flow_layer),
]
for name, m in (("SearchMorph", model), ("VoxelMorph", vm)):
    assert n_params(m) == sum(n_params(p[2]) for p in parts if p[0] == name)
    parts.append((name, "total", m))
parts.sort(
    key=lambda part: part[0] == "VoxelMorph"
)  # stable: each model's total after its parts
pd.DataFrame(
    [(a, b, f"{n_params(m):,}") for a, b, m in parts],
    columns=["model", "part", "parameters"],
).set_index(["model", "part"])

# %% [markdown]
# SearchMorph has about twice VoxelMorph's parameters, 40 % of them in the ConvGRU, which every iteration reuses:
# four iterations cost four times the compute of one, not four times the weights. The paper makes the same point
# ("without using more parameters").
#
# ## The proof: the lean search and the all-pairs volume give the same model
#
# `SearchMorphConfig(all_pairs=True)` builds the paper's all-pairs cost volume $C(h(F), h(M))$ and its four-level
# pyramid once, before the loop, and looks the search map up in it (`search_pyramid`); the default computes the same
# values from pooled features (`search_features`). The configs differ in nothing else, so the same weights must give
# the same field, at every iteration:

# %%
all_pairs = sm.SearchMorph(dataclasses.replace(cfg, all_pairs=True)).to(device).eval()
all_pairs.load_state_dict(model.state_dict())
with torch.no_grad():
    start = time.perf_counter()
    result_all = all_pairs(moving, fixed)
    seconds_all = time.perf_counter() - start
errors = [(a - b).abs().max().item() for a, b in zip(result_all.flows, result.flows)]
assert all(
    torch.allclose(a, b, atol=1e-4) for a, b in zip(result_all.flows, result.flows)
)
volume_mib = h_f[0, 0].numel() ** 2 * 4 / 2**20  # float32, (H/2 x W/2)^2 entries
print(
    f"max |all-pairs - lean| over {len(errors)} iterations: {max(errors):.0e} px "
    f"(fields up to {result.flow.abs().max().item():.1f} px)"
)
print(
    f"level 0 of the all-pairs volume at {image_size[0]} x {image_size[1]}: "
    f"{volume_mib:.0f} MiB per pair"
)

# %% [markdown]
# ## Registering any image: `register`
#
# The network needs sides divisible by `model.size_multiple` (16: the trunk halves three times, and the pyramid's
# coarsest level pools 8 half-resolution pixels). `sm.register(moving, fixed, model)` takes two 2D arrays of any
# equal size, rescales each to $[0, 1]$ (percentiles 0 and 99.5, as the training data), zero-pads both to the next
# multiple with the image centred, registers, crops the field back, and warps the *original* moving image, so its
# intensities are kept. Here on a $181 \times 149$ crop of our pair:

# %% tags=["nbval-check-output"]
h, w = odd_size
m_odd = pair["moving"][0, 5 : 5 + h, 6 : 6 + w].numpy()
f_odd = pair["fixed"][0, 5 : 5 + h, 6 : 6 + w].numpy()
warped_odd, flow_odd = sm.register(m_odd, f_odd, model)
print(
    "input",
    m_odd.shape,
    "| size multiple",
    model.size_multiple,
    "| warped",
    warped_odd.shape,
    "| flow",
    flow_odd.shape,
    flow_odd.dtype,
)

# what register pads, centred
ph, pw = (-h % model.size_multiple, -w % model.size_multiple)
pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)


def prep(a: np.ndarray) -> torch.Tensor:
    """What register feeds the network: the image rescaled to [0, 1], as (1, 1, H, W),
    zero-padded."""
    return F.pad(
        sm.normalize_intensity(torch.from_numpy(a).double()).float()[None, None], pad
    ).to(device)


with torch.no_grad():
    padded = model(prep(m_odd), prep(f_odd)).flow
crop = padded[0, :, pad[2] : pad[2] + h, pad[0] : pad[0] + w].cpu().numpy()
print(
    "padded to",
    tuple(padded.shape[2:]),
    "| register's flow == the padded field, cropped:",
    np.allclose(flow_odd, crop, atol=1e-5),
)
assert np.allclose(flow_odd, crop, atol=1e-5)

# %% [markdown]
# ## Checkpoints
#
# `save_checkpoint(path, model, metadata)` writes one file holding the model's kind, its config as a plain dict,
# the state dict and free-form metadata, through a temporary file and a rename (a crash never leaves half a file).
# Everything in it is a tensor, number, string, list or dict, so it loads with `torch.load(weights_only=True)`,
# which refuses to run arbitrary pickled code. `load_checkpoint` rebuilds the model from the config, loads the
# weights and returns it in eval mode.

# %% tags=["nbval-check-output"]
with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "searchmorph.pt"
    sm.save_checkpoint(
        path, model, metadata={"data": "brain2d", "note": "untrained, lively flow head"}
    )
    raw = torch.load(
        path, map_location="cpu", weights_only=True
    )  # plain data, no pickled classes
    loaded = sm.load_checkpoint(path, expected_model="SearchMorph", device=device)
    try:
        sm.load_checkpoint(path, expected_model="VoxelMorph")
        refused = False
    except ValueError:
        refused = True
print(
    "keys:", sorted(raw), "| model:", raw["model"], "| radius:", raw["config"]["radius"]
)
print("metadata:", loaded.metadata)
with torch.no_grad():
    same = torch.equal(loaded(moving, fixed).flow, result.flow)
print(
    "loaded model gives the same field:",
    same,
    "| loading it as a VoxelMorph raises ValueError:",
    refused,
)
assert same and refused

# %% [markdown]
# ## How fast?
#
# Inference for one $192 \times 160$ pair, batch 1, median of `timing_repeats` passes after a warm-up. Timings depend
# on the machine and on what else runs on it; this page was built on the CPU printed below.


# %%
def median_seconds(net: nn.Module, repeats: int) -> float:
    with torch.no_grad():
        net(moving, fixed)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            net(moving, fixed)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return float(np.median(times))


cpu = platform.processor() or platform.machine()
for line in (
    Path("/proc/cpuinfo").read_text().splitlines()
    if Path("/proc/cpuinfo").exists()
    else []
):
    if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
print(f"device {device} | CPU: {cpu} | torch threads: {torch.get_num_threads()}")
for name, net in (("SearchMorph (4 iterations)", model), ("VoxelMorph", vm)):
    print(f"{name:<27}{1000 * median_seconds(net, timing_repeats):7.0f} ms per pair")
print(
    f"{'SearchMorph, all pairs':<27}{1000 * seconds_all:7.0f} ms per pair (one pass, "
    "above)"
)

# %% [markdown]
# VoxelMorph is several times faster: one U-Net pass, against a trunk, a search map per iteration and four GRU
# steps, all at half resolution. Classical methods such as SyN instead optimise every pair from scratch;
# chapter 11 times all of them on the same test pairs.
#
# ## Exercises
#
# 1. How many diamond offsets $K$ and search-map channels does the search give for radius 2 (the paper's echo
#    setting) and radius 3 (brain)? How many parameters does that change in the model?
#
# ````{dropdown} Solution
# $K = 2r^2 + 2r + 1$: 13 for $r = 2$, 25 for $r = 3$; with 4 levels the search map has 52 or 100 channels. Only
# the motion encoder's first convolution sees them: $9 \cdot (4K + 2) \cdot 32 + 32$ parameters, so $r = 3$ costs
# $9 \cdot 48 \cdot 32 = 13{,}824$ more.
# ```python
# for r in (2, 3):
#     m = sm.SearchMorph(sm.SearchMorphConfig(radius=r))
#     print(r, len(sm.diamond_offsets(r)), m.iterator.motion_encoder[0].in_channels - 2, n_params(m))
# ```
# ````
#
# 2. Build by hand what the GRU's motion encoder receives in the `use_search=False` ablation at the first
#    iteration, and check it against the model with a forward pre-hook on `iterator.motion_encoder`.
#
# ````{dropdown} Solution
# Without the search module the iterator sees the fixed features next to the moving features warped by the current
# field, and the field itself: $[h(F), \text{warp}(h(M), \phi), \phi]$, $4 + 4 + 2 = 10$ channels.
# ```python
# torch.manual_seed(seed)
# ablated = sm.SearchMorph(sm.SearchMorphConfig(use_search=False)).to(device).eval()
# seen = []
# ablated.iterator.motion_encoder.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0]))
# with torch.no_grad():
#     ablated(moving, fixed)
#     h_m, h_f, _ = ablated.encoder(moving, fixed)
#     phi0 = torch.zeros(1, 2, *h_f.shape[2:], device=device)
#     by_hand = torch.cat([h_f, sm.warp(h_m, phi0), phi0], dim=1)
# print(seen[0].shape, torch.allclose(seen[0], by_hand, atol=1e-6))   # (1, 10, 96, 80) True
# ```
# ````

# %% [markdown]
# ## What we built
#
# - Fig. 1 drawn with the shapes of a real forward pass, and `SearchMorph.forward` written out box by box (shared
#   encoder, correlation lookup, iterator, upsampling and warp), equal to the library's.
# - Why the fixed features are the query; the config flags of Table III; parameters beside VoxelMorph (2x, 40 % GRU).
# - Equal fields from the all-pairs and lean searches; `register` on any size; `weights_only` checkpoints; timings.
#
# [Next: 10. Training](10_training.ipynb)
