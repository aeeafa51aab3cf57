"""Beyond the paper (issue 13): the 3D table, the diffeomorphic comparison and the stride table, on held-out pairs.

Every row is scored by the same code (``searchmorph_lite.scoring.run_methods``, the methods taking turns pair by
pair, plus :func:`jacobian` for the det J distribution): labels warped with nearest neighbour, mean Dice over the
labels 1-3 (CSF and other brain, grey matter, white matter), folding % (det J <= 0), seconds per pair. The
networks run through the public ``register`` (what a user calls) as every suite calls it
(``benchmarks.common.network``: ``normalize=False``, the images as in training); ANTs through ``ants_register``.

* ``3d``: brain3d test split at 4 mm (48 x 48 x 48, ``voxel_mm=4``; test subjects use control grids no training
  subject used; the residual affine jitter ``brain3d`` trained on, read from its card): Identity, ANTs Affine,
  ANTs SyN, VoxelMorph-3D (``brain3d-voxelmorph``), SearchMorph-3D (``brain3d``).
* ``2d``: brain2d-subjects test split at 192 x 160 (slabs 3 mm away from every training slice): the displacement
  model (``brain2d-displacement``), the diffeomorphic one (``brain2d-diffeomorphic``) and full-resolution features
  (``brain2d-stride1``), all trained for the same 1,200 CPU seconds side by side, plus ANTs SyN. Besides Dice and
  folding: the distribution of det J over all pixels of all pairs (percentiles and a histogram), and the peak
  bytes of tensors alive during one forward pass (``benchmarks.memory.peak_forward_bytes``).

Timing: torch and ITK get the same ``--threads``; run it on an idle machine (no training). Writes
``benchmarks/beyond_results.json`` and ``.md`` (the ``beyond`` suite of ``python -m benchmarks``). Smoke run:
``python benchmarks/beyond.py --pairs 2 --out /tmp/b``.
``--part 3d`` (or ``2d``) re-measures one part and keeps the rest of the stored file; each part records its own
threads, machine and load (the top-level ones are those of the last ``--part all`` run). ``--runs`` reads run
folders (training/<RUN_FOLDERS>) instead of the shipped models, to score a training in progress.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import HERE, REPO, load_model, machine, network, set_threads, write_results  # noqa: E402
from benchmarks.memory import peak_forward_bytes  # noqa: E402

LABELS = (1, 2, 3)
JAC_BINS = np.linspace(-0.5, 3.0, 71)
MODELS_3D = {"VoxelMorph-3D": "brain3d-voxelmorph", "SearchMorph-3D": "brain3d"}
MODELS_2D = {
    "displacement (stride 2)": "brain2d-displacement",
    "diffeomorphic (stride 2)": "brain2d-diffeomorphic",
    "displacement, stride 1": "brain2d-stride1",
}
RUN_FOLDERS = {
    "brain3d": "brain3d_searchmorph",
    "brain3d-voxelmorph": "brain3d_voxelmorph",
    "brain2d-displacement": "beyond_brain2d_displacement",
    "brain2d-diffeomorphic": "beyond_brain2d_diffeomorphic",
    "brain2d-stride1": "beyond_brain2d_stride1",
}


def jacobian(pair: dict, flow: np.ndarray) -> dict:
    """{"jac": det J (P,) at every pixel of ``flow`` (ndim, *S)}: the rows' extra score (run_methods' ``extra``)."""
    from searchmorph_lite import jacobian_determinant

    return {"jac": jacobian_determinant(torch.from_numpy(np.ascontiguousarray(flow)).double()[None])[0].numpy().ravel()}


def row(name: str, result: dict) -> dict:
    """A table row from ``run_methods``' result for one method: Dice (mean over LABELS), folding % and seconds per
    pair, their means, the spread of Dice, and the distribution of det J over all pixels of all pairs."""
    per_pair = [{k: r[k] for k in ("dice", "folding", "seconds")} for r in result["per_pair"]]
    jac = np.concatenate([r["jac"] for r in result["per_pair"]])
    out = {"method": name, "pairs": len(per_pair), "per_pair": per_pair}
    for key in ("dice", "folding", "seconds"):
        out[f"{key}_mean"] = float(np.mean([r[key] for r in per_pair]))
    out["dice_std"] = float(np.std([r["dice"] for r in per_pair]))
    out["jacobian"] = {
        "min": float(jac.min()),
        "percentiles": {str(p): float(np.percentile(jac, p)) for p in (0.1, 1, 50, 99, 99.9)},
        "fraction_nonpositive": float((jac <= 0).mean()),
        "histogram": np.histogram(np.clip(jac, JAC_BINS[0], JAC_BINS[-1]), JAC_BINS)[0].tolist(),
        "bins": JAC_BINS.tolist(),
    }
    print(f"  {name}: Dice {out['dice_mean']:.3f}, folding {out['folding_mean']:.3f} %, "
          f"{out['seconds_mean']:.2f} s / pair", flush=True)  # fmt: skip
    return out


def load(name: str, runs: bool):
    """The shipped model ``name``, or (``runs``) the latest checkpoint of its training run folder."""
    return load_model(name, REPO / "training" / RUN_FOLDERS[name] / "checkpoint.pt" if runs else None)


def score(pairs: list[dict], baselines: dict, networks: dict[str, str], runs: bool) -> tuple[list[dict], dict]:
    """(rows, {label: model}): ``baselines`` ({label: method}) and the ``networks`` ({label: model name}) on
    ``pairs``, taking turns pair by pair; network rows carry their model's name and card."""
    from searchmorph_lite.scoring import run_methods

    models = {label: load(name, runs) for label, name in networks.items()}
    methods = {**baselines, **{label: network(model) for label, model in models.items()}}
    results = run_methods(methods, pairs, LABELS, extra=jacobian)
    rows = []
    for label in methods:
        extra = {"model": networks[label], **card(models[label])} if label in networks else {}
        rows.append({**row(label, results[label]), **extra})
    return rows, models


