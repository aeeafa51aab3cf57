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
# # 10. Training
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/searchmorph-book/searchmorph-book/blob/main/notebooks/10_training.ipynb)
#
# SearchMorph learns without any ground-truth field: it is trained to make the warped moving image look like the
# fixed one while keeping the field smooth (eq. 9), with Adam at a learning rate of $10^{-3}$ and batches of 8
# (Sec. IV-C). Because the deformation-field iterator returns a field after *every* iteration, we also have to
# decide which of them the loss sees; the paper does not say, and we follow RAFT's sequence loss. This chapter
# writes that loss by hand and checks it against the library, writes one training step by hand and checks it
# against `searchmorph_lite.train.train`, shows the configuration files and the command line, and then trains
# SearchMorph and VoxelMorph with the same small budget on brain slices, so that chapters 11-13 know what a model
# of a given budget can and cannot do. When the pretrained checkpoints are installed, their training history and
# model card are shown too.

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
import math
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import display
from torch.utils.data import DataLoader

import searchmorph_lite as sm
from searchmorph_lite.book import runs_folder, setup
from searchmorph_lite.data import load_dataset
from searchmorph_lite.pretrained import pretrained_path
from searchmorph_lite.provenance import hardware_line
from searchmorph_lite.train import (
    TrainConfig,
    registration_loss_all,
    seed_everything,
    train,
)

# %% tags=["parameters"]
seed = 0
device = "auto"
# PyTorch CPU threads: one is fastest for these small tensors and steady on a busy
# machine (more threads on shared cores slow training several-fold); 0: PyTorch's
# default
threads = 1
# show the shipped checkpoints' history and model card when they are installed
use_pretrained = True
# brain2d size for the CI-scale runs (GPU scale of every chapter: configs/book_gpu.yaml)
image_size = (64, 48)
# training pairs per epoch (400: all of brain2d's train split)
train_pairs = 32
epochs = 6  # the paper trains 1500
# the paper's is 8; 4 gives twice the Adam steps for the same CPU time
batch_size = 4
val_pairs = 4  # validation pairs scored after every epoch
iteration_weight = 0.8  # gamma of the sequence loss (RAFT's value)
# where this chapter's two runs are written: "" a temporary folder (CI scale); "auto"
# runs/ next to the notebooks, or Drive's searchmorph-runs on Colab when mounted;
# or a folder. Chapter 11 evaluates a kept folder with its own runs_dir.
runs_dir = ""

# %%
# seed, deterministic kernels (same numbers on every rerun), threads; returns the device
device = setup(seed, device, threads, deterministic=True)
HARDWARE = hardware_line(device)

# %% [markdown]
# ## Eq. 9 and the sequence loss
#
# For one field $\phi$ the loss is a similarity term between the warped moving image and the fixed image, plus a
# smoothness penalty on the field (chapter 3):
#
# $$\mathcal{L}(M, F, \phi) = \mathcal{L}_{sim}(\mathcal{T}(M, \phi), F) + \alpha \mathcal{L}_{reg}(\phi) \qquad (9)$$
#
# with $\mathcal{L}_{sim}$ = LNCC and $\alpha = 2$ for brain MR, MSE and $\alpha = 0.01$ for echocardiography.
# SearchMorph returns $N$ fields $\phi_1, \dots, \phi_N$, one per iteration. Scoring only $\phi_N$ would leave the
# early iterations without a direct signal; scoring all equally would ask $\phi_1$ to be as good as $\phi_N$. RAFT's
# answer (Teed and Deng, 2020), which we adopt, weights them geometrically, the last one most, and we divide by the
# weights' sum so that the loss stays on the scale of eq. 9:
#
# $$\mathcal{L}_{seq} = \frac{\sum_{i=1}^{N} \gamma^{N-i}\, \mathcal{L}(M, F, \phi_i)}{\sum_{i=1}^{N} \gamma^{N-i}},
# \qquad \gamma = 0.8 .$$
#
# With $N = 4$ the weights are:

# %% tags=["nbval-check-output"]
n_iter = 4
weights = [iteration_weight ** (n_iter - i) for i in range(1, n_iter + 1)]
print(
    "gamma^(N-i):",
    [round(w, 4) for w in weights],
    "| normalised:",
    [round(w / sum(weights), 4) for w in weights],
)

