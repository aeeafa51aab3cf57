"""Cost per pair of SearchMorph-3D and VoxelMorph-3D at 48^3: inference (batch 1) and a training step (batch 2),
with PyTorch's own convolution choice ("before") and with oneDNN forced at every batch size ("after").

PyTorch's CPU heuristic sends a 3x3x3 convolution with kernel <= 3 and N * C * D * H <= 20480 to its reference
kernel ``aten::slow_conv3d``: every 32-channel convolution at 24^3 of a batch-1 SearchMorph-3D.
``searchmorph_lite._nd.conv3d`` calls oneDNN directly. This script times both, interleaved (before, after, before,
after, ...) in one process, and profiles one "after" forward pass to show what remains. Run it on an idle machine:
``python benchmarks/cost3d.py`` writes benchmarks/cost3d.{json,md}.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(HERE / "cost3d"))
    args = parser.parse_args(argv)
    import torch

    import searchmorph_lite as sm
    from searchmorph_lite import _nd
    from searchmorph_lite.data import load_dataset
    from searchmorph_lite.losses import folding_barrier, grad_l2_loss, lncc_loss

    torch.set_num_threads(args.threads)
    data = load_dataset("brain3d", "test", voxel_mm=4, num_pairs=2)
    items = [data[i] for i in range(2)]
    m1, f1 = items[0]["moving"][0].numpy(), items[0]["fixed"][0].numpy()
    m2 = torch.stack([it["moving"] for it in items])
    f2 = torch.stack([it["fixed"] for it in items])
    fast = _nd._onednn_ok

    def set_path(after: bool) -> None:
        _nd._onednn_ok = fast if after else (lambda x, padding: False)

    results: dict = {}
    for name in ("brain3d", "brain3d-voxelmorph"):
        model = sm.load_pretrained(name, device="cpu")
        train_model = sm.build_model(type(model).__name__, model.config.to_dict())
        optimizer = torch.optim.Adam(train_model.parameters(), 1e-3)

        def infer() -> None:
            sm.register(m1, f1, model)  # noqa: B023

        def step() -> None:
            out = train_model(m2, f2)  # noqa: B023
            loss = lncc_loss(out.warped, f2) + 2 * grad_l2_loss(out.flow) + 10 * folding_barrier(out.flow)
            optimizer.zero_grad()  # noqa: B023
            loss.backward()
            optimizer.step()  # noqa: B023

        times = {k: [] for k in ("infer_before", "infer_after", "step_before", "step_after")}
        for after in (False, True):  # warm up both paths
            set_path(after)
            infer()
            step()
        for _ in range(args.repeats):
            for after in (False, True):
                set_path(after)
                tag = "after" if after else "before"
                t = time.perf_counter()
                infer()
                times[f"infer_{tag}"].append(time.perf_counter() - t)
                t = time.perf_counter()
                step()
                times[f"step_{tag}"].append((time.perf_counter() - t) / 2)  # per pair
        set_path(True)
        with torch.profiler.profile() as prof:
            infer()
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8)
        results[name] = {k: float(np.median(v)) for k, v in times.items()}
        results[name]["profile_after"] = table
        print(name, {k: round(v, 3) for k, v in results[name].items() if k != "profile_after"}, flush=True)
    results["threads"] = args.threads
    results["machine"] = platform.processor() or platform.machine()
    results["load"] = os.getloadavg()[0]
    results["command"] = " ".join(["python benchmarks/cost3d.py", *(argv if argv is not None else sys.argv[1:])])
    Path(args.out + ".json").write_text(json.dumps(results, indent=1) + "\n")
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
    Path(args.out + ".md").write_text("\n".join(lines))
    return results


if __name__ == "__main__":
    main()
