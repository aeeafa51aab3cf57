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
# # 4. Feature and context encoders
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/searchmorph-book/searchmorph-book/blob/main/notebooks/04_encoders.ipynb)
#
# SearchMorph never compares pixel intensities directly. It first turns the moving image $M$ and the fixed image
# $F$ into two feature maps $h(M)$ and $h(F)$, whose inner products become the cost volume of the next chapter,
# and into a *context* map that the deformation-field iterator reads at every step (Sec. III-A). Both come from
# one U-Net-like trunk shared by two small heads. In this chapter we build a small trunk by hand, check it against
# the library's `UNetTrunk`, count its parameters, meet the library's `SharedEncoder` (one trunk, two heads) and
# prove that the two encoders really share their weights, and look at what the paper's "split the 8-channel
# feature map into two 4-channel maps" can mean.

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
from torch import nn

import searchmorph_lite as sm
from searchmorph_lite.book import n_params, setup, you_are_here
from searchmorph_lite.data import load_dataset

# %% tags=["parameters"]
seed = 0
device = "auto"
# the paper's brain size; one untrained forward pass: < 1 s on CPU
image_size = (192, 160)
small_widths = (8, 16, 16)  # channels of our hand-built trunk at 1, 1/2, 1/4 resolution
pair_index = 1  # which brain2d test pair to look at

# %%
device = setup(seed, device)  # seeds torch; "auto": CUDA when present, else CPU

# %% tags=["remove-input"]
you_are_here("encoder")

# %% [markdown]
# ## What the paper says
#
# Sec. III-A fixes five facts and leaves the rest to an appendix we do not have:
#
# 1. the feature encoder and the context encoder are "similar in structure to U-Net, with a skip-connect
#    structure";
# 2. they "share weights for each layer except for the last layer": one trunk, two heads;
# 3. after each convolution comes batch normalization and a Leaky ReLU;
# 4. the feature head outputs 8 channels, split into two 4-channel maps $h(M)$ and $h(F)$; the context head
#    outputs 32 channels;
# 5. the features live at half resolution (the field is "2x upsampled" at the end, Sec. III-C).
#
# In symbols, for images of size $H \times W$:
#
# $$h(M),\ h(F) \in \mathbb{R}^{\frac H2 \times \frac W2 \times 4}, \qquad
#   \text{context} \in \mathbb{R}^{\frac H2 \times \frac W2 \times 32}.$$
#
# ## The unit: convolution, batch norm, Leaky ReLU
#
# Every layer of the trunk is the same three-step unit. The convolution has no bias because the batch norm right
# after it subtracts the mean anyway and adds its own learned shift. The paper does not give the Leaky ReLU's
# slope; we use 0.2, as VoxelMorph does.


# %%
def block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3x3 conv (no bias) -> BatchNorm -> LeakyReLU(0.2): (B, cin, H, W) -> (B, cout,
    H/s, W/s)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(0.2, inplace=True),
    )


# %% [markdown]
# ## A small trunk by hand
#
# The smallest U-shape that ends at half resolution: one block at full resolution, a strided block down to 1/2
# (where the features will live), one more down to 1/4, and one block back up at 1/2 that also sees the 1/2-level
# skip connection. We name the layers `down` and `up`, as the library does, so that we can copy weights across.


# %%
class TinyTrunk(nn.Module):
    """(B, 2, H, W) -> (B, widths[1], H/2, W/2): down to 1/4, one step up to 1/2 with a
    skip."""

    def __init__(
        self, cin: int = 2, widths: tuple[int, int, int] = (8, 16, 16)
    ) -> None:
        super().__init__()
        w0, w1, w2 = widths
        self.down = nn.ModuleList(
            [block(cin, w0), block(w0, w1, stride=2), block(w1, w2, stride=2)]
        )
        self.up = nn.ModuleList([block(w2 + w1, w1)])  # upsampled 1/4 level + 1/2 skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = self.down[0](x)  # full resolution
        s1 = self.down[1](s0)  # 1/2
        s2 = self.down[2](s1)  # 1/4
        up = F.interpolate(s2, scale_factor=2, mode="bilinear")
        return self.up[0](torch.cat([up, s1], dim=1))