# %% [markdown]
# The smallest code that computes it: loop over the fields, warp, score eq. 9, weight.


# %%
def sequence_loss_naive(flows, moving, fixed, gamma, similarity="lncc", alpha=2.0):
    """Weighted mean over iterations of eq. 9, with weights gamma^(N - i) for field i =
    1..N."""
    n = len(flows)
    total, norm = 0.0, 0.0
    for i, flow in enumerate(flows, start=1):
        w = gamma ** (n - i)
        total = total + w * sm.registration_loss(
            sm.warp(moving, flow), fixed, flow, similarity, alpha
        )
        norm += w
    return total / norm


# %% [markdown]
# To test it on fields that differ from one iteration to the next we take an untrained SearchMorph and give its
# flow head's last layer large random weights (an untrained model otherwise starts at the identity, chapter 8),
# then run it on a real brain pair.

# %%
pair = load_dataset("brain2d", "train", num_pairs=1, image_size=image_size)[0]
moving, fixed = pair["moving"][None].to(device), pair["fixed"][None].to(device)
lively = (
    sm.SearchMorph(sm.SearchMorphConfig(radius=3, iterations=n_iter)).to(device).eval()
)
torch.nn.init.normal_(lively.iterator.flow_head[-1].weight, std=0.5)
with torch.no_grad():
    result = lively(moving, fixed)
cfg = TrainConfig(similarity="lncc", alpha=2.0, iteration_weight=iteration_weight)
naive = sequence_loss_naive(result.flows, moving, fixed, iteration_weight)
library = registration_loss_all(result, moving, fixed, cfg)
assert torch.allclose(naive, library, atol=1e-6)
print("max |naive - library| =", f"{(naive - library).abs().item():.2e}")

# %% [markdown]
# From now on `registration_loss_all(result, moving, fixed, cfg)` computes it. With `iteration_weight=0` only the
# last field counts; with 1 all count equally.
#
# ## One training step, by hand
#
# Training is the usual loop: a batch of pairs, the model's fields, the loss, its gradient, an Adam step. The
# library's `train(cfg, out_dir)` does exactly this, epoch after epoch, reshuffling the pairs with a generator
# seeded by `seed + epoch`, and writes `out_dir/checkpoint.pt` after every epoch. We check that claim on the
# smallest case that cannot depend on the shuffling: 8 pairs in one batch of 8, so one epoch is one step, and two
# epochs must give the same two losses as two Adam steps by hand (VoxelMorph, whose steps take a fraction of a
# second).


# %%
def adam_steps_by_hand(cfg: TrainConfig, steps: int) -> list[float]:
    """Losses of ``steps`` Adam steps on the whole training set as one batch, written
    out."""
    seed_everything(
        cfg.seed
    )  # what train() does first: the model's initial weights depend on it
    data = load_dataset(cfg.dataset, "train", **cfg.dataset_options)
    model = sm.build_model(cfg.model, cfg.model_config).to(device).train()
    adam = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    batch = next(iter(DataLoader(data, batch_size=len(data))))
    m, f = batch["moving"].to(device), batch["fixed"].to(device)
    losses = []
    for _ in range(steps):
        loss = registration_loss_all(
            model(m, f), m, f, cfg
        )  # eq. 9 over the iterations' fields
        adam.zero_grad()
        loss.backward()
        adam.step()
        losses.append(loss.item())
    return losses


# %%
small = TrainConfig(
    dataset="brain2d",
    dataset_options={"num_pairs": 8, "image_size": image_size, "seed": seed},
    model="VoxelMorph",
    similarity="lncc",
    alpha=2.0,
    epochs=2,
    batch_size=8,
    seed=seed,
    val_pairs=0,
)
smoke_dir = Path(tempfile.mkdtemp()) / "smoke"
by_hand = adam_steps_by_hand(small, steps=2)
history = train(small, smoke_dir, device=device, progress=False)
assert np.allclose(by_hand, history["loss"], rtol=1e-5)
print(
    "losses of 2 steps: by hand",
    [f"{v:.6f}" for v in by_hand],
    "| train():",
    [f"{v:.6f}" for v in history["loss"]],
)

