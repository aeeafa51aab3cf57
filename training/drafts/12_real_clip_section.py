# Draft: the cells that replace chapter 12's "A real clip, without labels" section once the retrained echo2d and
# echo2d-voxelmorph ship (issue 12: SyN, refinement and the iteration sweep on the real clip). Parameters to add to
# the chapter's parameters cell: clip_refine_steps = None (the model's metadata["refine_steps"], else 60) and
# clip_max_iterations = 12.

# %% [markdown]
# ## A real clip, without labels
#
# On `echo2d-clip` there is nothing to compute Dice with. We use what needs no labels:
#
# - **NCC** before and after registration (the mean local normalised cross-correlation of chapter 3, square-rooted),
#   the definition `searchmorph_lite.train.evaluate` uses;
# - **% folding** of the field;
# - **cycle consistency**: register ED to frame $t$ ($u_{0t}$, on frame $t$'s grid) and frame $t$ back to ED
#   ($u_{t0}$, on ED's grid). Following $u_{0t}$ from a pixel $p$ of frame $t$ lands at $p + u_{0t}(p)$ in ED, and
#   $u_{t0}$ should bring it back to $p$. The residual
#
# $$u_{cycle}(p) = u_{0t}(p) + u_{t0}\big(p + u_{0t}(p)\big)$$
#
# is `u_0t + warp(u_t0, u_0t)` (sampling a field is warping it) and would be zero for a perfectly consistent pair
# of registrations. We report its mean length in pixels inside the ultrasound sector.
#
# This clip is a test set: no model here was trained or tuned on it (the refinement settings were chosen on
# synthetic validation pairs). Every method, SyN included, goes through the same `clip_scores`.

# %%
from searchmorph_lite.losses import local_ncc

clip = load_dataset("echo2d-clip", "test", image_size=size, frames=clip_frames)
video = clip.sequence(0)["frames"]  # (T, 1, H, W), on the CPU
sector = video.amax(dim=0)[0] > 0.02  # pixels inside the ultrasound sector in some frame
if clip_refine_steps is None:
    clip_refine_steps = int((models["SearchMorph"].metadata or {}).get("refine_steps") or 60)
CLIP_REFINED = f"SearchMorph + {clip_refine_steps} refinement steps"


def ncc_of(a: torch.Tensor, b: torch.Tensor) -> float:
    """Square-rooted mean local NCC of two (H, W) frames (evaluate's definition)."""
    return local_ncc(a[None, None], b[None, None]).flatten(1).mean(1).sqrt().item()


def clip_scores(method) -> dict:
    """Mean NCC after, % folding and cycle residual (px) of ``method(moving, fixed) ->
    flow`` over ED -> t, t = 1..T-1."""
    ncc_after, folding, cycle = [], [], []
    ed = video[0, 0]
    for t in range(1, len(video)):
        frame = video[t, 0]
        u_0t = torch.from_numpy(np.ascontiguousarray(method(ed.numpy(), frame.numpy())))[None].float()
        u_t0 = torch.from_numpy(np.ascontiguousarray(method(frame.numpy(), ed.numpy())))[None].float()
        warped = sm.warp(ed[None, None], u_0t)[0, 0]
        ncc_after.append(ncc_of(warped, frame))
        folding.append(sm.folding_ratio(u_0t).item())
        residual = (u_0t + sm.warp(u_t0, u_0t)).norm(dim=1)[0]
        cycle.append(residual[sector].mean().item())
    return {"ncc": np.mean(ncc_after), "folding": np.mean(folding), "cycle": np.mean(cycle)}


def clip_network(kind: str, **kwargs):
    return lambda m, f: sm.register(m, f, models[kind], normalize=False, **kwargs)[1]


CLIP_METHODS = {
    "Identity": lambda m, f: np.zeros((2, *m.shape), dtype=np.float32),
    "SyN": lambda m, f: ants_register(m, f, "SyN", seed=seed + 1)[1],
    "VoxelMorph": clip_network("VoxelMorph"),
    "SearchMorph": clip_network("SearchMorph"),
    CLIP_REFINED: clip_network("SearchMorph", refine_steps=clip_refine_steps),
}
ncc_before = np.mean([ncc_of(video[0, 0], video[t, 0]) for t in range(1, len(video))])
clip_rows = {name: clip_scores(method) for name, method in CLIP_METHODS.items()}

# %% tags=["nbval-check-output"]
# Checked: 2 decimals for SyN (ANTs moves ~1e-4 between machines), 3 for the networks.
print(
    f"echo2d-clip (real A4C, no labels): {len(video)} frames at {size} x {size}, "
    f"ED -> t for t = 1..{len(video) - 1}; NCC before registration {ncc_before:.3f}"
)
for m, r in clip_rows.items():
    d = 2 if m == "SyN" else 3
    print(
        f"{m:<36} NCC {r['ncc']:.{d}f}, {r['folding']:.{d}f} % folding, "
        f"cycle residual {r['cycle']:.{d}f} px"
    )
syn = clip_rows["SyN"]["ncc"]
for m in ("VoxelMorph", "SearchMorph", CLIP_REFINED):
    gap = clip_rows[m]["ncc"] - syn
    side = "above" if gap > 0.005 else "below" if gap < -0.005 else "level with"
    print(f"{m} is {side} SyN on NCC ({clip_rows[m]['ncc']:.2f} vs {syn:.2f}).")

# %% [markdown]
# The iteration sweep on the clip: NCC and folding of SearchMorph's ED -> t fields after each iteration.

# %%
sweep_ncc, sweep_fold = [], []
with torch.no_grad():
    ed = video[:1].expand(len(video) - 1, -1, -1, -1).to(device)
    later = video[1:].to(device)
    flows = models["SearchMorph"](ed, later, iterations=clip_max_iterations).flows
    for fl in flows:
        warped = sm.warp(ed, fl).cpu()
        sweep_ncc.append(
            np.mean([ncc_of(warped[t, 0], later[t, 0].cpu()) for t in range(len(later))])
        )
        sweep_fold.append(sm.folding_ratio(fl.cpu()).mean().item())

# %% tags=["nbval-check-output"]
trained = models["SearchMorph"].config.iterations
for n in (1, trained, 2 * trained, 3 * trained):
    if n <= clip_max_iterations:
        print(f"{n:>2} iterations: NCC {sweep_ncc[n - 1]:.3f}, {sweep_fold[n - 1]:.3f} % folding")
