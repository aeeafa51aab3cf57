"""Benchmark: inference time and peak memory of SearchMorph, VoxelMorph and ANTs SyN on brain2d test pairs, training
throughput of the two networks, and the memory of the all-pairs cost volume (eq. 1) versus the lean search (eq. 3).

Writes ``benchmarks/results.json`` and ``benchmarks/results.md`` (included by the book's Benchmarks page), each
atomically (``--out`` elsewhere). Every timed method runs in its own subprocess so that its peak memory is its own
(:mod:`benchmarks.memory` measures it). Regenerate with ``python benchmarks/inference.py`` (the ``inference`` suite
of ``python -m benchmarks``); ``--help`` lists the sizes, pair and step counts, device and threads. Smoke run:
``--pairs 1 --train-batch 1 --train-steps 1 --memory-sizes 64x48 --size 64 48 --out /tmp/i``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import searchmorph_lite as sm  # noqa: E402
from benchmarks.common import HERE, command, timed_calls, training_step, write_results  # noqa: E402
from benchmarks.memory import MAX_REAL_VOLUME_BYTES, MB, memory_baseline, memory_row, peak_memory_mb  # noqa: E402
from searchmorph_lite.data import load_dataset  # noqa: E402

NETWORKS = ("SearchMorph", "VoxelMorph")
METHODS = (*NETWORKS, "ANTs SyN")
PRETRAINED = {"SearchMorph": "brain2d", "VoxelMorph": "brain2d-voxelmorph"}
DEFAULT_CONFIG = {"SearchMorph": {"radius": 3, "iterations": 4}, "VoxelMorph": {}}
CHILD_TASKS = tuple(f"inference/{m}" for m in METHODS) + tuple(f"training/{n}" for n in NETWORKS)
DEFAULT_MEMORY_SIZES = ((64, 48), (96, 80), (128, 96), (192, 160), (256, 224))


# ---------------------------------------------------------------------------------------------------------------
# Helpers shared by parent and children


def parse_size(text: str) -> tuple[int, int]:
    """(H, W) from "HxW", for ``--memory-sizes``."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes are written HxW, e.g. 192x160; got {text!r}") from None
    return h, w


def load_network(kind: str, pretrained: bool, device: torch.device) -> nn.Module:
    """``kind`` in eval mode on ``device``: the shipped brain2d weights, or an untrained default-config model."""
    if pretrained:
        return sm.load_pretrained(PRETRAINED[kind], device=device)
    return sm.build_model(kind, DEFAULT_CONFIG[kind]).to(device).eval()