# %% [markdown]
# The checkpoint holds the model's kind and config, its weights, the optimizer state, the epoch and the history,
# and loads with `torch.load(weights_only=True)`. `train(..., resume=True)` continues from it; raising `epochs`
# from 2 to 3 runs just the third epoch:

# %% tags=["nbval-check-output"]
ckpt = sm.read_checkpoint(smoke_dir / "checkpoint.pt")
print("checkpoint keys:", sorted(ckpt), "| epoch", ckpt["epoch"])
resumed = train(
    dataclasses.replace(small, epochs=3),
    smoke_dir,
    resume=True,
    device=device,
    progress=False,
)
print(
    "after resume: epochs",
    resumed["epoch"],
    "| epochs 1-2 kept:",
    resumed["loss"][:2] == history["loss"],
)

# %% [markdown]
# ## The configuration and the command line
#
# A run is one frozen `TrainConfig`: data (`dataset`, `dataset_options`), model (`model`, `model_config`), loss
# (`similarity`, `alpha`, `iteration_weight`) and optimisation (`epochs`, `batch_size`, `lr`, `seed`). The files
# in `configs/` hold the paper's settings (Sec. IV-C): LNCC with $\alpha = 2$ and search radius 3 for brain MR, MSE
# with $\alpha = 0.01$ and radius 2 for echocardiography, 4 iterations, Adam $10^{-3}$, batch 8, and 5 epochs of
# the MNI152 `brain2d` pairs, the budget of the Table III ablations (the four `brain2d_ablation_*` files change one
# switch each, chapter 13). Here is the brain one, built in code; when the repository is checked out we also read
# the YAML file and compare.

# %%
brain_sm = TrainConfig(
    dataset="brain2d",
    model="SearchMorph",
    model_config={"radius": 3, "iterations": 4},
    similarity="lncc",
    alpha=2.0,
    epochs=5,
    batch_size=8,
    lr=1e-3,
    seed=0,
)
yaml_path = Path("../configs/brain2d_searchmorph.yaml")
if (
    yaml_path.is_file()
):  # a checkout of the repository (on Colab the package comes without configs/)
    assert TrainConfig.from_file(yaml_path) == brain_sm
    print(yaml_path.read_text())
for f in dataclasses.fields(brain_sm):
    print(f"{f.name:>16} = {getattr(brain_sm, f.name)!r}")

# %% [markdown]
# The fields after `seed` go beyond the paper, and the paper's configuration leaves them at their defaults:
#
# - `val_pairs`, `val_options`: how many validation pairs `train` scores after each epoch, and from which settings.
# - `max_seconds` (older name `max_cpu_seconds`): a budget in seconds of training steps (CPU seconds on a CPU,
#   wall-clock seconds with CUDA synchronised on a GPU). Two models given the same budget had the same compute,
#   however many epochs each fits into it; `epochs` is then only an upper bound.
# - `fold_weight`: adds `fold_weight` times a barrier on folding, the mean of $\max(0, 0.1 - \det J)$ over every
#   iteration's field, to eq. 9. 0 is the paper's loss.
# - `fresh_pairs`: new training pairs every epoch (generated datasets only), so a long run does not memorise a
#   fixed set of pairs.
# - `train_iterations`: `[lo, hi]` draws each step's number of GRU iterations from `lo..hi` (SearchMorph only), so
#   the iterator learns to settle rather than to stop at one count (RAFT does the same).
# - `grad_clip`: RAFT's clipping of the gradients' global norm to this value before each Adam step (0: none); the
#   3D configs use 1.0, because SearchMorph-3D trained without it saturated its GRU.
# - `amp`: mixed precision on a GPU, `off` (the default), `bf16` or `fp16`, explained next.
#
# On a CUDA GPU, `amp: bf16` (or `--amp bf16` on the command line) runs the forward pass under `torch.autocast`:
# the convolutions of the encoders, the motion encoder, the ConvGRU and the flow head run in bfloat16. `amp: fp16`
# uses float16 with a loss scaler, whose state `--resume` keeps. Three things stay in float32 because reduced
# precision breaks them: positions (the field, its sum over iterations, the search positions and every warp;
# bfloat16 keeps 8 mantissa bits, so 150 px would round to a whole pixel), the correlations of eq. 1-3, and the
# loss of eq. 9 (local NCC's variances are differences of box sums, and $\det J$ is a difference of products).
# Weights and Adam stay float32. A CPU refuses amp. `bash .ci/gpu_check.sh` measures the speed-up; until it has
# run on a GPU, the book quotes no amp timing.
#
# The shipped 2D models `brain2d` and `echo2d` used the first five (neither `grad_clip` nor `amp`): their configs
# (`configs/brain2d_subjects_searchmorph.yaml`, `configs/echo2d_wide_searchmorph.yaml`) differ from the paper's in
# these fields:

