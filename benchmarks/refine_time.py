"""Test-time refinement against ANTs SyN, per pair: Dice, folding and seconds, timed paired and interleaved.

Chooses the refinement step count N to recommend for a model (issue 12, part 4: above SyN at no more than SyN's
time per pair). It runs on the *validation* split (never test): for every pair, SyN and the network + N steps for
each N take turns, in an order that rotates from pair to pair, so that a drift in the machine's speed lands on
every method alike; each method runs once untimed first (imports, allocator, ITK start-up). The ratio to SyN is
taken pair by pair and its median reported. Torch and ITK get the same ``--threads``. Run it on an idle machine.

``python benchmarks/refine_time.py --model brain2d --pairs 12 --steps 0 30 60 90``
``--checkpoint training/x/checkpoint.pt`` scores a training run instead of the shipped model.
Writes ``benchmarks/refine_time_<model>.{json,md}`` (``--out`` to change).
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
sys.path.insert(0, str(HERE.parent))


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
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    import searchmorph_lite as sm
    from searchmorph_lite.data import load_dataset
    from searchmorph_lite.data.common import atomic_write_text
    from searchmorph_lite.provenance import card_of
    from searchmorph_lite.scoring import ants_method, network_method, score_flow

    if args.checkpoint:
        model = sm.load_checkpoint(args.checkpoint, device="cpu")
    else:
        model = sm.load_pretrained(args.model, device="cpu")
    card = card_of(model)
    dataset = args.dataset or card.get("data")
    if not dataset:
        parser.error("the model's metadata names no dataset; pass --dataset")
    size = tuple(card.get("image_size") or ()) or None
    options: dict = {"image_size": size} if size else {}
    if not args.dataset:  # the model's own data: its validation options (e.g. echo's variability "wide")
        from searchmorph_lite.train import validation_options

        tc = (model.metadata or {}).get("train_config", {})
        options = {**validation_options(tc.get("dataset_options", {}), tc.get("val_options", {})), **options}
    data = load_dataset(dataset, args.split, num_pairs=args.pairs, **options)
    pairs = [data[i] for i in range(min(args.pairs, len(data)))]
    methods = {"ANTs SyN": ants_method("SyN", seed=1)}
    for n in args.steps:
        name = "network alone" if n == 0 else f"network + {n} steps"
        methods[name] = network_method(model, normalize=False, refine_steps=n)
    names = list(methods)
    for name in names:  # untimed warm-up on the first pair
        methods[name](pairs[0]["moving"][0].numpy(), pairs[0]["fixed"][0].numpy())
    rows: dict[str, list[dict]] = {name: [] for name in names}
    for i, pair in enumerate(pairs):
        m, f = pair["moving"][0].numpy(), pair["fixed"][0].numpy()
        for name in names[i % len(names) :] + names[: i % len(names)]:
            start = time.perf_counter()
            flow = methods[name](m, f)
            seconds = time.perf_counter() - start
            rows[name].append({**score_flow(pair, flow), "seconds": seconds})
        print(f"pair {i + 1}/{len(pairs)}: " + ", ".join(
            f"{n} {rows[n][-1]['seconds']:.2f} s" for n in names), flush=True)  # fmt: skip
    syn_seconds = np.array([r["seconds"] for r in rows["ANTs SyN"]])
    summary = {}
    for name in names:
        r = rows[name]
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
        "image_size": list(pairs[0]["fixed"].shape[1:]), "threads": args.threads,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__, "load_at_start": load_at_start, "load_at_end": os.getloadavg()[0],
        "dataset_options": {k: v for k, v in options.items() if k != "image_size"}, "methods": summary,
        "per_pair": rows,
    }  # fmt: skip
    out = Path(args.out or HERE / f"refine_time_{args.model}")
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
    atomic_write_text(out.with_suffix(".json"), json.dumps(results, indent=1) + "\n")
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return results


if __name__ == "__main__":
    main()
