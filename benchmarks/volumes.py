"""3D registration from NIfTI files against ANTs: the targets of issue 21, measured paired on one machine.

Each pair is a brain3d test pair at 2 mm (two virtual subjects of MNI152, tissue labels 1-3), written as NIfTI
files the way real scans arrive: the fixed volume in RAS at 2 mm, the moving volume at ``--moving-mm`` in another
axis order with flips (a random one per pair, seeded) and its own field of view. Every method registers the files,
carries the moving labels onto the fixed grid, and is scored by the same code: mean Dice over the three tissues
against the fixed labels, % folding of the composed transform (det of its Jacobian on the fixed grid <= 0), and
the wall seconds of the registration (reading the files included, one thread, methods taking turns pair by pair in
a rotating order after one untimed run each: ``searchmorph_lite.scoring.interleave``, as every suite times).

Methods: ``identity`` (the headers alone), ANTs ``Affine`` and ``SyN`` (``type_of_transform="SyN"``: its own
rigid + affine + SyN stages), and through ``searchmorph_lite.register_images`` the affine stage alone, the models
(``--models``, default brain3d and brain3d-voxelmorph) alone and SearchMorph with refinement (``--refine``, the
model's recommendation by default). ``--axis-orders 2`` also registers every pair a second time with the moving
file in another axis order and reports the largest Dice change (the pipeline should not care).

Sets: ``test`` (brain3d's test control grids, unseen in training; T1 contrast), ``2x deformation`` and ``inverted
contrast`` (T2-like, 1 - T1 inside the brain: a contrast no training pair has). Run on an idle
machine (no training beside it): ``python benchmarks/volumes.py`` (the ``volumes`` suite of ``python -m
benchmarks``) writes benchmarks/volumes_results.{json,md}. Smoke run: ``--pairs 1 --sets test --refine 2 --out
/tmp/v``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import HERE, command, machine, set_threads, write_results  # noqa: E402

# test's own contrast is T1; "inverted contrast" (T2-like) is one no training pair has
SETS = {"test": {}, "2x deformation": {"max_displacement": 10.0}, "inverted contrast": {"contrast": "inverted"}}


def brain3d_affine(shape) -> np.ndarray:
    """Index -> RAS world of brain3d's 2 mm arrays (axes I, P, R), centred near the MNI origin."""
    a = np.array([[0, 0, 2.0, 0], [0, -2.0, 0, 0], [-2.0, 0, 0, 0], [0, 0, 0, 1]])
    a[:3, 3] = -a[:3, :3] @ ((np.array(shape) - 1) / 2) + [0.0, -18.0, 18.0]
    return a


def write_pair(item: dict, folder: Path, rng: np.random.Generator, moving_mm: float, order=None) -> dict[str, Path]:
    """The pair as NIfTI files: fixed and its labels in RAS at 2 mm; moving and its labels resampled to
    ``moving_mm`` in the axis order ``order`` (a permutation with flips; random when None)."""
    import nibabel as nib
    import torch

    from searchmorph_lite.affine import sample_world, world_grid

    shape = tuple(item["fixed"].shape[1:])
    src_affine = brain3d_affine(shape)
    paths = {}
    fixed = nib.as_closest_canonical(nib.Nifti1Image(item["fixed"][0].numpy(), src_affine))
    fixed_labels = nib.as_closest_canonical(nib.Nifti1Image(item["fixed_labels"][0].numpy().astype(np.int16),
                                                            src_affine))  # fmt: skip
    if order is None:
        perm = rng.permutation(3)
        flips = rng.random(3) < 0.5
    else:
        perm, flips = order
    # the moving grid: moving_mm voxels along world axes perm, flipped where asked, covering the same box
    extent = np.array(shape) * 2.0
    n = np.ceil(extent / moving_mm).astype(int)
    lin = np.zeros((3, 3))
    for k, axis in enumerate(perm):
        lin[axis, k] = -moving_mm if flips[k] else moving_mm
    grid_shape = tuple(int(n[a]) for a in perm)
    centre = src_affine[:3, :3] @ ((np.array(shape) - 1) / 2) + src_affine[:3, 3]
    affine = np.eye(4)
    affine[:3, :3] = lin
    affine[:3, 3] = centre - lin @ ((np.array(grid_shape) - 1) / 2)
    points = world_grid(grid_shape, torch.tensor(affine))
    for key, mode in (("moving", "bilinear"), ("moving_labels", "nearest")):
        data = torch.tensor(item[key][0].numpy(), dtype=torch.float64)[None]
        out = sample_world(data, torch.tensor(src_affine), points, mode=mode)[0].numpy()
        img = nib.Nifti1Image(out.astype(np.int16 if "labels" in key else np.float32), affine)
        paths[key] = folder / f"{key}.nii.gz"
        nib.save(img, paths[key])
    for key, img in (("fixed", fixed), ("fixed_labels", fixed_labels)):
        paths[key] = folder / f"{key}.nii.gz"
        nib.save(img, paths[key])
    paths["order"] = (tuple(int(p) for p in perm), tuple(bool(f) for f in flips))
    return paths