# %%
shipped_yaml = Path("../configs/brain2d_subjects_searchmorph.yaml")
if shipped_yaml.is_file():  # not on Colab, where configs/ is not installed
    shipped_cfg = TrainConfig.from_file(shipped_yaml)
    for f in dataclasses.fields(shipped_cfg):
        if getattr(shipped_cfg, f.name) != getattr(brain_sm, f.name):
            print(f"{f.name:>16} = {getattr(shipped_cfg, f.name)!r}")

# %% [markdown]
# The same runs from a shell (the `--resume` flag continues an interrupted run from `runs/brain2d/checkpoint.pt`,
# `--epochs` overrides the file, `--max-steps` makes a smoke run):
#
# ```bash
# python -m searchmorph_lite train --config configs/brain2d_searchmorph.yaml --out runs/brain2d
# python -m searchmorph_lite train --config configs/brain2d_searchmorph.yaml --out runs/brain2d --resume --epochs 20
# python -m searchmorph_lite evaluate --checkpoint runs/brain2d/checkpoint.pt --dataset brain2d --split test
# ```
#
# ## SearchMorph and VoxelMorph, same data, same epochs
#
# Now a real (small) run of both models with the paper's brain loss: `train_pairs` pairs of `image_size`, `epochs`
# epochs of batches of `batch_size`. After every epoch `train` scores `val_pairs` validation pairs (mean Dice over
# the three tissue labels, and % folding). The budget is set in the parameters cell; its default, a few dozen
# optimizer steps, is chosen to run in under a minute on a shared CPU: a tiny fraction of the paper's training.
#
# Each model's run (`checkpoint.pt`, rewritten after every epoch) goes to a subfolder named after the model
# (`SearchMorph/`, `VoxelMorph/`) of the folder that `runs_dir` names, printed below. At the CI scale
# (`runs_dir = ""`) that is a temporary folder. At the GPU scale (`configs/book_gpu.yaml`) it is `"auto"`: `runs/`
# next to the notebooks, or, on Colab with Google Drive mounted (`from google.colab import drive;
# drive.mount("/content/drive")`), `/content/drive/MyDrive/searchmorph-runs`, which outlives the Colab session. A
# run already in that folder is resumed: an interrupted one continues, a finished one is loaded as it is. Chapter
# 11, run with the same `runs_dir`, evaluates these two models instead of the shipped ones.


# %%
def ci_config(model: str, model_config: dict) -> TrainConfig:
    """The CI-scale brain2d run of this chapter: paper loss (LNCC, alpha 2), budget
    from the parameters cell."""
    return TrainConfig(
        dataset="brain2d",
        dataset_options={
            "num_pairs": train_pairs,
            "image_size": image_size,
            "seed": seed,
        },
        model=model,
        model_config=model_config,
        similarity="lncc",
        alpha=2.0,
        iteration_weight=iteration_weight,
        epochs=epochs,
        batch_size=batch_size,
        lr=1e-3,
        seed=seed,
        val_pairs=val_pairs,
    )


kept = runs_folder(runs_dir)  # None: a temporary folder
run_dir = kept or Path(tempfile.mkdtemp())
print(f"runs in {run_dir.resolve()}" if kept else "runs in a temporary folder")
runs = {}
for name, model_config in (
    ("SearchMorph", {"radius": 3, "iterations": 4}),
    ("VoxelMorph", {}),
):
    again = (run_dir / name / "checkpoint.pt").is_file()  # a kept run: continue it
    runs[name] = train(
        ci_config(name, model_config), run_dir / name, again, device, progress=False
    )
models = {
    name: sm.load_checkpoint(run_dir / name / "checkpoint.pt", device=device)
    for name in runs
}