# %% [markdown]
# Both heads are plain 3x3 convolutions (with bias, no normalisation: their outputs are features, not
# activations to normalise). Here is the whole feature extractor on a pair of random images, with the shape after
# every step. The trunk sees the pair stacked as two channels; we come back to that choice below.

# %% tags=["nbval-check-output"]
trunk = TinyTrunk(2, small_widths)
feature_head = nn.Conv2d(small_widths[1], 8, 3, padding=1)
context_head = nn.Conv2d(small_widths[1], 32, 3, padding=1)

x = torch.rand(1, 2, *image_size)  # [M, F] stacked
s0 = trunk.down[0](x)
s1 = trunk.down[1](s0)
s2 = trunk.down[2](s1)
out = trunk(x)
features, context = feature_head(out), context_head(out)
h_m, h_f = features[:, :4], features[:, 4:]  # the paper's split
steps = [
    ("input [M, F]", x),
    ("level 1", s0),
    ("level 1/2", s1),
    ("level 1/4", s2),
    ("trunk output", out),
    ("h(M)", h_m),
    ("h(F)", h_f),
    ("context", context),
]
for name, t in steps:
    print(f"{name:<14}{tuple(t.shape)}")

# %% [markdown]
# ## Counting parameters
#
# A 3x3 convolution from $c_{in}$ to $c_{out}$ channels has $9\,c_{in}c_{out}$ weights (plus $c_{out}$ biases in
# the heads); a batch norm has a scale and a shift per channel ($2c_{out}$; its running mean and variance are
# buffers, not parameters). Counting by hand and asking PyTorch must agree. `n_params(module)`, from
# `searchmorph_lite.book` (later chapters use it too), asks PyTorch: `sum(p.numel() for p in module.parameters())`.


# %% tags=["nbval-check-output"]
w0, w1, w2 = small_widths
by_hand = {
    "down[0]": 9 * 2 * w0 + 2 * w0,
    "down[1]": 9 * w0 * w1 + 2 * w1,
    "down[2]": 9 * w1 * w2 + 2 * w2,
    "up[0]": 9 * (w2 + w1) * w1 + 2 * w1,
    "feature head": 9 * w1 * 8 + 8,
    "context head": 9 * w1 * 32 + 32,
}
modules = {
    "down[0]": trunk.down[0],
    "down[1]": trunk.down[1],
    "down[2]": trunk.down[2],
    "up[0]": trunk.up[0],
    "feature head": feature_head,
    "context head": context_head,
}
for name, count in by_hand.items():
    assert count == n_params(modules[name]), name
    print(f"{name:<14}{count:>7,}")
print(f"{'total':<14}{sum(by_hand.values()):>7,}")

# %% [markdown]
# ## The proof: our trunk is the library's `UNetTrunk`
#
# `sm.UNetTrunk(in_channels, widths)` generalises `TinyTrunk` to any number of levels (the default, `(16, 32, 32,
# 32)`, goes down to 1/8 and climbs back to 1/2). With three widths it is exactly our trunk: copy our weights
# into it and the outputs match, in training mode (batch statistics) and in evaluation mode (running statistics).

# %%
library_trunk = sm.UNetTrunk(2, small_widths)
library_trunk.load_state_dict(
    trunk.state_dict()
)  # same names and shapes: a strict load
for mode in ("train", "eval"):
    trunk.train(mode == "train")
    library_trunk.train(mode == "train")
    with torch.no_grad():
        err = (trunk(x) - library_trunk(x)).abs().max().item()
    assert torch.allclose(trunk(x), library_trunk(x), atol=1e-6)
    print(f"{mode}: max |hand-built - library| = {err:.2e}")