def tissue_dice(labels: np.ndarray, reference: np.ndarray) -> float:
    """Mean Dice over labels 1, 2, 3."""
    out = []
    for k in (1, 2, 3):
        a, b = labels == k, reference == k
        out.append(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))
    return float(np.mean(out))


def nan_mean(values: list[float]) -> float:
    """Mean of the values that are not nan (ANTs Affine has no warp to fold); nan, without a warning, if none."""
    kept = [v for v in values if not np.isnan(v)]
    return float(np.mean(kept)) if kept else float("nan")


def folding_of(displacement_vox: np.ndarray) -> float:
    """% of voxels where det(I + grad u) <= 0 for a field (3, *S) in voxels."""
    import torch

    from searchmorph_lite.metrics import folding_ratio

    return float(folding_ratio(torch.from_numpy(np.ascontiguousarray(displacement_vox))[None])[0])


def run_identity(paths: dict) -> tuple[np.ndarray, Callable[[], float]]:
    """(moving labels on the fixed grid through the two headers alone, its % folding: 0)."""
    import torch

    from searchmorph_lite.affine import sample_world, world_grid
    from searchmorph_lite.pipeline import as_image

    fixed = as_image(paths["fixed"], 3, "fixed")
    labels = as_image(paths["moving_labels"], 3, "labels")
    points = world_grid(fixed.data.shape, torch.tensor(fixed.affine))
    out = sample_world(torch.tensor(labels.data)[None], torch.tensor(labels.affine), points, mode="nearest")[0]
    return out.numpy(), lambda: 0.0


def run_ours(paths: dict, model, stage: str, refine) -> tuple[np.ndarray, Callable[[], float]]:
    """(carried labels, its % folding, computed when called: untimed) of register_images on the files."""
    from searchmorph_lite.pipeline import register_images

    reg = register_images(paths["moving"], paths["fixed"], model, stage=stage, refine_steps=refine)
    labels = reg.apply(paths["moving_labels"], labels=True)

    def folding() -> float:
        lin = reg.fixed.affine[:3, :3]
        return folding_of(np.linalg.solve(lin, reg.displacement.reshape(3, -1)).reshape(reg.displacement.shape))

    return labels, folding


def run_ants(paths: dict, transform: str) -> tuple[np.ndarray, Callable[[], float]]:
    """(carried labels, % folding of the SyN warp (nan for Affine), computed when called: untimed) of ANTs on the
    files."""
    import ants

    fixed, moving = ants.image_read(str(paths["fixed"])), ants.image_read(str(paths["moving"]))
    reg = ants.registration(fixed, moving, type_of_transform=transform, random_seed=1)
    labels = ants.apply_transforms(fixed, ants.image_read(str(paths["moving_labels"])), reg["fwdtransforms"],
                                   interpolator="nearestNeighbor").numpy()  # fmt: skip

    def folding() -> float:
        warps = [t for t in reg["fwdtransforms"] if t.endswith(".nii.gz")]
        if not warps:
            return float("nan")
        return float(100 * (ants.create_jacobian_determinant_image(fixed, warps[0]).numpy() <= 0).mean())

    return labels, folding


def methods_of(models: dict, refine) -> dict[str, Callable]:
    """{name: method(paths) -> (labels, folding)}: identity, ANTs Affine and SyN, the affine stage, each model
    alone, and each SearchMorph + ``refine`` steps."""
    out = {
        "identity": run_identity,
        "ANTs Affine": lambda paths: run_ants(paths, "Affine"),
        "ANTs SyN": lambda paths: run_ants(paths, "SyN"),
        "affine stage": lambda paths: run_ours(paths, None, "affine", 0),
    }
    for name, model in models.items():
        out[name] = lambda paths, model=model: run_ours(paths, model, "full", 0)
        if type(model).__name__ == "SearchMorph":
            out[f"{name} + refine {refine}"] = lambda paths, model=model: run_ours(paths, model, "full", refine)
    return out


def score(method: str, pair: dict, output: tuple, seconds: float) -> dict:
    """{"dice", "folding", "seconds"} of a method's (labels, folding) on a written ``pair`` (interleave's keep)."""
    labels, folding = output
    row = {"dice": tissue_dice(labels, pair["reference"]), "folding": folding(), "seconds": seconds}
    print(f"{pair['set']} pair {pair['index']} {method}: Dice {row['dice']:.3f}, folding {row['folding']:.3f} %, "
          f"{seconds:.1f} s", flush=True)  # fmt: skip
    return row