# %% [markdown]
# Where would a model that does nothing land? The identity's Dice on the same validation pairs is the floor that
# training has to beat:

# %%
val_set = load_dataset("brain2d", "val", image_size=image_size, seed=seed)
val_items = [val_set[i] for i in range(val_pairs)]
identity_dice = float(
    np.nanmean(
        [
            sm.dice(
                it["moving_labels"][None], it["fixed_labels"][None], [1, 2, 3]
            ).numpy()
            for it in val_items
        ]
    )
)

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), constrained_layout=True)
for name, h in runs.items():
    axes[0].plot(h["epoch"], h["loss"], "o-", label=name)
    axes[1].plot(h["epoch"], h["val_dice"], "o-", label=name)
    axes[2].plot(np.cumsum(h["cpu_seconds"]), h["val_dice"], "o-", label=name)
for ax in axes[1:]:
    ax.axhline(identity_dice, color="gray", ls="--", label="identity (no registration)")
axes[2].set(
    xlabel="CPU seconds of training steps",
    ylabel="mean Dice (CSF/other, GM, WM)",
    title="the same, against compute",
)
axes[0].set(
    xlabel="epoch",
    ylabel="training loss (eq. 9, sequence-weighted)",
    title="Training loss",
)
axes[1].set(
    xlabel="epoch",
    ylabel="mean Dice (CSF/other, GM, WM)",
    title=f"Validation Dice ({val_pairs} pairs)",
)
for ax in axes[:2]:
    ax.xaxis.get_major_locator().set_params(integer=True)
for ax in axes:
    ax.legend(fontsize=8)
fig.suptitle(
    f"brain2d {image_size[0]} x {image_size[1]}, {train_pairs} pairs x {epochs} "
    f"epochs, batch {batch_size}"
)
plt.show()

# %% [markdown]
# The numbers behind the curves, and what they allow us to say, computed from them:

# %%
with (
    torch.no_grad()
):  # the largest displacement each model produces on the validation pairs
    reach = {
        name: max(
            model(it["moving"][None].to(device), it["fixed"][None].to(device))
            .flow.abs()
            .max()
            .item()
            for it in val_items
        )
        for name, model in models.items()
    }
print(
    f"budget: brain2d {image_size[0]} x {image_size[1]}, {train_pairs} pairs x "
    f"{epochs} epochs, batch {batch_size}"
    f" = {epochs * math.ceil(train_pairs / batch_size)} Adam steps per model, trained "
    "in this run"
)
for name, h in runs.items():
    print(
        f"{name:<12} loss {h['loss'][0]:.4f} -> {h['loss'][-1]:.4f} | val Dice "
        f"{h['val_dice'][-1]:.4f} "
        f"| val folding {h['val_folding'][-1]:.4f} %"
    )
print(f"{'identity':<12} val Dice {identity_dice:.4f}")
cpu = {name: sum(h["cpu_seconds"]) for name, h in runs.items()}
print(
    f"equal epochs, unequal compute: SearchMorph's steps took {cpu['SearchMorph']:.1f} "
    f"CPU s, VoxelMorph's {cpu['VoxelMorph']:.1f} "
    f"({cpu['SearchMorph'] / cpu['VoxelMorph']:.1f} x)"
)
for name, h in runs.items():
    g = h["val_dice"][-1] - identity_dice
    verdict = "above" if g > 0.005 else "below" if g < -0.005 else "within 0.005 of"
    print(
        f"{name}: loss fell by {h['loss'][0] - h['loss'][-1]:.4f}; val Dice ends "
        f"{verdict} the identity "
        f"({round(g, 4) + 0.0:+.4f}); largest displacement on the val pairs "
        f"{reach[name]:.2f} px"
        + (
            " (under half a pixel: nearest-neighbour label warping moves no label, so "
            "Dice cannot change yet)."
            if reach[name] < 0.5
            else "."
        )
    )

# %% [markdown]
# The numbers above are not checked by `pytest --nbval`: 48 Adam steps amplify float rounding, so reruns on
# other machines or thread counts differ in the third or fourth decimal. The checked cell states what holds
# with a margin larger than that spread.