def card(model) -> dict:
    """What a table needs from a model's card: training CPU seconds, pairs seen, epochs, val Dice."""
    meta = model.metadata or {}
    hist = meta.get("history") or {}
    return {
        "train_cpu_seconds": float(sum(hist.get("cpu_seconds", []))) or None,
        "epochs": meta.get("epochs", len(hist.get("epoch", []))),
        "pairs_seen": meta.get("pairs_seen"),  # ship_pretrained's count; None for runs that did not record it
        "val_dice_last": (hist.get("val_dice") or [None])[-1],
    }


def part_3d(pairs: int, runs: bool) -> dict:
    """The 3D table's rows on ``pairs`` brain3d test pairs at 4 mm, under the affine jitter SearchMorph-3D
    trained on (its ``residual_affine``, when it has one)."""
    from searchmorph_lite.data import load_dataset
    from searchmorph_lite.scoring import ants_method, identity_method

    residual = ((load("brain3d", runs).metadata or {}).get("dataset_options") or {}).get("residual_affine")
    options = {} if residual is None else {"residual_affine": residual}
    data = load_dataset("brain3d", "test", voxel_mm=4, num_pairs=pairs, **options)
    items = [data[i] for i in range(len(data))]
    baselines = {"Identity": identity_method, "ANTs Affine": ants_method("Affine", seed=1),
                 "ANTs SyN": ants_method("SyN", seed=1)}  # fmt: skip
    rows, _ = score(items, baselines, MODELS_3D, runs)
    jitter = (
        "brain3d's full affine jitter"
        if residual is None
        else f"{residual:g} of brain3d's affine jitter (what the pipeline's affine stage leaves; the models' training)"
    )
    data = (
        f"brain3d test, voxel_mm 4 (48 x 48 x 48), t1 contrast, {jitter}; the networks get the arrays as they are "
        "(no affine stage: `--suite volumes` runs the whole pipeline from NIfTI files)"
    )
    return {"data": data, "rows": rows, "residual_affine": residual}


def part_2d(pairs: int, runs: bool) -> dict:
    """The diffeomorphic and stride rows on ``pairs`` brain2d-subjects test pairs at 192 x 160."""
    from searchmorph_lite.data import load_dataset
    from searchmorph_lite.scoring import ants_method

    data = load_dataset("brain2d-subjects", "test", num_pairs=pairs)
    items = [data[i] for i in range(len(data))]
    rows, models = score(items, {"ANTs SyN": ants_method("SyN", seed=1)}, MODELS_2D, runs)
    for r in rows:
        if r["method"] in models:
            r["peak_forward_bytes"] = peak_forward_bytes(models[r["method"]], tuple(items[0]["moving"].shape[1:]))
    return {"data": "brain2d-subjects test, 192 x 160, t1 contrast", "rows": rows}


def markdown(results: dict) -> str:
    """The tables as Markdown."""
    lines = []
    for part, title in (
        ("3d", "3D (brain3d test, 4 mm)"),
        ("2d", "2D: diffeomorphic and stride (brain2d-subjects test)"),
    ):
        if part not in results:
            continue
        head = "| method | Dice | folding % | det J min | s / pair | train CPU s | peak forward |"
        block = results[part]
        where = block.get("machine", results.get("machine"))
        threads = block.get("threads", results.get("threads"))
        lines += [f"### {title}", "", f"{block['data']}; {threads} thread(s), {where}.", "", head,
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in results[part]["rows"]:
            cpu = f"{r['train_cpu_seconds']:.0f}" if r.get("train_cpu_seconds") else "-"
            peak = f"{r['peak_forward_bytes'] / 1e6:.0f} MB" if r.get("peak_forward_bytes") else "-"
            lines.append(f"| {r['method']} | {r['dice_mean']:.3f} ± {r['dice_std']:.3f} | {r['folding_mean']:.3f} | "
                         f"{r['jacobian']['min']:.2f} | {r['seconds_mean']:.2f} | {cpu} | {peak} |")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """Results written to ``--out``.json and .md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["3d", "2d", "all"], default="all")
    parser.add_argument("--pairs", type=int, default=None, help="test pairs (default: 8 in 3D, 24 in 2D)")
    parser.add_argument("--threads", type=int, default=2, help="torch and ITK threads")
    parser.add_argument("--runs", action="store_true", help="score training/beyond_* run folders")
    parser.add_argument("--out", default=str(HERE / "beyond_results"))
    args = parser.parse_args(argv)
    set_threads(args.threads)

    def measured() -> dict:
        return {"threads": args.threads, "load_at_start": os.getloadavg()[0], "torch": torch.__version__,
                "machine": machine()}  # fmt: skip

    stored = Path(f"{args.out}.json")
    if args.part != "all" and stored.is_file():  # one part re-measured: the rest of the file stays as measured
        results = json.loads(stored.read_text())
    else:
        results = measured()
    for part, run_part, default_pairs in (("3d", part_3d, 8), ("2d", part_2d, 24)):
        if args.part in (part, "all"):
            start = measured()
            results[part] = {**start, **run_part(args.pairs or default_pairs, args.runs),
                             "load_at_end": os.getloadavg()[0]}  # fmt: skip
    if args.part == "all":
        results["load_at_end"] = os.getloadavg()[0]
    write_results(args.out, results, markdown(results))
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