def main(argv: list[str] | None = None) -> dict:
    """Results written to ``--out``.json and .md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4, help="pairs per set")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--models", nargs="+", default=["brain3d", "brain3d-voxelmorph"])
    parser.add_argument("--refine", default="auto", help='refinement steps for SearchMorph ("auto": the model\'s)')
    parser.add_argument("--moving-mm", type=float, default=1.5)
    parser.add_argument("--axis-orders", type=int, default=2, choices=[1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(HERE / "volumes_results"))
    args = parser.parse_args(argv)
    set_threads(args.threads)
    import nibabel as nib

    import searchmorph_lite as sm
    from searchmorph_lite.data import load_dataset
    from searchmorph_lite.inference import refine_settings
    from searchmorph_lite.pretrained import pretrained_path
    from searchmorph_lite.scoring import interleave

    refine = args.refine if args.refine == "auto" else int(args.refine)
    models = {name: sm.load_pretrained(name, device="cpu") for name in args.models}
    methods = methods_of(models, refine)
    results: dict = {"sets": {}, "command": command("volumes.py", argv), "threads": args.threads,
                     "machine": machine(), "load_before": os.getloadavg()[0],
                     # the weights scored: .ci/book_numbers.py refuses to describe other shipped models with them
                     "models": {name: sm.read_checkpoint(pretrained_path(name))["sha256"] for name in models},
                     "refine": {name: dict(zip(("steps", "settings"), refine_settings(m, refine)))
                                for name, m in models.items() if type(m).__name__ == "SearchMorph"}}  # fmt: skip
    rng = np.random.default_rng(0)
    for k, set_name in enumerate(args.sets):
        data = load_dataset("brain3d", "test", voxel_mm=2, **SETS[set_name])
        order_change = []
        with tempfile.TemporaryDirectory() as tmp:
            pairs = []
            for index in range(min(args.pairs, len(data))):
                (Path(tmp) / str(index)).mkdir()
                paths = write_pair(data[index], Path(tmp) / str(index), rng, args.moving_mm)
                pairs.append({"set": set_name, "index": index, "paths": paths,
                              "reference": np.asarray(nib.load(paths["fixed_labels"]).dataobj)})  # fmt: skip

            # one untimed run of each method before the first set's pairs: ITK's and torch's start-up
            rows = interleave(methods, pairs, inputs=lambda pair: (pair["paths"],), keep=score, warmup=k == 0)
            if args.axis_orders == 2:
                name = args.models[0]
                for pair, row in zip(pairs, rows[name]):
                    perm, flips = pair["paths"]["order"]
                    other = (tuple(np.roll(perm, 1)), tuple(not f for f in flips))
                    folder = Path(tmp) / f"{pair['index']}b"
                    folder.mkdir()
                    paths2 = write_pair(data[pair["index"]], folder, rng, args.moving_mm, other)
                    labels, _ = run_ours(paths2, models[name], "full", 0)
                    order_change.append(abs(tissue_dice(labels, pair["reference"]) - row["dice"]))
        summary = {}
        for method, r in rows.items():
            dice = np.array([x["dice"] for x in r])
            summary[method] = {
                "dice": float(dice.mean()),
                "dice_sd": float(dice.std(ddof=1)) if len(dice) > 1 else 0.0,
                "folding": nan_mean([x["folding"] for x in r]),
                "seconds": float(np.median([x["seconds"] for x in r])),
                "per_pair": r,
            }
        results["sets"][set_name] = {
            "pairs": len(pairs),
            "methods": summary,
            "axis_order_dice_change_max": max(order_change) if order_change else None,
        }
    results["load_after"] = os.getloadavg()[0]
    write_results(args.out, results, markdown(results))
    print(markdown(results))
    return results


def markdown(results: dict) -> str:
    """The results as Markdown tables, one per set, with the command and the machine."""
    lines = [f"Command: `{results['command']}`; {results['threads']} thread(s); machine {results['machine']}; load "
             f"average {results['load_before']:.2f} before, {results['load_after']:.2f} after.", ""]  # fmt: skip
    for set_name, block in results["sets"].items():
        syn = block["methods"].get("ANTs SyN")
        change = block["axis_order_dice_change_max"]
        change = "not measured" if change is None else f"{change:.4f}"
        lines += [f"**{set_name}** ({block['pairs']} pairs; largest Dice change when the moving file is stored in "
                  f"another axis order: {change})", "",
                  "| method | Dice (sd) | % folding | median s | s / SyN's |", "|---|---|---|---|---|"]  # fmt: skip
        for method, s in block["methods"].items():
            ratio = s["seconds"] / syn["seconds"] if syn else float("nan")
            lines.append(f"| {method} | {s['dice']:.3f} ({s['dice_sd']:.3f}) | {s['folding']:.3f} | "
                         f"{s['seconds']:.1f} | {ratio:.2f} |")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