# %% tags=["nbval-check-output"]
# Checked: the budget (exact) and verdicts whose margins (0.01 Dice, half a pixel) are
# ten times the
# run-to-run spread after 48 Adam steps (~1e-3).
print(f"budget: {epochs * math.ceil(train_pairs / batch_size)} Adam steps per model")
for name, h in runs.items():
    g = h["val_dice"][-1] - identity_dice
    verdict = "above" if g > 0.01 else "below" if g < -0.01 else "within 0.01 of"
    print(
        f"{name}: loss fell: {h['loss'][-1] < h['loss'][0]}; val Dice ends {verdict} "
        "the identity; "
        f"largest displacement over half a pixel: {reach[name] > 0.5}"
    )

# %% [markdown]
# The lines above are generated from the numbers, so they stay true whatever the parameters are. What to expect:
# a network that starts at the identity needs many steps to learn fields of several pixels. Its loss falls through
# sub-pixel shifts before a single label moves (nearest-neighbour warping leaves labels in place below half a
# pixel), and early on its Dice can even dip below the identity's before it rises. With a few dozen steps a model
# has only started; which one starts faster is a real, but different, question from which one ends better. This
# is the honest scale of a CI run, and chapters 11-13 report their own numbers the same way.
#
# Equal epochs are also not an equal budget: a SearchMorph step costs several VoxelMorph steps (the line above
# says how many here), so the right-hand panel, Dice against the CPU seconds the steps used, is the fair view.
# The shipped models are trained that way, for the same CPU seconds each (`max_cpu_seconds` in `TrainConfig`),
# and chapter 11 plots their curves against seconds.

# %% [markdown]
# ## One GPU, several GPUs
#
# The loop above runs in one process. On a GPU it is the same command with `--device cuda` (or nothing: cuda is
# picked when present). Past one GPU we use torch's own engine: `torchrun --nproc_per_node=N` starts N copies of
# the command, and `train` sees them through the environment torchrun sets (`WORLD_SIZE`, `RANK`, `LOCAL_RANK`).
# Each process wraps the model in `DistributedDataParallel` (nccl on GPUs, process $k$ on `cuda:k`; gloo on CPU),
# trains on its own shard of every epoch (`DistributedSampler`) with `batch_size` pairs per step, and the
# gradients are averaged, so one step sees `batch_size` $\times$ N pairs. Rank 0 alone validates, prints and
# writes `checkpoint.pt`, in the same format as one process writes, so everything in this book reads it, and
# `--resume` continues it with any number of processes. A CPU budget (`max_cpu_seconds`) counts the seconds of
# all processes together, and every process stops at the same step.
#
# This book's machine has no GPU, so we give no GPU timings. What we did measure: `tests/test_distributed.py`
# trains a tiny SearchMorph with 2 CPU processes (gloo), checks that both took their steps and ended with the
# same weights as the one checkpoint, and resumes it with 1 process and back with 2, in 32 s on this project's
# 2-core CPU (shared with running trainings).
# The commands, printed rather than run (a notebook is one process):

# %%
from searchmorph_lite.distributed import env_world

rank, world_size, _ = env_world()  # (0, 1, 0) outside torchrun: no process group
print(f"this notebook: {world_size} process, rank {rank}\n")
train_cmd = "-m searchmorph_lite train --config $CONFIG --out"
commands = {
    "one GPU": f"python {train_cmd} runs/brain2d --device cuda",
    "4 GPUs of one machine": f"torchrun --nproc_per_node=4 {train_cmd} runs/4gpu",
    "2 CPU processes (gloo)": "OMP_NUM_THREADS=1 torchrun --nproc_per_node=2 \\\n"
    f"    {train_cmd} runs/2cpu --device cpu",
}
print("CONFIG=configs/brain2d_searchmorph.yaml")
for what, command in commands.items():
    print(f"# {what}\n{command}")

# %% [markdown]
# ## Speed, and what a full run costs
#
# Training speed in pairs per second, from the epoch times of these runs (the loop only, without validation; on a
# shared machine these vary from run to run):

# %%
speed = {name: train_pairs / float(np.median(h["seconds"])) for name, h in runs.items()}
for name, pps in speed.items():
    print(
        f"{name:<12} {pps:6.2f} training pairs/s at {image_size[0]} x {image_size[1]} "
        f"on {HARDWARE}"
    )
