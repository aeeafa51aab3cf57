"""Test-time refinement against ANTs SyN, per pair: Dice, folding and seconds, timed paired and interleaved.

A report on a model's refinement (issue 12, part 4: above SyN at no more than SyN's time per pair); the tuner that
chooses lr, levels and steps is ``training/choose_refinement.py``, and this report calls it: the same validation
set, the same methods (``refinement_method``, the model's own lr and levels) and the same scoring loop
(``score_sets``, on ``searchmorph_lite.scoring.run_methods``). It runs on the *validation* split (never test):
for every pair, SyN and the network + N steps for each N take turns, in an order that rotates from pair to pair,
so that a drift in the machine's speed lands on every method alike; each method runs once untimed first
(imports, allocator, ITK start-up). The ratio to SyN is taken pair by pair and its median reported. Torch and ITK
get the same ``--threads``. Run it on an idle machine. The ``refine`` suite of ``python -m benchmarks``.

``python benchmarks/refine_time.py --model brain2d --pairs 12 --steps 0 30 60 90``
``--checkpoint training/x/checkpoint.pt`` scores a training run instead of the shipped model.
Writes ``benchmarks/refine_time_<model>.{json,md}`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import HERE, REPO, load_model, machine, set_threads, write_results  # noqa: E402

sys.path.insert(0, str(REPO / "training"))
from choose_refinement import IN_DISTRIBUTION, load_sets, refinement_method, score_sets, set_options  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    """Results written to ``--out``.json and .md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="brain2d", help="pretrained name (brain2d, echo2d, ...)")
    parser.add_argument("--checkpoint", default=None, help="a training checkpoint instead of the shipped model")
    parser.add_argument("--dataset", default=None, help="default: the model's training dataset")
    parser.add_argument("--split", default="val", choices=("val", "test"))
    parser.add_argument("--pairs", type=int, default=12)
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 30, 60, 90])
    parser.add_argument("--threads", type=int, default=1, help="torch and ITK threads")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.pairs < 1:
        parser.error(f"--pairs must be >= 1, got {args.pairs}")
    load_at_start = os.getloadavg()[0]
    set_threads(args.threads)
    from searchmorph_lite.provenance import card_of
    from searchmorph_lite.scoring import ants_method

    model = load_model(args.model, args.checkpoint)
    card = card_of(model)
    dataset = args.dataset or card.get("data")
    if not dataset:
        parser.error("the model's metadata names no dataset; pass --dataset")
    size = tuple(card.get("image_size") or ()) or None
    options: dict = {"image_size": size} if size else {}
    if not args.dataset:  # the model's own data: its validation options (e.g. echo's variability "wide")
        tc = (model.metadata or {}).get("train_config", {})
        options = {**set_options(tc, out_of_distribution=False)[IN_DISTRIBUTION], **options}
    pairs = load_sets(dataset, {IN_DISTRIBUTION: options}, args.pairs, args.split)[IN_DISTRIBUTION]
    methods = {"ANTs SyN": ants_method("SyN", seed=1)}
    for n in args.steps:
        methods["network alone" if n == 0 else f"network + {n} steps"] = refinement_method(model, n)
    scored = score_sets(methods, {IN_DISTRIBUTION: pairs}, warmup=True)
    rows = {name: by_set[IN_DISTRIBUTION]["per_pair"] for name, by_set in scored.items()}
    syn_seconds = np.array([r["seconds"] for r in rows["ANTs SyN"]])
    summary = {}
    for name, r in rows.items():
        secs = np.array([x["seconds"] for x in r])
        summary[name] = {
            "dice_mean": float(np.mean([x["dice"] for x in r])) if "dice" in r[0] else None,
            "ncc_mean": float(np.mean([x["ncc"] for x in r])),
            "folding_mean": float(np.mean([x["folding"] for x in r])),
            "seconds_median": float(np.median(secs)),
            "ratio_to_syn_median": float(np.median(secs / syn_seconds)),
        }
    results = {
        "model": args.checkpoint or args.model, "dataset": dataset, "split": args.split, "pairs": len(pairs),
        "image_size": list(pairs[0]["fixed"].shape[1:]), "threads": args.threads, "machine": machine(),
        "torch": torch.__version__, "load_at_start": load_at_start, "load_at_end": os.getloadavg()[0],
        "dataset_options": {k: v for k, v in options.items() if k != "image_size"}, "methods": summary,
        "per_pair": rows,
    }  # fmt: skip
    extra = ", ".join(f"{k} {v}" for k, v in results["dataset_options"].items())
    lines = [f"{results['model']} on {dataset}{f' ({extra})' if extra else ''} {args.split}, {len(pairs)} pairs at "
             f"{' x '.join(map(str, results['image_size']))}, {args.threads} thread(s), {results['machine']}, "
             f"paired and interleaved", "",
             "| method | Dice | NCC | % folding | s / pair (median) | time / SyN (median of pairs) |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for name, s in summary.items():
        dice = "-" if s["dice_mean"] is None else f"{s['dice_mean']:.3f}"
        lines.append(f"| {name} | {dice} | {s['ncc_mean']:.3f} | {s['folding_mean']:.3f} | "
                     f"{s['seconds_median']:.3f} | {s['ratio_to_syn_median']:.2f} |")  # fmt: skip
    write_results(args.out or HERE / f"refine_time_{args.model}", results, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return results


if __name__ == "__main__":
    main()
