"""Training and inference timings of SearchMorph and VoxelMorph on one device, CUDA synchronised, as JSON.

Usage: python .ci/gpu_timings.py --device cuda [--size 192 160] [--batch 8] [--steps 5] [--out timings.json]

Per model: seconds per training step (forward, eq. 9 over the iterations, backward, Adam) at batch ``--batch``,
and seconds per forward pass of one pair, each the median of ``--steps`` runs after one warm-up, with the device
synchronised around every run (a GPU queues kernels asynchronously: an unsynchronised clock stops too early).
Random images: the cost does not depend on the content. On a CPU it runs too, at the size given (CI runs it small).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

import searchmorph_lite as sm
from searchmorph_lite.book import synced_times
from searchmorph_lite.train import TrainConfig, registration_loss_all


def timed(fn, device: torch.device, runs: int) -> float:
    """Median seconds of fn() over ``runs`` calls after one warm-up, synchronised."""
    fn()
    return statistics.median(synced_times(fn, device, runs))


def model_timings(kind: str, device: torch.device, size: tuple[int, int], batch: int, runs: int) -> dict:
    """{"train_step_s", "forward_pair_s", "peak_memory_mib" (CUDA only)} of one model."""
    torch.manual_seed(0)
    model = (sm.SearchMorph() if kind == "SearchMorph" else sm.VoxelMorph()).to(device)
    cfg = TrainConfig(model=kind)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    moving, fixed = torch.rand(2, batch, 1, *size, device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = registration_loss_all(model(moving, fixed), moving, fixed, cfg)
        loss.backward()
        opt.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    out = {"train_step_s": timed(step, device, runs)}
    model.eval()
    with torch.no_grad():
        out["forward_pair_s"] = timed(lambda: model(moving[:1], fixed[:1]), device, runs)
    if device.type == "cuda":
        out["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, nargs=2, default=(192, 160))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    report = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "size": list(args.size),
        "batch": args.batch,
        "runs": args.steps,
        "synchronised": device.type == "cuda",
        "models": {
            k: model_timings(k, device, tuple(args.size), args.batch, args.steps) for k in ("SearchMorph", "VoxelMorph")
        },
    }
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
