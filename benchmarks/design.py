"""Benchmark of the library's design changes (issue 9), all in one run on one machine:

(a) warp forward + backward on a (batch, 1, H, W) image: the exact gather ``sm.bilinear_sample`` (the path every
    warp took up to commit f8b830c) against ``sm.warp`` (``grid_sample``), interleaved A B A B, with the largest
    difference of the warped images and of the field gradients;
(b) SearchMorph training pairs/s (batch 8, 192 x 160, eq. 9 with LNCC and alpha 2 over all iterations, Adam, from
    the shipped brain2d weights, on the same brain2d training batch) of the previous code (commit f8b830c) against
    this checkout, each in its own subprocess so that imports never mix, interleaved A B, B A, ... over
    ``--repeats`` rounds: median pairs/s per side and the median of the per-round ratios. The loss of the first
    step (same weights, same batch) is compared too;
(c) SearchMorph inference (``sm.register`` with ``load_pretrained("brain2d")``, batch 1) against ANTs SyN
    (``searchmorph_lite.baselines.ants_register``, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS = ``--threads``) on the
    same brain2d test pairs, paired and interleaved per pair (which one goes first alternates), for this checkout
    and for the previous code: median seconds and the median of the per-pair ratios SyN / SearchMorph. The two
    codes' fields on the same pairs are compared.

The previous code is extracted from git (``git archive``, into a temporary folder that is removed afterwards, so
the repository's own metadata is never touched), or taken from ``--old-code DIR`` (a folder holding its
``searchmorph_lite`` package, e.g. a ``git worktree``). Under CPU contention torch slows several-fold while ANTs
barely moves: measure on an idle machine. A warning is printed (and recorded) when the 1-minute load average
exceeds 0.5 at the start. Writes ``design_results.json`` and ``design_results.md`` into ``--out`` (default:
``benchmarks/``), each atomically. ``--help`` lists sizes, counts, threads and device.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OLD_COMMIT = "f8b830c"  # the last commit before "Shape the library like Fig. 1" (one sampler, grid_sample warp)
LOAD_WARNING = 0.5  # 1-minute load average above which the machine is not idle
CHILD_TASKS = ("train", "infer")


# ---------------------------------------------------------------------------------------------------------------
# Helpers shared by parent and children (they must not import searchmorph_lite: a child imports its own copy)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock times cover it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """(seconds, result) of one call of ``fn``, GPU work included."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def load_average() -> float | None:
    """The 1-minute load average, or None where the OS does not report one."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def import_library(code: Path):
    """``searchmorph_lite`` imported from ``code`` (a folder holding the package); SystemExit if another copy won."""
    sys.path.insert(0, str(code))
    import searchmorph_lite as sm

    where = Path(sm.__file__).resolve()
    if code.resolve() not in where.parents:
        raise SystemExit(f"imported searchmorph_lite from {where}, not from {code}")
    return sm


# ---------------------------------------------------------------------------------------------------------------
# Children: one code version each, in their own process


def child_train(sm, data: dict, args: argparse.Namespace, device: torch.device) -> dict:
    """Seconds per Adam step on eq. 9 (LNCC, alpha 2, all iterations) from the brain2d weights, after 1 warm-up."""
    from searchmorph_lite.train import TrainConfig, registration_loss_all

    moving, fixed = data["train_moving"].to(device), data["train_fixed"].to(device)
    model = sm.load_pretrained("brain2d").to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    cfg = TrainConfig()

    def step() -> float:
        loss = registration_loss_all(model(moving, fixed), moving, fixed, cfg)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    _, first_loss = timed(step, device)  # warm-up; its loss is the same weights on the same batch for both codes
    seconds = [timed(step, device)[0] for _ in range(args.steps)]
    return {
        "first_loss": first_loss,
        "step_seconds": seconds,
        "pairs_per_s": moving.shape[0] * len(seconds) / sum(seconds),
    }


def child_infer(sm, data: dict, args: argparse.Namespace, device: torch.device) -> dict:
    """Per-pair seconds of ``sm.register`` (brain2d weights) and ANTs SyN, interleaved, after 1 warm-up pair each."""
    import numpy as np

    from searchmorph_lite.baselines import ants_register

    model = sm.load_pretrained("brain2d").to(device).eval()
    pairs = list(zip(data["test_moving"], data["test_fixed"]))  # (1, H, W) each; pair 0 warms up
    methods = {
        "SearchMorph": lambda m, f: sm.register(m, f, model),
        "ANTs SyN": lambda m, f: ants_register(m, f, "SyN"),
    }
    for run in methods.values():
        run(*pairs[0])
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    flows = []
    for i, (m, f) in enumerate(pairs[1:]):
        order = list(methods) if i % 2 == 0 else list(methods)[::-1]
        for name in order:
            t, (_, flow) = timed(lambda run=methods[name], m=m, f=f: run(m, f), device)
            seconds[name].append(t)
            if name == "SearchMorph":
                flows.append(np.asarray(flow, dtype=np.float32))
    torch.save(torch.from_numpy(np.stack(flows)), args.child_flows)
    return {"seconds": seconds}


def run_child(task: str, code: Path, data_file: Path, args: argparse.Namespace, flows: Path | None = None) -> dict:
    """The JSON dict a ``--child`` subprocess prints; SystemExit with its stderr when it fails."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        task,
        "--child-code",
        str(code),
        "--child-data",
        str(data_file),
        "--steps",
        str(args.steps),
        "--threads",
        str(args.threads),
        "--device",
        str(args.device),
    ]
    if flows is not None:
        cmd += ["--child-flows", str(flows)]
    env = dict(os.environ, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(args.threads))  # ANTs' thread count
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    if proc.returncode != 0:
        raise SystemExit(f"{task} with the code in {code} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------------------
# Parent: the three measurements


def warp_gather(sm, image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Warped image (B, C, *S) through the exact gather at p + flow(p): ``warp`` as it was up to f8b830c."""
    spatial = tuple(image.shape[2:])
    coords = sm.identity_grid(spatial, device=flow.device, dtype=flow.dtype) + flow
    points = coords.flatten(2).transpose(1, 2)  # (B, P, ndim)
    return sm.bilinear_sample(image, points).reshape(image.shape)


def measure_warp(sm, data: dict, args: argparse.Namespace, device: torch.device) -> dict:
    """(a): milliseconds of warp forward + backward (gradient to the field), gather vs grid_sample, interleaved."""
    image = data["train_moving"].to(device)
    b, _, h, w = image.shape
    gen = torch.Generator().manual_seed(0)
    coarse = 3.0 * torch.randn(b, 2, max(h // 16, 2), max(w // 16, 2), generator=gen)  # smooth, a few pixels
    field = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False).to(device)
    grad_out = torch.randn(image.shape, generator=gen).to(device)
    paths = {"gather (old)": lambda f: warp_gather(sm, image, f), "warp (new)": lambda f: sm.warp(image, f)}

    def run(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        flow = field.clone().requires_grad_(True)
        out = paths[name](flow)
        out.backward(grad_out)
        return out.detach(), flow.grad

    outputs = {name: run(name) for name in paths}  # also the warm-up
    ms: dict[str, list[float]] = {name: [] for name in paths}
    for r in range(args.warp_repeats):
        for name in list(paths) if r % 2 == 0 else list(paths)[::-1]:
            ms[name].append(1e3 * timed(lambda name=name: run(name), device)[0])
    (old_out, old_grad), (new_out, new_grad) = outputs.values()
    old_ms, new_ms = ms.values()
    return {
        "shape": list(image.shape),
        "milliseconds": ms,
        "median_ms": {name: statistics.median(v) for name, v in ms.items()},
        "speedup": statistics.median(o / n for o, n in zip(old_ms, new_ms)),
        "max_abs_diff_warped": (old_out - new_out).abs().max().item(),
        "max_abs_diff_field_grad": (old_grad - new_grad).abs().max().item(),
        "max_abs_field_grad": old_grad.abs().max().item(),
    }


def measure_training(codes: dict[str, Path], data_file: Path, args: argparse.Namespace) -> dict:
    """(b): pairs/s of each code over ``--repeats`` rounds, sides alternating first, and per-round ratios."""
    runs: dict[str, list[dict]] = {side: [] for side in codes}
    for r in range(args.repeats):
        for side in list(codes) if r % 2 == 0 else list(codes)[::-1]:
            print(f"training, round {r + 1}/{args.repeats}: {side} code ...", file=sys.stderr, flush=True)
            runs[side].append(run_child("train", codes[side], data_file, args))
    old, new = runs["old"], runs["new"]
    return {
        "runs": runs,
        "median_pairs_per_s": {side: statistics.median(run["pairs_per_s"] for run in v) for side, v in runs.items()},
        "speedup": statistics.median(n["pairs_per_s"] / o["pairs_per_s"] for o, n in zip(old, new)),
        "first_loss": {side: v[0]["first_loss"] for side, v in runs.items()},
        "first_loss_rel_diff": abs(new[0]["first_loss"] - old[0]["first_loss"]) / abs(old[0]["first_loss"]),
    }


def measure_inference(codes: dict[str, Path], data_file: Path, tmp: Path, args: argparse.Namespace) -> dict:
    """(c): per-pair seconds of SearchMorph and ANTs SyN, interleaved per pair, for each code; fields compared."""
    out: dict[str, Any] = {}
    flows = {}
    for side in ("new", "old"):
        print(f"inference vs ANTs SyN: {side} code ...", file=sys.stderr, flush=True)
        flows[side] = tmp / f"flows_{side}.pt"
        seconds = run_child("infer", codes[side], data_file, args, flows=flows[side])["seconds"]
        sm_s, ants_s = seconds["SearchMorph"], seconds["ANTs SyN"]
        out[side] = {
            "seconds": seconds,
            "median_s": {name: statistics.median(v) for name, v in seconds.items()},
            "syn_over_searchmorph": statistics.median(a / s for a, s in zip(ants_s, sm_s)),
        }
    old_flows, new_flows = (torch.load(flows[side], weights_only=True) for side in ("old", "new"))
    out["max_abs_diff_flow_px"] = (old_flows - new_flows).abs().max().item()
    out["max_abs_flow_px"] = old_flows.abs().max().item()
    out["searchmorph_speedup"] = statistics.median(
        o / n for o, n in zip(out["old"]["seconds"]["SearchMorph"], out["new"]["seconds"]["SearchMorph"])
    )
    # the processes run one after the other: ANTs, timed beside SearchMorph in each, is the common clock
    out["searchmorph_speedup_in_syn_time"] = out["new"]["syn_over_searchmorph"] / out["old"]["syn_over_searchmorph"]
    return out


# ---------------------------------------------------------------------------------------------------------------
# Setup and report


def git(*args: str) -> str:
    """Output of ``git -C REPO args`` (stripped); CalledProcessError when git fails."""
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout.strip()


def extract_old_code(commit: str, into: Path) -> Path:
    """Folder holding ``searchmorph_lite`` as of ``commit``, extracted with ``git archive`` under ``into``."""
    tar = subprocess.run(["git", "-C", str(REPO), "archive", commit, "searchmorph_lite"], capture_output=True)
    if tar.returncode != 0:
        raise SystemExit(f"git archive {commit} failed: {tar.stderr.decode()[-500:]}; pass --old-code DIR instead")
    folder = into / f"old_code_{commit}"
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.11.4 (and 3.9.17, 3.10.12)
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as archive:
        archive.extractall(folder, **safe)
    return folder


def prepare_data(sm, args: argparse.Namespace, path: Path) -> dict:
    """The training batch (B, 1, H, W) and ``--pairs`` + 1 test pairs (1, H, W), saved to ``path`` for the children."""
    from searchmorph_lite.data import load_dataset

    size = tuple(args.size)
    train = load_dataset("brain2d", "train", image_size=size, num_pairs=args.batch)
    test = load_dataset("brain2d", "test", image_size=size, num_pairs=args.pairs + 1)
    if len(test) < args.pairs + 1:
        raise SystemExit(f"--pairs {args.pairs}: brain2d's test split has only {len(test) - 1} pairs after the warm-up")
    items = [train[i] for i in range(args.batch)]
    tests = [test[i] for i in range(args.pairs + 1)]
    data = {
        "train_moving": torch.stack([it["moving"] for it in items]),
        "train_fixed": torch.stack([it["fixed"] for it in items]),
        "test_moving": torch.stack([it["moving"] for it in tests]),
        "test_fixed": torch.stack([it["fixed"] for it in tests]),
    }
    torch.save(data, path)
    return data


def hardware(device: torch.device, threads: int) -> dict:
    """Hostname-free description of the machine: CPU model, cores, torch, device, threads."""
    info: dict[str, Any] = {
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "device": str(device),
        "threads": threads,
    }
    try:
        with open("/proc/cpuinfo") as fh:
            info["cpu_model"] = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu_model"] = platform.processor() or platform.machine()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def count(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless n is 1: "3 rounds", "1 round"."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def load_text(value: float | None) -> str:
    """A load average as "0.31", or "unknown"."""
    return "unknown" if value is None else f"{value:.2f}"


def factor(x: float) -> str:
    """A ratio as "1.3×" or "12×"."""
    return f"{x:.3g}×"


def markdown(results: dict) -> str:
    """The results as a short markdown document: machine, command, one table per measurement, the goals."""
    hw, s = results["hardware"], results["settings"]
    h, w = s["size"]
    gpu = f", GPU {hw['gpu']}" if "gpu" in hw else ""
    lines = [
        "# Design benchmarks (issue 9)",
        "",
        f"Measured on {results['date_utc'][:10]} on {hw['cpu_model']} ({hw['cpu_count']} CPUs{gpu}), device "
        f"`{hw['device']}`, {hw['threads']} threads (torch and ITK), torch {hw['torch']}, with `{results['command']}`. "
        f"Old code: commit {results['old_code']['commit']}; new: {results['new_code']['commit']}"
        f"{' with uncommitted changes' if results['new_code']['dirty'] else ''}. 1-minute load average "
        f"{load_text(results['load_average']['start'])} at the start, {load_text(results['load_average']['end'])} "
        "at the end.",
    ]
    if results["warnings"]:
        lines += ["", *[f"**Warning:** {text}" for text in results["warnings"]]]
    a = results["warp"]
    names = list(a["median_ms"])
    lines += [
        "",
        f"## (a) warp forward + backward, {' × '.join(map(str, a['shape']))}",
        "",
        f"Interleaved over {count(s['warp_repeats'], 'round')}; the gradient flows to the field, as in training.",
        "",
        "| Path | Median (ms) |",
        "| --- | ---: |",
        *[f"| {name} | {a['median_ms'][name]:.3g} |" for name in names],
        "",
        f"`warp` is {factor(a['speedup'])} faster (median of per-round ratios). Largest differences: warped image "
        f"{a['max_abs_diff_warped']:.2g}, field gradient {a['max_abs_diff_field_grad']:.2g} (largest gradient "
        f"{a['max_abs_field_grad']:.2g}): grid_sample's positions are exact to about 1e-7 × size pixels, and a "
        "bilinear field gradient jumps where a position crosses a pixel edge, so a few positions within that "
        "rounding of an edge take the neighbouring cell's slope.",
    ]
    b = results["training"]
    per_round = {side: ", ".join(f"{run['pairs_per_s']:.3g}" for run in runs) for side, runs in b["runs"].items()}
    lines += [
        "",
        f"## (b) SearchMorph training, batch {s['batch']}, {h} × {w}",
        "",
        f"From the brain2d weights on one brain2d training batch: one warm-up step then "
        f"{count(s['steps'], 'timed Adam step')} per run, each code in its own process, "
        f"{count(s['repeats'], 'round')} with the side that goes first alternating.",
        "",
        "| Code | Pairs/s per round | Median pairs/s |",
        "| --- | --- | ---: |",
        *[f"| {side} | {per_round[side]} | {b['median_pairs_per_s'][side]:.3g} |" for side in ("old", "new")],
        "",
        f"The new code trains {factor(b['speedup'])} as many pairs/s (median of per-round ratios; goal 1.5×: "
        f"{'met' if results['goals']['training_speedup_at_least_1_5x'] else 'not met'}). "
        f"First-step loss: {b['first_loss']['old']:.7f} (old) vs {b['first_loss']['new']:.7f} (new), relative "
        f"difference {b['first_loss_rel_diff']:.1e}.",
    ]
    c = results["inference"]
    lines += [
        "",
        f"## (c) Inference vs ANTs SyN, {h} × {w} brain2d test pairs",
        "",
        f"`sm.register` (brain2d weights, batch 1) and ANTs SyN on the same {count(s['pairs'], 'pair')}, interleaved "
        "per pair (which goes first alternates), after one warm-up pair each; one process per code.",
        "",
        "| Code | SearchMorph median (s) | ANTs SyN median (s) | SyN / SearchMorph (median per pair) |",
        "| --- | ---: | ---: | ---: |",
        *[
            f"| {side} | {c[side]['median_s']['SearchMorph']:.3g} | {c[side]['median_s']['ANTs SyN']:.3g} "
            f"| {factor(c[side]['syn_over_searchmorph'])} |"
            for side in ("old", "new")
        ],
        "",
        f"New over old SearchMorph speed: {factor(c['searchmorph_speedup_in_syn_time'])} measured in units of SyN's "
        f"time in the same process ({factor(c['searchmorph_speedup'])} in seconds, across the two processes, which "
        "run one after the other). Goal, SyN / SearchMorph of at least 10× with the new code: "
        f"{'met' if results['goals']['inference_syn_over_searchmorph_at_least_10x'] else 'not met'}. "
        "Fields of the two codes differ by at most "
        f"{c['max_abs_diff_flow_px']:.2g} px (largest displacement {c['max_abs_flow_px']:.3g} px).",
        "",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=(192, 160), metavar=("H", "W"), help="image size")
    parser.add_argument("--batch", type=int, default=8, help="training batch, and the warp benchmark's batch")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per run (after 1 warm-up)")
    parser.add_argument("--repeats", type=int, default=5, help="training rounds, each one run of each code")
    parser.add_argument("--pairs", type=int, default=20, help="timed test pairs per code (after 1 warm-up)")
    parser.add_argument("--warp-repeats", type=int, default=20, help="rounds of the warp benchmark")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads and ANTs' ITK threads")
    parser.add_argument("--device", default=None, help="torch device (default: searchmorph_lite.default_device())")
    parser.add_argument(
        "--old-code",
        type=Path,
        default=None,
        help=f"folder holding the previous searchmorph_lite package (default: commit {OLD_COMMIT} via git archive)",
    )
    parser.add_argument("--old-commit", default=OLD_COMMIT, help="commit extracted when --old-code is not given")
    parser.add_argument("--out", type=Path, default=HERE, help="folder of design_results.json and .md")
    parser.add_argument("--child", choices=CHILD_TASKS, help=argparse.SUPPRESS)
    parser.add_argument("--child-code", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-flows", type=Path, help=argparse.SUPPRESS)
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    for name in ("batch", "steps", "repeats", "pairs", "warp_repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    torch.set_num_threads(args.threads)

    if args.child:
        sm = import_library(args.child_code)
        device = torch.device(args.device)
        data = torch.load(args.child_data, weights_only=True)
        task = child_train if args.child == "train" else child_infer
        print(json.dumps({"library": str(Path(sm.__file__).parent), **task(sm, data, args, device)}))
        return

    load_start = load_average()
    warnings = []
    if load_start is not None and load_start > LOAD_WARNING:
        warnings.append(
            f"the 1-minute load average is {load_start:.2f} (> {LOAD_WARNING}) at the start: the machine is not "
            "idle, and torch slows several-fold under contention while ANTs barely moves. Rerun on an idle machine."
        )
        print(f"WARNING: {warnings[-1]}", file=sys.stderr, flush=True)
    sm = import_library(REPO)
    from searchmorph_lite._files import atomic_write_text

    try:
        device = torch.device(args.device) if args.device else sm.default_device()
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as err:
        parser.error(f"--device {args.device}: {err}")
    args.device = str(device)
    multiple = sm.load_pretrained("brain2d").size_multiple
    if any(n % multiple for n in args.size):
        parser.error(f"--size {args.size[0]} {args.size[1]}: both sides must be multiples of {multiple}")

    with tempfile.TemporaryDirectory(prefix="design_benchmark_") as tmp_name:
        tmp = Path(tmp_name)
        if args.old_code is not None:
            if not (args.old_code / "searchmorph_lite" / "__init__.py").is_file():
                parser.error(f"--old-code {args.old_code}: no searchmorph_lite package in it")
            old_code, old_commit = args.old_code.resolve(), f"{args.old_code} (given)"
        else:
            old_code, old_commit = extract_old_code(args.old_commit, tmp), args.old_commit
        codes = {"old": old_code, "new": REPO}
        data_file = tmp / "data.pt"
        data = prepare_data(sm, args, data_file)

        print("warp: gather vs grid_sample ...", file=sys.stderr, flush=True)
        warp_results = measure_warp(sm, data, args, device)
        training = measure_training(codes, data_file, args)
        inference = measure_inference(codes, data_file, tmp, args)

    results = {
        "command": "python benchmarks/design.py" + "".join(" " + shlex.quote(a) for a in sys.argv[1:]),
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "hardware": hardware(device, args.threads),
        "load_average": {"start": load_start, "end": load_average()},
        "warnings": warnings,
        "settings": {k: getattr(args, k) for k in ("batch", "steps", "repeats", "pairs", "warp_repeats")}
        | {"size": list(args.size)},
        "old_code": {"commit": old_commit},
        "new_code": {
            "commit": git("rev-parse", "--short", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--", "searchmorph_lite")),
        },
        "warp": warp_results,
        "training": training,
        "inference": inference,
        "goals": {
            "inference_syn_over_searchmorph_at_least_10x": inference["new"]["syn_over_searchmorph"] >= 10,
            "training_speedup_at_least_1_5x": training["speedup"] >= 1.5,
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "design_results.json", json.dumps(results, indent=1) + "\n")
    atomic_write_text(args.out / "design_results.md", markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