# %% [markdown]
# Every stride-2 layer rounds odd sizes up and every upsampling doubles, so the skip connection only lines up when
# the input size is divisible by $2^{(\text{levels}-1)}$: `UNetTrunk.size_multiple` is 4 here and 8 for the
# default widths.
#
# ## Shared weights, for real
#
# From now on we use the library. `SearchMorph` owns one `sm.SharedEncoder`, `model.encoder`, which is
# this section's whole design: it holds **one** `UNetTrunk` (`encoder.trunk`) and two last layers, a
# `FeatureHead` (`encoder.feature_head`, its convolution at `.conv`) and a `ContextHead`
# (`encoder.context_head`). `model.encoder(moving, fixed)` runs the trunk once and gives its output to both
# heads; it returns `(h_m, h_f, context)`. (The library also has `sm.FeatureEncoder(trunk, feature_dim)` and
# `sm.ContextEncoder(trunk, context_dim)`, each a trunk plus one head, for using an encoder on its own.)

# %% tags=["nbval-check-output"]
model = sm.SearchMorph(sm.SearchMorphConfig()).to(device)
encoder = model.encoder
print(
    type(encoder).__name__,
    "| trunk:",
    type(encoder.trunk).__name__,
    "| heads:",
    type(encoder.feature_head).__name__,
    type(encoder.context_head).__name__,
)
print("feature head:", encoder.feature_head.conv)
print("context head:", encoder.context_head.conv)
a, b = torch.rand(2, 1, 1, *image_size, device=device)  # two random images
h_m, h_f, context = encoder(a, b)
print(
    "h(M)",
    tuple(h_m.shape),
    "| h(F)",
    tuple(h_f.shape),
    "| context",
    tuple(context.shape),
)
print(
    "trunk:",
    f"{n_params(encoder.trunk):,}",
    "| feature head:",
    f"{n_params(encoder.feature_head):,}",
    "| context head:",
    f"{n_params(encoder.context_head):,}",
)

# %% [markdown]
# Sharing is not copying, and it is not "two modules that happen to hold the same trunk" either. The state dict,
# which is what a checkpoint stores, shows the difference. Hand one trunk object to a standalone
# `FeatureEncoder` and a standalone `ContextEncoder`: `parameters()` skips the duplicates, but the state dict
# stores the trunk's tensors once per owner (the library's first design did this: 92 keys, the trunk's 36 twice).
# `SharedEncoder` owns the trunk once.


# %% tags=["nbval-check-output"]
def trunk_keys(module: nn.Module) -> list[str]:
    return [k for k in module.state_dict() if ".trunk." in f".{k}"]


shared_trunk = sm.UNetTrunk(2)
two_owners = nn.ModuleDict(
    {
        "features": sm.FeatureEncoder(shared_trunk, 4),
        "context": sm.ContextEncoder(shared_trunk, 32),
    }
)
for name, module in (
    ("FeatureEncoder + ContextEncoder on one trunk", two_owners),
    ("SharedEncoder (model.encoder)", encoder),
):
    print(
        f"{name:<46} {len(module.state_dict()):>3} state-dict tensors, "
        f"{len(trunk_keys(module)):>2} of them the trunk's; {n_params(module):,} "
        "parameters"
    )
print(
    "SearchMorph state dict:",
    len(model.state_dict()),
    "tensors;",
    len(trunk_keys(model)),
    "trunk tensors, stored once",
)
assert len(trunk_keys(model)) == len(shared_trunk.state_dict())

# %% [markdown]
# The gradients prove the sharing too. A loss on the features alone reaches the trunk but not the context head;
# a loss on the context alone reaches the trunk but not the feature head; and with both losses the trunk
# receives the sum of the two gradients.

# %%
item = load_dataset("brain2d", "test", num_pairs=pair_index + 1, image_size=image_size)[
    pair_index
]
moving, fixed = item["moving"][None].to(device), item["fixed"][None].to(device)


def trunk_grads(
    use_features: bool, use_context: bool
) -> tuple[torch.Tensor, bool, bool]:
    """Flattened trunk gradient, and whether the feature / context heads received a
    gradient."""
    model.zero_grad(set_to_none=True)
    h_m, h_f, context = encoder(moving, fixed)  # one trunk pass, both heads
    loss = 0.0
    if use_features:
        loss = loss + h_m.square().mean() + h_f.square().mean()
    if use_context:
        loss = loss + context.square().mean()
    loss.backward()
    grad = torch.cat([p.grad.flatten() for p in encoder.trunk.parameters()])
    reached = (
        encoder.feature_head.conv.weight.grad is not None,
        encoder.context_head.conv.weight.grad is not None,
    )
    return grad, *reached


