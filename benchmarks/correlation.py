"""Benchmark: SearchMorph training-step time and peak memory, all-pairs cost volume vs the lean search.

Each path runs in its own subprocess so its peak resident memory (CPU) or peak allocated memory (CUDA) is its
own (:mod:`benchmarks.memory`). Usage: ``python benchmarks/correlation.py [--batch 8] [--steps 3] [--size 192 160]
[--out results.json]`` (the ``correlation`` suite of ``python -m benchmarks``).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run_one(all_pairs: bool, batch: int, steps: int, size: tuple[int, int], device: str) -> dict:
    """Time ``steps`` training steps (after one warm-up) of one correlation path; return seconds and peak MB."""
    import torch

    from benchmarks.common import timed_calls, training_step
    from benchmarks.memory import memory_baseline, peak_memory_mb
    from searchmorph_lite import SearchMorph, SearchMorphConfig

    torch.manual_seed(0)
    dev = torch.device(device)
    baseline = memory_baseline(dev)
    model = SearchMorph(SearchMorphConfig(all_pairs=all_pairs)).to(dev)
    moving = torch.rand(batch, 1, *size, device=dev)
    fixed = torch.rand(batch, 1, *size, device=dev)
    step = training_step(model, moving, fixed, alpha=2.0, iteration_weight=0.0)  # eq. 9 on the last field
    times = timed_calls(lambda _: step(), steps, dev)
    return {"all_pairs": all_pairs, "step_seconds": sum(times) / len(times), "peak_mb": peak_memory_mb(dev, baseline)}


def main(argv: list[str] | None = None) -> dict:
    """The two paths' results (also written to ``--out`` as JSON when given)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--size", type=int, nargs=2, default=(192, 160))
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    parser.add_argument("--out", help="also write the results as JSON here")
    parser.add_argument("--child", choices=["all_pairs", "search_features"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.child:
        result = run_one(args.child == "all_pairs", args.batch, args.steps, tuple(args.size), args.device)
        print(json.dumps(result))
        return result
    results = {}
    for path in ("search_features", "all_pairs"):
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            path,
            "--batch",
            str(args.batch),
            "--steps",
            str(args.steps),
            "--size",
            *map(str, args.size),
            "--device",
            args.device,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{path} failed:\n{proc.stderr[-2000:]}")
        results[path] = json.loads(proc.stdout.strip().splitlines()[-1])
    lean, full = results["search_features"], results["all_pairs"]
    h, w = args.size
    cpu = platform.processor() or platform.machine()
    print(f"SearchMorph training step, {h}x{w}, batch {args.batch}, {args.device} ({cpu})")
    print(f"{'path':<18}{'step (s)':>10}{'peak (MB)':>12}")
    for name, r in (("all-pairs volume", full), ("search_features", lean)):
        print(f"{name:<18}{r['step_seconds']:>10.2f}{r['peak_mb']:>12.0f}")
    ratio_t = full["step_seconds"] / lean["step_seconds"]
    ratio_m = full["peak_mb"] / max(lean["peak_mb"], 1e-9)
    print(f"search_features is {ratio_t:.1f}x faster and uses {ratio_m:.1f}x less peak memory")
    if args.out:
        summary = {
            "size": [h, w],
            "batch": args.batch,
            "device": args.device,
            "results": results,
            "speedup": ratio_t,
            "memory_ratio": ratio_m,
        }
        from searchmorph_lite.data.common import atomic_write_text

        atomic_write_text(args.out, json.dumps(summary, indent=1))
    return results


if __name__ == "__main__":
    main()
