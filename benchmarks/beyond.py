"""Beyond the paper (issue 13): the 3D table, the diffeomorphic comparison and the stride table, on held-out pairs.

Every row is scored by the same code (:func:`score`): labels warped with nearest neighbour, mean Dice over the
labels 1-3 (CSF and other brain, grey matter, white matter), folding % (det J <= 0), seconds per pair. The
networks run through the public ``register`` (what a user calls); ANTs through ``ants_register``.

* ``3d``: brain3d test split at 4 mm (48 x 48 x 48, ``voxel_mm=4``; test subjects use control grids no training
  subject used): Identity, ANTs Affine, ANTs SyN, VoxelMorph-3D (``brain3d-voxelmorph``), SearchMorph-3D
  (``brain3d``).
* ``2d``: brain2d-subjects test split at 192 x 160 (slabs 3 mm away from every training slice): the displacement
  model (``brain2d-displacement``), the diffeomorphic one (``brain2d-diffeomorphic``) and full-resolution features
  (``brain2d-stride1``), all trained for the same 1,200 CPU seconds side by side, plus ANTs SyN. Besides Dice and
  folding: the distribution of det J over all pixels of all pairs (percentiles and a histogram), and the peak
  bytes of tensors alive during one forward pass (benchmarks/inference.py's ``LiveTensorBytes``).

Timing: torch and ITK get the same ``--threads``; run it on an idle machine (no training). Writes
``benchmarks/beyond_results.json`` and ``.md``. Smoke run: ``python benchmarks/beyond.py --pairs 2 --out /tmp/b``.
``--runs`` reads run folders (training/beyond_*) instead of the shipped models, to score a training in progress.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

LABELS = (1, 2, 3)
JAC_BINS = np.linspace(-0.5, 3.0, 71)
MODELS_3D = {"VoxelMorph-3D": "brain3d-voxelmorph", "SearchMorph-3D": "brain3d"}
MODELS_2D = {
    "displacement (stride 2)": "brain2d-displacement",
    "diffeomorphic (stride 2)": "brain2d-diffeomorphic",
    "displacement, stride 1": "brain2d-stride1",
}
RUN_FOLDERS = {
    "brain3d": "beyond_brain3d_searchmorph",
    "brain3d-voxelmorph": "beyond_brain3d_voxelmorph",
    "brain2d-displacement": "beyond_brain2d_displacement",
    "brain2d-diffeomorphic": "beyond_brain2d_diffeomorphic",
    "brain2d-stride1": "beyond_brain2d_stride1",
}


def score(pair: dict, flow: np.ndarray, seconds: float) -> dict:
    """Dice (mean over LABELS), folding % (``searchmorph_lite.scoring.score_flow``, as the book scores) and the
    det J values of ``flow`` (ndim, *S) on a dataset ``pair``."""
    from searchmorph_lite import jacobian_determinant
    from searchmorph_lite.scoring import score_flow

    scores = score_flow(pair, flow, LABELS)
    jac = jacobian_determinant(torch.from_numpy(np.ascontiguousarray(flow)).double()[None])[0].numpy().ravel()
    return {"dice": scores["dice"], "folding": scores["folding"], "seconds": seconds, "jac": jac}


def run_method(name: str, pairs: list[dict], method) -> dict:
    """Scores of ``method(moving, fixed) -> flow`` on every pair, with means."""
    rows = []
    for pair in pairs:
        m, fx = pair["moving"][0].numpy(), pair["fixed"][0].numpy()
        start = time.perf_counter()
        flow = method(m, fx)
        rows.append(score(pair, flow, time.perf_counter() - start))
        print(f"  {name}: Dice {rows[-1]['dice']:.3f}, folding {rows[-1]['folding']:.3f} %, "
              f"{rows[-1]['seconds']:.2f} s", flush=True)  # fmt: skip
    jac = np.concatenate([r.pop("jac") for r in rows])
    out = {"method": name, "pairs": len(rows), "per_pair": rows}
    for key in ("dice", "folding", "seconds"):
        out[f"{key}_mean"] = float(np.mean([r[key] for r in rows]))
    out["dice_std"] = float(np.std([r["dice"] for r in rows]))
    out["jacobian"] = {
        "min": float(jac.min()),
        "percentiles": {str(p): float(np.percentile(jac, p)) for p in (0.1, 1, 50, 99, 99.9)},
        "fraction_nonpositive": float((jac <= 0).mean()),
        "histogram": np.histogram(np.clip(jac, JAC_BINS[0], JAC_BINS[-1]), JAC_BINS)[0].tolist(),
        "bins": JAC_BINS.tolist(),
    }
    return out


def load_model(name: str, runs: bool):
    """The shipped model ``name``, or (``runs``) the latest checkpoint of its training run folder."""
    import searchmorph_lite as sm

    if runs:
        return sm.load_checkpoint(HERE.parent / "training" / RUN_FOLDERS[name] / "checkpoint.pt", device="cpu")
    return sm.load_pretrained(name, device="cpu")


def network(model):
    """method(moving, fixed) -> flow of ``model`` through the public ``register``."""
    from searchmorph_lite.scoring import network_method

    return network_method(model)


def ants(kind: str):
    """method(moving, fixed) -> flow of ANTs ``kind`` ("Affine", "SyN"), seeded."""
    from searchmorph_lite.scoring import ants_method

    return ants_method(kind, seed=1)


def identity(m: np.ndarray, f: np.ndarray) -> np.ndarray:
    """The zero field."""
    from searchmorph_lite.scoring import identity_method

    return identity_method(m, f)


def peak_forward_bytes(model, shape: tuple[int, ...]) -> int:
    """Peak bytes of tensors alive during one no-grad forward pass on a (1, 1, *shape) pair."""
    from inference import LiveTensorBytes

    x = torch.rand(1, 1, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        meter = LiveTensorBytes()
        with meter:
            out = model(x, x.flip(-1))
        del out
    return meter.peak


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
    """The 3D table's rows on ``pairs`` brain3d test pairs at 4 mm."""
    from searchmorph_lite.data import load_dataset

    data = load_dataset("brain3d", "test", voxel_mm=4, num_pairs=pairs)
    items = [data[i] for i in range(len(data))]
    rows = [run_method("Identity", items, identity), run_method("ANTs Affine", items, ants("Affine")),
            run_method("ANTs SyN", items, ants("SyN"))]  # fmt: skip
    for label, name in MODELS_3D.items():
        model = load_model(name, runs)
        rows.append({**run_method(label, items, network(model)), "model": name, **card(model)})
    return {"data": "brain3d test, voxel_mm 4 (48 x 48 x 48), t1 contrast", "rows": rows}