def load_pairs(
    split: str, count: int, size: tuple[int, int], batch: int = 1
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` (moving, fixed) batches, each (batch, 1, H, W), from consecutive brain2d ``split`` pairs."""
    data = load_dataset("brain2d", split, image_size=size, num_pairs=count * batch)
    items = [data[i] for i in range(count * batch)]
    return [
        (
            torch.stack([it["moving"] for it in items[i : i + batch]]),
            torch.stack([it["fixed"] for it in items[i : i + batch]]),
        )
        for i in range(0, count * batch, batch)
    ]


# ---------------------------------------------------------------------------------------------------------------
# Children: one method each, run in their own process


def child_inference(method: str, size: tuple[int, int], pairs: int, device: torch.device, pretrained: bool) -> dict:
    """Per-pair seconds and peak MB of ``method`` registering ``pairs`` test pairs (B=1, 1, H, W), one warm-up."""
    data = load_pairs("test", pairs + 1, size)
    if method == "ANTs SyN":
        importlib.import_module("ants")  # import before the memory baseline, like torch
        from searchmorph_lite.baselines import ants_register

        def run(i: int) -> object:
            return ants_register(data[i][0], data[i][1], type_of_transform="SyN")

        info: dict[str, Any] = {"device": "cpu"}  # ANTs has no GPU path
        run_device = torch.device("cpu")
    else:
        model = load_network(method, pretrained, device)
        data = [(m.to(device), f.to(device)) for m, f in data]

        def run(i: int) -> object:
            return model(*data[i])

        info = {"device": str(device), "weights": weights_label(method, pretrained), "config": model.config.to_dict()}
        run_device = device
    baseline = memory_baseline(run_device)
    with torch.no_grad():
        times = timed_calls(run, pairs, run_device)
    return {
        "method": method,
        **info,
        "seconds": times,
        "median_s": statistics.median(times),
        "mean_s": statistics.mean(times),
        "peak_mb": peak_memory_mb(run_device, baseline),
    }


def child_training(
    kind: str, size: tuple[int, int], batch: int, steps: int, device: torch.device, pretrained: bool
) -> dict:
    """Pairs/s and peak MB of ``steps`` Adam steps on eq. 9 (LNCC, alpha 2) with batches (batch, 1, H, W)."""
    moving, fixed = (x.to(device) for x in load_pairs("train", 1, size, batch)[0])
    model = load_network(kind, pretrained, device).train()
    step = training_step(model, moving, fixed, alpha=2.0)
    baseline = memory_baseline(device)
    times = timed_calls(lambda _: step(), steps, device)
    return {
        "model": kind,
        "device": str(device),
        "weights": weights_label(kind, pretrained),
        "config": model.config.to_dict(),
        "batch": batch,
        "step_seconds": times,
        "median_step_s": statistics.median(times),
        "pairs_per_s": batch * len(times) / sum(times),
        "peak_mb": peak_memory_mb(device, baseline),
    }


def weights_label(kind: str, pretrained: bool) -> str:
    """Human-readable name of the weights a network ran with."""
    return f"pretrained {PRETRAINED[kind]}" if pretrained else "untrained (default config)"


def run_child(task: str, args: argparse.Namespace, pretrained: dict[str, bool]) -> dict:
    """The JSON dict a ``--child task`` subprocess prints; SystemExit with its stderr when it fails."""
    kind = task.split("/", 1)[1]
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        task,
        "--size",
        *map(str, args.size),
        "--pairs",
        str(args.pairs),
        "--train-batch",
        str(args.train_batch),
        "--train-steps",
        str(args.train_steps),
        "--device",
        str(args.device),
        "--threads",
        str(args.threads),
    ]
    if pretrained.get(kind):
        cmd.append("--child-pretrained")
    env = dict(os.environ, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(args.threads))  # ANTs' thread count
    print(f"running {task} ...", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{task} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------------------
# Report


def hardware(device: torch.device, threads: int) -> dict:
    """Hostname-free description of the machine this ran on."""
    info = {
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "device": str(device),
        "threads": threads,
    }
    try:
        with open("/proc/cpuinfo") as fh:
            info["cpu_model"] = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def count(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless n is 1: "3 pairs", "1 pair"."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def factor(x: float) -> str:
    """A ratio as "1.3×", "24×" or "1,234×"."""
    return f"{x:.2g}×" if x < 10 else f"{x:,.0f}×"


def megabytes(n: float) -> str:
    """``n`` bytes as MB with a precision that suits its size."""
    mb = n / MB
    return f"{mb:,.0f}" if mb >= 100 else f"{mb:.1f}" if mb >= 1 else f"{mb:.2f}"


def markdown(results: dict) -> str:
    """The results as a short markdown document: title, hardware and command, three tables."""
    hw, s, r = results["hardware"], results["settings"], results["ratios"]
    h, w = s["size"]
    cpu = hw.get("cpu_model") or hw["processor"] or hw["machine"]
    gpu = f", GPU {hw['gpu']}" if "gpu" in hw else ""
    lines = [
        "# Benchmarks",
        "",
        f"Measured on {results['date_utc'][:10]} on {cpu} ({hw['cpu_count']} CPUs{gpu}), device `{hw['device']}`, "
        f"{count(hw['threads'], 'thread')}, torch {hw['torch']}, with `{results['command']}`.",
    ]
    if results["non_default_settings"]:
        changed = ", ".join(f"`{flag}`" for flag in results["non_default_settings"])
        lines.append(f"These are not the default settings ({changed}): a quick check, not the reference run.")
    inf = results["inference"]
    lines += [
        "",
        f"## Inference: one {h} × {w} brain2d test pair",
        "",
        f"Seconds per pair (batch 1, over {count(s['pairs'], 'pair')} after one warm-up pair) and the peak memory "
        f"the method adds to its own process ({results['memory_measure']}).",
        "",
        "| Method | Weights | Median (s) | Mean (s) | Peak memory (MB) |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for name in METHODS:
        row = inf[name]
        weights = row.get("weights", "none (classical, CPU)")
        lines.append(f"| {name} | {weights} | {row['median_s']:.3g} | {row['mean_s']:.3g} | {row['peak_mb']:.0f} |")
    lines += [
        "",
        f"SearchMorph takes {factor(r['searchmorph_vs_voxelmorph_inference_time'])} VoxelMorph's time per pair; "
        f"ANTs SyN takes {factor(r['ants_syn_vs_searchmorph_inference_time'])} SearchMorph's.",
        "",
        f"## Training: batch {s['train_batch']}, {h} × {w}",
        "",
        f"Adam (lr 1e-3) on the brain loss (eq. 9 with LNCC and α = 2, over every iteration's field), "
        f"one warm-up step then {count(s['train_steps'], 'timed step')}.",
        "",
        "| Model | Pairs/s | Median step (s) | Peak memory (MB) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name in NETWORKS:
        row = results["training"][name]
        lines.append(f"| {name} | {row['pairs_per_s']:.3g} | {row['median_step_s']:.3g} | {row['peak_mb']:.0f} |")
    lines += [
        "",
        f"SearchMorph trains at {factor(r['searchmorph_vs_voxelmorph_training_pairs_per_s'])} VoxelMorph's pairs/s.",
        "",
        "## Correlation memory: all-pairs volume vs diamond search",
        "",
        "Bytes for one pair (float32) from the tensors' shapes. All-pairs: the cost volume of the encoder's features "
        f"plus levels 1 to {results['memory'][0]['levels'] - 1} of its pyramid. Lean: the search map "
        "`search_features` returns, and the most bytes its tensors hold at once while computing it. Formulas were "
        f"checked against real tensors where the volume is under {MAX_REAL_VOLUME_BYTES // MB} MB.",
        "",
        "| Image | Features (D × h × w) | All-pairs (MB) | Search map (MB) | Lean peak (MB) | All-pairs / lean peak "
        "| Checked |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in results["memory"]:
        d, fh, fw = row["features"]
        lines.append(
            f"| {row['image'][0]} × {row['image'][1]} | {d} × {fh} × {fw} | {megabytes(row['all_pairs_bytes'])} "
            f"| {megabytes(row['search_map_bytes'])} | {megabytes(row['lean_peak_bytes'])} | {factor(row['ratio'])} "
            f"| {'yes' if row['all_pairs_checked'] else 'formula'} |"
        )
    lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=(192, 160), metavar=("H", "W"), help="image size")
    parser.add_argument("--pairs", type=int, default=10, help="timed test pairs per method (after 1 warm-up)")
    parser.add_argument("--train-batch", type=int, default=8, help="training batch size")
    parser.add_argument("--train-steps", type=int, default=3, help="timed training steps (after 1 warm-up)")
    parser.add_argument(
        "--memory-sizes",
        type=parse_size,
        nargs="+",
        default=list(DEFAULT_MEMORY_SIZES),
        metavar="HxW",
        help="image sizes of the correlation-memory table",
    )
    parser.add_argument("--device", default=None, help="torch device (default: searchmorph_lite.default_device())")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch.set_num_threads (default: all)")
    parser.add_argument("--out", default=str(HERE / "results"), help="results files (.json, .md; default: %(default)s)")
    parser.add_argument("--child", choices=CHILD_TASKS, help=argparse.SUPPRESS)
    parser.add_argument("--child-pretrained", action="store_true", help=argparse.SUPPRESS)
    return parser


def check_counts(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """parser.error (exit 2) for a pair, batch, step or thread count below 1."""
    for name in ("pairs", "train_batch", "train_steps", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")


def check_sizes(parser: argparse.ArgumentParser, args: argparse.Namespace, multiple: int) -> None:
    """parser.error (exit 2) for image sizes that are not positive multiples of the models' size_multiple."""
    for flag, sizes in (("--size", [args.size]), ("--memory-sizes", args.memory_sizes)):
        for h, w in sizes:
            if h < multiple or w < multiple or h % multiple or w % multiple:
                parser.error(
                    f"{flag} {h}x{w}: both sides must be positive multiples of {multiple}, the models' size_multiple"
                )


def settings_of(args: argparse.Namespace) -> dict:
    """The run's sizes and counts, JSON-ready."""
    return {
        "size": list(args.size),
        "pairs": args.pairs,
        "train_batch": args.train_batch,
        "train_steps": args.train_steps,
        "memory_sizes": [list(s) for s in args.memory_sizes],
    }


def main(argv: list[str] | None = None) -> dict | None:
    """Results written to ``--out``.json and .md (in a ``--child`` process: one measurement, printed as JSON)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.size = tuple(args.size)
    args.memory_sizes = [tuple(s) for s in args.memory_sizes]
    check_counts(parser, args)
    try:
        device = torch.device(args.device) if args.device else sm.default_device()
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as err:
        parser.error(f"--device {args.device}: {err}")
    args.device = str(device)
    torch.set_num_threads(args.threads)

    if args.child:
        kind, method = args.child.split("/", 1)
        if kind == "inference":
            result = child_inference(method, args.size, args.pairs, device, args.child_pretrained)
        else:
            result = child_training(
                method, args.size, args.train_batch, args.train_steps, device, args.child_pretrained
            )
        print(json.dumps(result))
        return

    # Decide once which weights every child uses: others may add a checkpoint to pretrained/ while this runs.
    available = sm.available_pretrained()
    pretrained = {kind: PRETRAINED[kind] in available for kind in NETWORKS}
    networks = {kind: load_network(kind, pretrained[kind], device) for kind in NETWORKS}
    check_sizes(parser, args, max(net.size_multiple for net in networks.values()))
    if importlib.util.find_spec("ants") is None:
        parser.error("ANTs SyN needs antspyx: pip install antspyx (or pip install -e .[baselines])")
    # Build the brain2d cache here if it is missing, so that no child's memory baseline includes building it.
    load_dataset("brain2d", "test", image_size=args.size, num_pairs=1)[0]

    inference = {m: run_child(f"inference/{m}", args, pretrained) for m in METHODS}
    training = {n: run_child(f"training/{n}", args, pretrained) for n in NETWORKS}
    print("measuring correlation memory ...", file=sys.stderr, flush=True)
    sizes = sorted({*args.memory_sizes, args.size}, key=lambda s: s[0] * s[1])  # the ratio needs --size too
    memory = [memory_row(networks["SearchMorph"], size, device) for size in sizes]
    at_size = next(row for row in memory if tuple(row["image"]) == args.size)

    settings = settings_of(args)
    defaults = settings_of(build_parser().parse_args([]))
    results = {
        "command": command("inference.py", argv),
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "hardware": hardware(device, args.threads),
        "settings": settings,
        "non_default_settings": ["--" + k.replace("_", "-") for k in settings if settings[k] != defaults[k]],
        "weights": {kind: weights_label(kind, pretrained[kind]) for kind in NETWORKS},
        "memory_measure": (
            "torch.cuda.max_memory_allocated (ANTs: rise of peak RSS, it runs on the CPU)"
            if device.type == "cuda"
            else "rise of peak RSS over its value once imports, data and model were loaded"
        ),
        "inference": inference,
        "training": training,
        "memory": memory,
        "ratios": {
            "size": list(args.size),
            "searchmorph_vs_voxelmorph_inference_time": inference["SearchMorph"]["median_s"]
            / inference["VoxelMorph"]["median_s"],
            "ants_syn_vs_searchmorph_inference_time": inference["ANTs SyN"]["median_s"]
            / inference["SearchMorph"]["median_s"],
            "searchmorph_vs_voxelmorph_training_pairs_per_s": training["SearchMorph"]["pairs_per_s"]
            / training["VoxelMorph"]["pairs_per_s"],
            "all_pairs_vs_lean_memory": at_size["ratio"],
            "all_pairs_vs_search_map_memory": at_size["ratio_search_map"],
        },
    }
    write_results(args.out, results, markdown(results))
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
