"""Cost per pair of SearchMorph-3D and VoxelMorph-3D at 48^3: inference (batch 1) and a training step (batch 2),
with PyTorch's own convolution choice ("before") and with oneDNN forced at every batch size ("after").

PyTorch's CPU heuristic sends a 3x3x3 convolution with kernel <= 3 and N * C * D * H <= 20480 to its reference
kernel ``aten::slow_conv3d``: every 32-channel convolution at 24^3 of a batch-1 SearchMorph-3D.
``searchmorph_lite._nd.conv3d`` calls oneDNN directly. This script times both, interleaved (inference and a
training step, before and after, taking turns in a rotating order: ``searchmorph_lite.scoring.interleave``) in one
process, and profiles one "after" forward pass to show what remains. Inference goes through ``register`` as the
suites call it (``benchmarks.common.network``). Run it on an idle machine: ``python benchmarks/cost3d.py`` (the
``cost3d`` suite of ``python -m benchmarks``) writes benchmarks/cost3d.{json,md}; smoke run ``--repeats 1 --out
/tmp/c``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import HERE, command, machine, network, set_threads, training_step, write_results  # noqa: E402


def per_pair(name: str, repeat: int, output: None, seconds: float) -> float:
    """Seconds per pair of one timed call (interleave's keep): a training step holds 2 pairs."""
    return seconds / 2 if name.startswith("step") else seconds


def main(argv: list[str] | None = None) -> dict:
    """Results written to ``--out``.json and .md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(HERE / "cost3d"))
    args = parser.parse_args(argv)
    import torch

    import searchmorph_lite as sm
    from searchmorph_lite import _nd
    from searchmorph_lite.data import load_dataset
    from searchmorph_lite.scoring import interleave

    set_threads(args.threads)
    data = load_dataset("brain3d", "test", voxel_mm=4, num_pairs=2)
    items = [data[i] for i in range(2)]
    m1, f1 = items[0]["moving"][0].numpy(), items[0]["fixed"][0].numpy()
    m2 = torch.stack([it["moving"] for it in items])
    f2 = torch.stack([it["fixed"] for it in items])
    fast = _nd._onednn_ok

    def set_path(after: bool) -> None:
        _nd._onednn_ok = fast if after else (lambda x, padding: False)

    def on(after: bool, run):
        """``run`` with PyTorch's own convolution choice (before) or oneDNN forced (after)."""

        def method() -> None:
            set_path(after)
            run()

        return method

    results: dict = {}
    for name in ("brain3d", "brain3d-voxelmorph"):
        model = sm.load_pretrained(name, device="cpu")
        train_model = sm.build_model(type(model).__name__, model.config.to_dict())
        registration = network(model)
        step = training_step(train_model, m2, f2, alpha=2.0, fold_weight=10.0, iteration_weight=0.0)
        infer = lambda registration=registration: registration(m1, f1)  # noqa: E731
        methods = {f"{what}_{tag}": on(after, run) for what, run in (("infer", infer), ("step", step))
                   for after, tag in ((False, "before"), (True, "after"))}  # fmt: skip
        # each repeat runs the four in turn (the order rotating), after one untimed run of each
        times = interleave(methods, range(args.repeats), inputs=lambda _: (), keep=per_pair)
        set_path(True)
        with torch.profiler.profile() as prof:
            infer()
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8)
        results[name] = {k: float(np.median(v)) for k, v in times.items()}
        results[name]["profile_after"] = table
        print(name, {k: round(v, 3) for k, v in results[name].items() if k != "profile_after"}, flush=True)
    results["threads"] = args.threads
    results["machine"] = machine()
    results["load"] = os.getloadavg()[0]
    results["command"] = command("cost3d.py", argv)
    header = "| model | inference before | after | training step before | after |"
    intro = (f"Command: `{results['command']}`; {args.threads} thread(s), load average {results['load']:.2f}; "
             f"medians of {args.repeats} interleaved repeats, seconds per pair.")  # fmt: skip
    lines = [intro, "", header, "|---|---|---|---|---|"]
    for name in ("brain3d", "brain3d-voxelmorph"):
        r = results[name]
        lines.append(f"| {name} | {r['infer_before']:.3f} | {r['infer_after']:.3f} | {r['step_before']:.3f} | "
                     f"{r['step_after']:.3f} |")  # fmt: skip
    lines += ["", "Profile of one brain3d inference after the change:", "", "```", results["brain3d"]["profile_after"],
              "```", ""]  # fmt: skip
    write_results(args.out, results, "\n".join(lines))
    return results


if __name__ == "__main__":
    main()