def part_2d(pairs: int, runs: bool) -> dict:
    """The diffeomorphic and stride rows on ``pairs`` brain2d-subjects test pairs at 192 x 160."""
    from searchmorph_lite.data import load_dataset

    data = load_dataset("brain2d-subjects", "test", num_pairs=pairs)
    items = [data[i] for i in range(len(data))]
    rows = [run_method("ANTs SyN", items, ants("SyN"))]
    for label, name in MODELS_2D.items():
        model = load_model(name, runs)
        row = {**run_method(label, items, network(model)), "model": name, **card(model)}
        row["peak_forward_bytes"] = peak_forward_bytes(model, tuple(items[0]["moving"].shape[1:]))
        rows.append(row)
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
        lines += [f"### {title}", "", head, "|---|---|---|---|---|---|---|"]
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
    from searchmorph_lite.data.common import atomic_write_text

    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)  # read when ANTs first runs
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    results: dict = {"threads": args.threads, "load_at_start": load, "torch": torch.__version__,
                     "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"}  # fmt: skip
    if args.part in ("3d", "all"):
        results["3d"] = part_3d(args.pairs or 8, args.runs)
    if args.part in ("2d", "all"):
        results["2d"] = part_2d(args.pairs or 24, args.runs)
    results["load_at_end"] = os.getloadavg()[0]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".json"), json.dumps(results, indent=1) + "\n")
    atomic_write_text(out.with_suffix(".md"), markdown(results))
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