print(
    f"SearchMorph trains {speed['VoxelMorph'] / speed['SearchMorph']:.1f}x slower than "
    "VoxelMorph per pair here"
)

# %% [markdown]
# Cost grows roughly with the number of pixels, so these rates give a first estimate of a full run at the paper's
# size. The paper trains 1500 epochs; on a GPU (Colab's T4 or better) we estimate a few hundred epochs of brain2d's
# 400 pairs at hours: an estimate, not a measurement (no GPU has run this book yet). For a GPU run, pass `configs/book_gpu.yaml` to papermill (its `full` section sets
# `image_size = (192, 160)`, `train_pairs = 400`, `epochs = 100`, `val_pairs = 40` and `runs_dir = "auto"`), or set
# them in the parameters cell, or use the command line with `configs/brain2d_searchmorph.yaml` and `--epochs`.
# Chapter 11 with `runs_dir = "auto"` then scores the two runs, trained on `brain2d`'s atlas pairs, on
# `brain2d-subjects`' test pairs (virtual subjects, with bias, blur and noise): images unlike their training
# pairs, a harder test than their validation Dice.

# %%
scale = (192 * 160) / (image_size[0] * image_size[1])
for name, pps in speed.items():
    hours = 400 * 100 * scale / pps / 3600
    print(
        f"{name:<12} 400 pairs x 100 epochs at 192 x 160 on this device: about "
        f"{hours:.0f} h "
        f"(rough: pixel-count scaling of this run's rate)"
    )

# %% [markdown]
# ## The sequence loss at work
#
# Which iterations does the trained SearchMorph improve? We score eq. 9 for each of its four fields on a
# validation pair; the bars' colours show the weight each one gets in the loss.

# %%
item = val_items[0]
m_val, f_val = item["moving"][None].to(device), item["fixed"][None].to(device)
with torch.no_grad():
    res = models["SearchMorph"](m_val, f_val)
per_iter = [
    sm.registration_loss(sm.warp(m_val, fl), f_val, fl, "lncc", 2.0).item()
    for fl in res.flows
]
identity_loss = sm.registration_loss(
    m_val, f_val, torch.zeros_like(res.flow), "lncc", 2.0
).item()
fig, ax = plt.subplots(figsize=(6, 3.6))
bars = ax.bar(
    range(1, n_iter + 1),
    [v - identity_loss for v in per_iter],
    color=plt.cm.Blues([0.4 + 0.6 * w / max(weights) for w in weights]),
)
ax.axhline(0, color="k", lw=0.8)
ax.set(
    xlabel="iteration i",
    ylabel="eq. 9 of phi_i  minus  eq. 9 of identity",
    title="Loss of each iteration's field (lower is better)",
    xticks=range(1, n_iter + 1),
)
plt.show()

# %% [markdown]
# ## The pretrained models: history and model card
#
# The checkpoints that ship with the package (`searchmorph_lite/pretrained/*.pt`) were trained with the same
# `train` on the project's CPU; their metadata says on what data, for how long, on which hardware. When they are
# installed (and `use_pretrained` is on) we plot their stored history here.

# %%
shipped = sm.available_pretrained() if use_pretrained else []
print(
    "pretrained checkpoints installed:",
    ", ".join(shipped) or "none (this installation ships no .pt files)",
)
cards = {
    name: {
        "model": sm.read_checkpoint(pretrained_path(name))["model"],
        **sm.read_checkpoint(pretrained_path(name))["metadata"],
    }
    for name in shipped
}
rows = {
    name: {
        "model": c["model"],
        "data": c["dataset"],
        "size": " x ".join(map(str, c["image_size"])),
        "pairs x epochs": f"{c['train_pairs']} x {c['epochs']}",
        "train time (min)": round(c["wall_time_s"] / 60),
        "val Dice": round(c["history"]["val_dice"][-1], 3),
        "test Dice": round(c["test_dice_mean"], 3),
    }
    for name, c in cards.items()
}
if rows:
    display(pd.DataFrame(rows).T.rename_axis("checkpoint"))
for hardware in sorted({c["hardware"] for c in cards.values()}):
    print(
        f"\ntrained on: {hardware}\n  "
        + ", ".join(n for n, c in cards.items() if c["hardware"] == hardware)
    )