# %% tags=["nbval-check-output"]
g_feat, *heads_feat = trunk_grads(True, False)
g_ctx, *heads_ctx = trunk_grads(False, True)
g_both, *heads_both = trunk_grads(True, True)
for name, g, heads in [
    ("features only", g_feat, heads_feat),
    ("context only", g_ctx, heads_ctx),
]:
    print(
        f"{name:<14} trunk gradient nonzero: {bool(g.abs().sum() > 0)} "
        f"| heads reached (feat, ctx): {heads}"
    )
rel = (
    (g_both - g_feat - g_ctx).norm() / g_both.norm()
).item()  # float rounding only: ~1e-7
print("both: trunk gradient = sum of the two:", rel < 1e-5)

# %% [markdown]
# (The three forward passes run in training mode, so batch norm normalises with this pair's statistics each time
# and the three trunk outputs are identical; that is what makes the gradients add up exactly.)
#
# ## What does "split into two 4-channel maps" mean?
#
# The paper says the feature encoder's last layer outputs 8 channels, split into $h(M)$ and $h(F)$ "corresponding
# to the input F and M". It does not say what the trunk sees. Two readings:
#
# * **joint** (our default, `SearchMorphConfig(joint_encoder=True)`): the trunk sees $[M, F]$ stacked as two
#   channels and the head's 8 channels are cut in half. This is the literal reading. Both halves depend on both
#   images; nothing but training makes the first half describe $M$.
# * **siamese** (`joint_encoder=False`, as RAFT): the trunk runs on each image alone (the two images go through
#   as a batch of two) and the head emits 4 channels per image, so "8 channels" is the two 4-channel maps
#   together. $h(M)$ depends on $M$ only, which is what makes an inner product $\langle h(M)_p, h(F)_q\rangle$
#   a similarity between two independent descriptors. The context head then sees both trunk outputs side by
#   side.
#
# Change $F$ and watch $h(M)$:

# %% tags=["nbval-check-output"]
other_fixed = torch.rand_like(fixed)
for joint in (True, False):
    torch.manual_seed(seed)
    enc = sm.SearchMorph(sm.SearchMorphConfig(joint_encoder=joint)).to(device).encoder
    for mode in ("eval", "train"):
        enc.train(mode == "train")
        with torch.no_grad():
            change = (
                (enc(moving, fixed)[0] - enc(moving, other_fixed)[0]).abs().max().item()
            )
        print(
            f"{'joint' if joint else 'siamese':<8} {mode:<5}: h(M) changes with F: "
            f"{change > 1e-6}"
        )
    n_feature = n_params(enc.trunk) + n_params(enc.feature_head)
    print(
        f"{'':<8} parameters of the feature encoder (trunk + feature head): "
        f"{n_feature:,}"
    )

# %% [markdown]
# The siamese encoder keeps $h(M)$ independent of $F$ only in evaluation mode: in training mode, batch norm
# computes its statistics over the whole batch, which holds both images. RAFT avoids this by giving its feature
# encoder instance normalisation; the paper prescribes batch normalisation, so we keep it and note the leak.
# Which reading trains better is an empirical question the paper does not answer; the config makes it a one-word
# change.
#
# ## What an untrained encoder sees
#
# Below, the four channels of $h(M)$ and $h(F)$ and four of the 32 context channels of the (seeded, untrained)
# joint encoder on a brain pair, in training mode so that batch norm uses this pair's statistics (an untrained
# batch norm's running statistics are 0 and 1, which leaves activations unscaled).

# %%
model.train()
with torch.no_grad():
    h_m, h_f, ctx = encoder(moving, fixed)

