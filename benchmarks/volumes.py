"""3D registration from NIfTI files against ANTs: the targets of issue 21, measured paired on one machine.

Each pair is a brain3d test pair at 2 mm (two virtual subjects of MNI152, tissue labels 1-3), written as NIfTI
files the way real scans arrive: the fixed volume in RAS at 2 mm, the moving volume at ``--moving-mm`` in another
axis order with flips (a random one per pair, seeded) and its own field of view. Every method registers the files,
carries the moving labels onto the fixed grid, and is scored by the same code: mean Dice over the three tissues
against the fixed labels, % folding of the composed transform (det of its Jacobian on the fixed grid <= 0), and
the wall seconds of the registration (reading the files included, one thread, methods interleaved pair by pair).

Methods: ``identity`` (the headers alone), ANTs ``Affine`` and ``SyN`` (``type_of_transform="SyN"``: its own
rigid + affine + SyN stages), and through ``searchmorph_lite.register_images`` the affine stage alone, the models
(``--models``, default brain3d and brain3d-voxelmorph) alone and SearchMorph with refinement (``--refine``, the
model's recommendation by default). ``--axis-orders 2`` also registers every pair a second time with the moving
file in another axis order and reports the largest Dice change (the pipeline should not care).

Sets: ``test`` (brain3d's test control grids and contrasts), ``2x deformation`` and ``T1 only``. Run on an idle
machine (no training beside it): ``python benchmarks/volumes.py`` writes benchmarks/volumes_results.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SETS = {"test": {}, "2x deformation": {"max_displacement": 10.0}, "T1 only": {"contrast": "t1"}}
HERE = Path(__file__).resolve().parent


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


def folding_of(displacement_vox: np.ndarray) -> float:
    """% of voxels where det(I + grad u) <= 0 for a field (3, *S) in voxels."""
    import torch

    from searchmorph_lite.metrics import folding_ratio

    return float(folding_ratio(torch.from_numpy(np.ascontiguousarray(displacement_vox))[None])[0])


def run_identity(paths: dict) -> tuple[np.ndarray, float, float]:
    """(moving labels on the fixed grid through the two headers alone, 0 % folding, seconds)."""
    import torch

    from searchmorph_lite.affine import sample_world, world_grid
    from searchmorph_lite.pipeline import as_image

    start = time.perf_counter()
    fixed = as_image(paths["fixed"], 3, "fixed")
    labels = as_image(paths["moving_labels"], 3, "labels")
    points = world_grid(fixed.data.shape, torch.tensor(fixed.affine))
    out = sample_world(torch.tensor(labels.data)[None], torch.tensor(labels.affine), points, mode="nearest")[0]
    return out.numpy(), 0.0, time.perf_counter() - start


def run_ours(paths: dict, model, stage: str, refine) -> tuple[np.ndarray, float, float]:
    """(carried labels, % folding, seconds) of register_images on the files."""
    from searchmorph_lite.pipeline import register_images

    start = time.perf_counter()
    reg = register_images(paths["moving"], paths["fixed"], model, stage=stage, refine_steps=refine)
    labels = reg.apply(paths["moving_labels"], labels=True)
    seconds = time.perf_counter() - start
    lin = reg.fixed.affine[:3, :3]
    vox = np.linalg.solve(lin, reg.displacement.reshape(3, -1)).reshape(reg.displacement.shape)
    return labels, folding_of(vox), seconds


def run_ants(paths: dict, transform: str) -> tuple[np.ndarray, float, float]:
    """(carried labels, % folding of the SyN warp (nan for Affine), seconds) of ANTs on the files."""
    import ants

    start = time.perf_counter()
    fixed, moving = ants.image_read(str(paths["fixed"])), ants.image_read(str(paths["moving"]))
    reg = ants.registration(fixed, moving, type_of_transform=transform, random_seed=1)
    labels = ants.apply_transforms(fixed, ants.image_read(str(paths["moving_labels"])), reg["fwdtransforms"],
                                   interpolator="nearestNeighbor").numpy()  # fmt: skip
    seconds = time.perf_counter() - start
    folding = float("nan")
    warps = [t for t in reg["fwdtransforms"] if t.endswith(".nii.gz")]
    if warps:
        jac = ants.create_jacobian_determinant_image(fixed, warps[0]).numpy()
        folding = float(100 * (jac <= 0).mean())
    return labels, folding, seconds


def main(argv: list[str] | None = None) -> dict:
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
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)
    import nibabel as nib
    import torch

    import searchmorph_lite as sm
    from searchmorph_lite.data import load_dataset

    torch.set_num_threads(args.threads)
    refine = args.refine if args.refine == "auto" else int(args.refine)
    models = {name: sm.load_pretrained(name, device="cpu") for name in args.models}
    methods = ["identity", "ANTs Affine", "ANTs SyN", "affine stage"]
    for name, model in models.items():
        methods.append(name)
        if type(model).__name__ == "SearchMorph":
            methods.append(f"{name} + refine {refine}")
    results: dict = {"sets": {}, "command": " ".join(["python benchmarks/volumes.py", *(argv or sys.argv[1:])]),
                     "threads": args.threads, "machine": platform.processor() or platform.machine(),
                     "load_before": os.getloadavg()[0]}  # fmt: skip
    rng = np.random.default_rng(0)
    for set_name in args.sets:
        data = load_dataset("brain3d", "test", voxel_mm=2, **SETS[set_name])
        rows = {m: [] for m in methods}
        order_change = []
        for index in range(min(args.pairs, len(data))):
            item = data[index]
            with tempfile.TemporaryDirectory() as tmp:
                paths = write_pair(item, Path(tmp), rng, args.moving_mm)
                reference = np.asarray(nib.load(paths["fixed_labels"]).dataobj)
                for method in methods:
                    if method == "identity":
                        out = run_identity(paths)
                    elif method.startswith("ANTs"):
                        out = run_ants(paths, method.split()[1])
                    elif method == "affine stage":
                        out = run_ours(paths, None, "affine", 0)
                    else:
                        name = method.split(" + ")[0]
                        out = run_ours(paths, models[name], "full", refine if " + refine" in method else 0)
                    labels, folding, seconds = out
                    rows[method].append({"dice": tissue_dice(labels, reference), "folding": folding,
                                         "seconds": seconds})  # fmt: skip
                    print(f"{set_name} pair {index} {method}: Dice {rows[method][-1]['dice']:.3f}, folding "
                          f"{folding:.3f} %, {seconds:.1f} s", flush=True)  # fmt: skip
                if args.axis_orders == 2:
                    perm, flips = paths["order"]
                    other = (tuple(np.roll(perm, 1)), tuple(not f for f in flips))
                    (Path(tmp) / "b").mkdir()
                    paths2 = write_pair(item, Path(tmp) / "b", rng, args.moving_mm, other)
                    name = args.models[0]
                    labels, _, _ = run_ours(paths2, models[name], "full", 0)
                    order_change.append(abs(tissue_dice(labels, reference) - rows[name][-1]["dice"]))
        summary = {}
        for method, r in rows.items():
            dice = np.array([x["dice"] for x in r])
            summary[method] = {
                "dice": float(dice.mean()),
                "dice_sd": float(dice.std(ddof=1)) if len(dice) > 1 else 0.0,
                "folding": float(np.nanmean([x["folding"] for x in r])) if r else float("nan"),
                "seconds": float(np.median([x["seconds"] for x in r])),
                "per_pair": r,
            }
        results["sets"][set_name] = {
            "pairs": len(rows[methods[0]]),
            "methods": summary,
            "axis_order_dice_change_max": max(order_change) if order_change else None,
        }
    results["load_after"] = os.getloadavg()[0]
    Path(args.out + ".json").write_text(json.dumps(results, indent=1) + "\n")
    Path(args.out + ".md").write_text(markdown(results))
    print(markdown(results))
    return results


def markdown(results: dict) -> str:
    """The results as Markdown tables, one per set, with the command and the machine."""
    lines = [f"Command: `{results['command']}`; {results['threads']} thread(s); machine {results['machine']}; load "
             f"average {results['load_before']:.2f} before, {results['load_after']:.2f} after.", ""]  # fmt: skip
    for set_name, block in results["sets"].items():
        syn = block["methods"].get("ANTs SyN")
        lines += [f"**{set_name}** ({block['pairs']} pairs; largest Dice change when the moving file is stored in "
                  f"another axis order: {block['axis_order_dice_change_max']})", "",
                  "| method | Dice (sd) | % folding | median s | s / SyN's |", "|---|---|---|---|---|"]  # fmt: skip
        for method, s in block["methods"].items():
            ratio = s["seconds"] / syn["seconds"] if syn else float("nan")
            lines.append(f"| {method} | {s['dice']:.3f} ({s['dice_sd']:.3f}) | {s['folding']:.3f} | "
                         f"{s['seconds']:.1f} | {ratio:.2f} |")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
