"""Training and inference timings of SearchMorph and VoxelMorph on one device, CUDA synchronised, as JSON.

Usage: python .ci/gpu_timings.py --device cuda [--size 192 160] [--batch 8] [--steps 5] [--amp bf16 fp16]
                                 [--out timings.json]

Per model: seconds per training step (forward, eq. 9 over the iterations, backward, Adam) at batch ``--batch``,
also with mixed precision for each ``--amp`` mode (bf16, fp16: TrainConfig.amp, CUDA only), and seconds per
forward pass of one pair, each the median of ``--steps`` runs after one warm-up, with the device
synchronised around every run (a GPU queues kernels asynchronously: an unsynchronised clock stops too early).
Random images: the cost does not depend on the content. On a CPU it runs too, at the size given (CI runs it small).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
from pathlib import Path

import torch

from searchmorph_lite.book import synced_times
from searchmorph_lite.train import AMP_DTYPES, TrainConfig, check_amp, restore_run, training_step


def timed(fn, device: torch.device, runs: int) -> float:
    """Median seconds of fn() over ``runs`` calls after one warm-up, synchronised."""
    fn()
    return statistics.median(synced_times(fn, device, runs))


def model_timings(
    kind: str, device: torch.device, size: tuple[int, int], batch: int, runs: int, amps: list[str]
) -> dict:
    """{"train_step_s", "forward_pair_s", "peak_memory_mib" (CUDA only: of the training steps), and per
    mixed-precision mode in ``amps`` "train_step_<amp>_s" and "peak_memory_<amp>_mib"} of one model at its default
    config.

    Each training step is the library's own (``train.training_step``: forward under TrainConfig.amp's autocast,
    eq. 9 over the iterations in float32, backward, Adam), on a fresh model and Adam per mode.
    """
    torch.manual_seed(0)
    moving, fixed = torch.rand(2, batch, 1, *size, device=device)
    out: dict = {}
    for amp in ("off", *amps):
        cfg = TrainConfig(model=kind, amp=amp)
        torch.manual_seed(0)
        run = restore_run(cfg, None, None, {}, device, 1)
        run.model.train()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        suffix = "" if amp == "off" else f"_{amp}"
        step = functools.partial(training_step, run.model, run, moving, fixed, cfg)
        out[f"train_step{suffix}_s"] = timed(step, device, runs)
        if device.type == "cuda":
            out[f"peak_memory{suffix}_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        if amp == "off":
            run.model.eval()
            with torch.no_grad():
                out["forward_pair_s"] = timed(functools.partial(run.model, moving[:1], fixed[:1]), device, runs)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, nargs=2, default=(192, 160))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--amp", nargs="*", default=[], choices=sorted(AMP_DTYPES), help="also time training steps in these modes"
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    for amp in args.amp:
        try:
            check_amp(amp, device)  # CUDA only: one line, before any timing
        except ValueError as err:
            parser.error(str(err))
    report = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "size": list(args.size),
        "batch": args.batch,
        "runs": args.steps,
        "synchronised": device.type == "cuda",
        "amp": args.amp,
        "models": {
            k: model_timings(k, device, tuple(args.size), args.batch, args.steps, args.amp)
            for k in ("SearchMorph", "VoxelMorph")
        },
    }
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