m0, f0 = moving[0, 0], fixed[0, 0]
yy, xx = torch.meshgrid(
    torch.arange(m0.shape[0]), torch.arange(m0.shape[1]), indexing="ij"
)
checker = torch.where((yy // 16 + xx // 16) % 2 == 0, m0, f0)  # where M and F disagree
rows = [
    ("images", [m0, f0, checker]),
    ("h(M)", h_m[0]),
    ("h(F)", h_f[0]),
    ("context", ctx[0, :4]),
]
image_titles = ["moving M", "fixed F", "checkerboard of M and F"]
fig, axes = plt.subplots(4, 4, figsize=(10, 11))
for r, (label, maps) in enumerate(rows):
    lim = max(m.abs().max().item() for m in maps)  # one symmetric colour scale per row
    if r == 0:  # three images, and the fourth cell holds the row's colour bar
        axes[0, 3].remove()
    for c, ax in enumerate(axes[r][: len(maps)]):
        ax.set_xticks([]), ax.set_yticks([])
        m = maps[c].cpu()
        im = (
            ax.imshow(m, cmap="gray", vmin=0, vmax=1)
            if r == 0
            else ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim)
        )
        ax.set_title(
            image_titles[c] if r == 0 else f"{label}, channel {c}", fontsize=10
        )
    axes[r, 0].set_ylabel(f"{label}  {tuple(maps[0].shape)}")
    fig.colorbar(
        im,
        ax=list(axes[r][: len(maps)]),
        shrink=0.8,
        label="intensity" if r == 0 else "activation",
    )
fig.suptitle(
    "Untrained joint encoder on a brain2d test pair (features at 1/2 resolution)"
)
plt.show()

# %% [markdown]
# Random filters act like smoothed intensity and edge detectors: every map already follows the anatomy (skull,
# ventricles, the grey-white boundary), at half the image's resolution. In the joint encoder, $h(M)$ and $h(F)$
# are just two groups of channels of one head, each reacting to both images. Nothing here is a *descriptor* yet.
# Training with the similarity loss (later chapters) shapes them so that
# $\langle h(M)_p, h(F)_q \rangle$ is large exactly when $p$ and $q$ are corresponding points, which is what the
# cost volume of the next chapter measures.
#
# ## Exercises
#
# 1. Why is the siamese feature encoder smaller than the joint one (61,556 vs 62,856 parameters above), and why
#    is its context head twice as large? Check your answer by counting.
#
# ```{dropdown} Solution
# The siamese trunk's first convolution sees one channel instead of two: $9 \cdot 16 = 144$ fewer weights; its
# feature head emits 4 channels per image instead of 8: $9 \cdot 32 \cdot 4 + 4 = 1{,}156$ fewer parameters;
# $144 + 1{,}156 = 1{,}300 = 62{,}856 - 61{,}556$. Its context head sees both trunk outputs concatenated,
# $2 \cdot 32 = 64$ channels instead of 32, so it has $9 \cdot 64 \cdot 32 + 32 = 18{,}464$ parameters instead of
# $9{,}248$.
# ```
#
# 2. Run `sm.UNetTrunk(2)(torch.rand(1, 2, 100, 80))`. What fails, and why? Which sizes work?
#
# ````{dropdown} Solution
# The concatenation with the skip connection fails: $100 \to 50 \to 25 \to 13$ on the way down (a stride-2,
# padding-1, 3x3 convolution gives $\lceil n/2 \rceil$), and $13 \to 26 \neq 25$ on the way up. Sizes divisible by
# `UNetTrunk(2).size_multiple` $= 2^3 = 8$ work. `SearchMorph` asks for a multiple of 16
# (`model.size_multiple`, because the correlation pyramid's coarsest level pools 8 half-resolution pixels), and
# `sm.register` pads images for you.
# ```python
# print(sm.UNetTrunk(2).size_multiple, model.size_multiple)   # 8 16
# ```
# ````
#
# ## What we built
#
# A U-Net trunk of conv-BN-LeakyReLU blocks, identical to `sm.UNetTrunk`, ending at half resolution.
# `sm.SharedEncoder`: one trunk, stored once and run once, and two heads, a `FeatureHead` ($h(M)$, $h(F)$: 4
# channels each) and a `ContextHead` (32); the trunk's gradient is the sum of both heads' gradients.
# The paper's 8-channel split read as a joint encoder, versus siamese: `SearchMorphConfig(joint_encoder=...)`.
#
# [Next: 5. The cost volume](05_cost_volume.ipynb)