# %% [markdown]
# The full model card, with every configuration, is `searchmorph_lite/pretrained/MODEL_CARD.md`. Validation Dice
# after each epoch, as `train` stored it (the first `val_pairs` validation pairs, never the test pairs), against
# the CPU seconds of training steps where every run of a panel recorded them (else against the epoch): models
# trained for the same seconds then end at the same x, however many epochs each ran.

# %%
datasets = sorted({c["dataset"] for c in cards.values()})
if datasets:
    cols = min(2, len(datasets))  # two panels a row: legible at the page's width
    rows_ = math.ceil(len(datasets) / cols)
    fig, axes = plt.subplots(
        rows_,
        cols,
        figsize=(5.4 * cols, 3.6 * rows_),
        constrained_layout=True,
        squeeze=False,
    )
    for ax in axes.flat[len(datasets) :]:
        ax.axis("off")
    for ax, data in zip(axes.flat, datasets):
        panel = {n: c for n, c in cards.items() if c["dataset"] == data}
        by_seconds = all(
            c["history"].get("cpu_seconds")
            and None not in c["history"]["cpu_seconds"]
            and len(c["history"]["cpu_seconds"]) == len(c["history"]["val_dice"])
            for c in panel.values()
        )
        for name, c in panel.items():
            h = c["history"]
            x = np.cumsum(h["cpu_seconds"]) if by_seconds else h["epoch"]
            ax.plot(
                x,
                h["val_dice"],
                "o-" if c["model"] == "SearchMorph" else "s--",
                ms=3,
                label=name,
            )
        ax.set(
            xlabel="CPU seconds of training steps" if by_seconds else "epoch",
            ylabel="validation mean Dice",
            title=f"Pretrained on {data}",
        )
        ax.legend(fontsize=8)
    plt.show()
else:
    print("no pretrained checkpoint installed: nothing to plot")

# %% [markdown]
# ## Exercises
#
# 1. Train SearchMorph with `iteration_weight=0` (only the last field is scored) and with `1` (all equal), with the
#    same budget, and compare the bar chart of per-iteration losses above. What changes for the early fields?
#
# ````{dropdown} Solution
# ```python
# for gamma in (0.0, 1.0):
#     cfg_g = dataclasses.replace(ci_config("SearchMorph", {"radius": 3, "iterations": 4}), iteration_weight=gamma)
#     train(cfg_g, run_dir / f"gamma{gamma}", device=device, progress=False)
#     model_g = sm.load_checkpoint(run_dir / f"gamma{gamma}" / "checkpoint.pt", device=device)
#     with torch.no_grad():
#         flows = model_g(m_val, f_val).flows
#     print(gamma, [round(sm.registration_loss(sm.warp(m_val, fl), f_val, fl).item(), 4) for fl in flows])
# ```
# With $\gamma = 0$ nothing asks the early fields to be good on their own, and with enough training they are
# typically worse than with $\gamma = 0.8$ while the last one is about as good; with $\gamma = 1$ the early fields
# are pushed hardest. At the CI budget all four losses stay close to each other: run it with a larger budget.
# ````
#
# 2. Why does the normalisation by $\sum_i \gamma^{N-i}$ matter when you compare `alpha` across models with a
#    different number of iterations?
#
# ```{dropdown} Solution
# Without it the loss of an $N$-iteration model is a sum of about $1/(1-\gamma)$ copies of eq. 9 (up to 5 for
# $\gamma = 0.8$), so both the similarity and the smoothness terms, and their gradients, would be several times
# larger than for VoxelMorph's single field. Adam is insensitive to a global scale, but the printed losses and any
# learning-rate schedule would not be comparable; dividing keeps the loss on eq. 9's scale for every $N$.
# ```
#
# ## What we built
#
# The sequence loss (eq. 9 over all iterations, weights $\gamma^{N-i}$), proved equal to `registration_loss_all`.
# One Adam step by hand equal to `train`; configs, checkpoints, `--resume`, and the CLI.
# A same-budget CI run of SearchMorph and VoxelMorph, its curves, its speed, and what a full run costs.
#
# [Next: 11. Brain MR evaluation](11_brain_evaluation.ipynb)
