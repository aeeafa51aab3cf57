"""Transfer (issue 12): in- and out-of-distribution pairs, network alone, network + refinement, VoxelMorph, ANTs SyN.

Brain sets (brain2d-subjects test split, 192 x 160, labels 1-3; never trained or tuned on):

* ``in-distribution``: the test slabs (3 mm from every training slice), T1 contrast, both images deformed;
* ``inverted contrast``: the same pairs with 1 - T1 inside the brain (a T2-like contrast no training image had);
* ``2x deformation``: the subjects' warps at twice the training amplitude (``max_displacement`` 16 px);
* ``far slices``: slices outside the training range (``slices="far"``: z < -43 mm or z > 67 mm).

Echo set: ``echo clip``, pydicom's real apical four-chamber cine (``echo2d-clip``; ED frame 0 to every frame), no
labels: scored by NCC (the global Pearson correlation of warped and fixed inside the sector) and folding.

Methods on the same pairs, scored by one function and timed taking turns pair by pair
(``searchmorph_lite.scoring.run_methods``, as in the book): Identity, ANTs SyN (``ants_register``, seeded), the
VoxelMorph baseline, the SearchMorph network alone, and the network + ``--refine`` steps (``register(...,
refine_steps=N)``). ``--iterations`` adds the iteration sweep of the network (issue 12, part 5), in the same turns.
The networks see the images as every suite shows them (``benchmarks.common.network``: ``normalize=False``).
Torch and ITK use the same ``--threads``; run it on an idle machine. Writes ``benchmarks/transfer_results.{json,md}``
(the ``transfer`` suite of ``python -m benchmarks``).
``--sets`` reruns only the named sets (e.g. ``--sets "echo clip"`` after retraining the echo models) and merges them
into the existing results; each set records the command, threads and load it was measured with.
Smoke run: ``python benchmarks/transfer.py --pairs 2 --refine 10 --out /tmp/t``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import HERE, command, load_model, machine, network, set_threads, write_results  # noqa: E402

LABELS = (1, 2, 3)  # CSF and other brain, grey matter, white matter
BRAIN_SETS = {
    "in-distribution": {},
    "inverted contrast": {"contrast": "inverted"},
    "2x deformation": {"max_displacement": 16.0},
    "far slices": {"slices": "far"},
}


def methods(kind: str, refine: list[int], runs: dict, provenance: dict | None = None) -> tuple[dict, object]:
    """({name: method}, SearchMorph) for brain or echo: Identity, ANTs SyN, VoxelMorph, SearchMorph (+ refinement).

    ``provenance`` (if given) receives each network's one-line card (``searchmorph_lite.provenance.describe``)."""
    from searchmorph_lite.scoring import ants_method, identity_method

    base = "brain2d" if kind == "brain" else "echo2d"
    vm, smodel = load_model(f"{base}-voxelmorph", runs.get(f"{base}-voxelmorph")), load_model(base, runs.get(base))
    if provenance is not None:
        from searchmorph_lite.provenance import card_of, describe

        for name, model in ((f"{base}-voxelmorph", vm), (base, smodel)):
            source = f"training checkpoint {runs[name]}" if name in runs else "pretrained"
            provenance[name] = describe(name, card_of(model, source=source))
    out = {
        "Identity": identity_method,
        "ANTs SyN": ants_method("SyN", seed=1),
        "VoxelMorph": network(vm),
        "SearchMorph": network(smodel),
    }
    for n in refine:
        out[f"SearchMorph + {n} refinement steps"] = network(smodel, refine_steps=n)
    return out, smodel


def means(row: dict) -> str:
    """A result's means as "dice 0.8123, ncc 0.9000, ..."."""
    return ", ".join(f"{k[:-5]} {v:.4f}" for k, v in row.items() if k.endswith("_mean"))


def main(argv: list[str] | None = None) -> dict:
    """Results written to ``--out``.json and .md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=24, help="brain pairs per set (echo: every clip frame)")
    parser.add_argument("--refine", type=int, nargs="*", default=[30, 60, 120], help="refinement step counts")
    parser.add_argument("--iterations", type=int, nargs="*", default=[1, 2, 4, 8, 12], help="sweep (empty: none)")
    parser.add_argument("--threads", type=int, default=2, help="torch and ITK threads")
    what = "use CHECKPOINT for the pretrained NAME (e.g. brain2d training/x/checkpoint.pt)"
    parser.add_argument("--run", nargs=2, action="append", default=[], metavar=("NAME", "CHECKPOINT"), help=what)
    parser.add_argument("--out", default=str(HERE / "transfer_results"))
    parser.add_argument("--markdown-only", action="store_true", help="rewrite --out.md from --out.json; run nothing")
    every = [*BRAIN_SETS, "echo clip"]
    what = "run only these sets and merge them into --out.json (default: all)"
    parser.add_argument("--sets", nargs="+", choices=every, default=every, metavar="SET", help=f"{what}; {every}")
    args = parser.parse_args(argv)
    from searchmorph_lite.data import load_dataset
    from searchmorph_lite.scoring import run_methods

    set_threads(args.threads)
    stored = Path(f"{args.out}.json")
    if args.markdown_only:
        if not stored.is_file():
            parser.error(f"--markdown-only: no results at {stored} (run the benchmark first)")
        from searchmorph_lite.data.common import atomic_write_text

        atomic_write_text(f"{args.out}.md", markdown(json.loads(stored.read_text())))
        return {}
    runs = dict(args.run)
    partial = set(args.sets) != set(every)
    if partial and not stored.is_file():
        parser.error(f"--sets: no earlier results at {stored} to merge into (run all sets first)")
    measured = {"threads": args.threads, "load_at_start": os.getloadavg()[0], "torch": torch.__version__,
                "machine": machine(), "command": command("transfer.py", argv)}  # fmt: skip
    if partial:
        results = json.loads(stored.read_text())
    else:
        results = {**measured, "models": {}, "sets": {}, "iterations": {}}
    sets = {name: ("brain", opts) for name, opts in BRAIN_SETS.items()}
    sets["echo clip"] = ("echo", None)
    for set_name in args.sets:
        kind, opts = sets[set_name]
        if kind == "brain":
            data = load_dataset("brain2d-subjects", "test", num_pairs=args.pairs, **opts)
        else:
            data = load_dataset("echo2d-clip", "test")
        pairs = [data[i] for i in range(len(data))]
        table, model = methods(kind, args.refine, runs, results["models"])
        sweep = {f"SearchMorph, {n} iterations": network(model, iterations=n) for n in args.iterations}
        rows = run_methods({**table, **sweep}, pairs, labels=LABELS if kind == "brain" else None)
        results["sets"][set_name] = {"kind": kind, "pairs": len(pairs), "methods": {}, "measured": measured}
        results["iterations"].pop(set_name, None)
        for name in table:
            results["sets"][set_name]["methods"][name] = rows[name]
            print(f"{set_name:<18} {name:<36} {means(rows[name])}", flush=True)
        for n, name in zip(args.iterations, sweep):
            results["iterations"].setdefault(set_name, {})[str(n)] = rows[name]
            print(f"{set_name:<18} {name}: {means(rows[name])}", flush=True)
    measured["load_at_end"] = os.getloadavg()[0]
    if not partial:
        results["load_at_end"] = measured["load_at_end"]
    write_results(args.out, results, markdown(results))
    print(markdown(results))
    return results


def markdown(results: dict) -> str:
    """The tables as Markdown: where they were measured, then one per set (methods) and the iteration sweep."""
    lines = [
        f"Measured on {results['machine']}, torch {results['torch']}, {results['threads']} thread(s) for torch and"
        f" ITK, load average {results['load_at_start']:.2f} at the start and {results['load_at_end']:.2f} at the end"
        + (f"; `{results['command']}`" if results.get("command") else "")
        + ". Seconds are means over the pairs.",
        "",
    ]
    for line in results.get("models", {}).values():
        lines.append(f"- {line}")
    if results.get("models"):
        lines.append("")
    for set_name, block in results["sets"].items():
        lines += [f"### {set_name} ({block['pairs']} pairs)", ""]
        m = block.get("measured", {})
        if m.get("command", results.get("command")) != results.get("command"):
            lines += [f"Measured in a later run: `{m['command']}`, {m['threads']} thread(s), load average"
                      f" {m['load_at_start']:.2f} at the start and {m['load_at_end']:.2f} at the end.", ""]  # fmt: skip
        lines += ["| method | Dice | NCC | folding % | s / pair |", "|---|---|---|---|---|"]
        for name, r in block["methods"].items():
            d = f"{r['dice_mean']:.3f}" if "dice_mean" in r else "-"
            lines.append(f"| {name} | {d} | {r['ncc_mean']:.3f} | {r['folding_mean']:.3f} | {r['seconds_mean']:.2f} |")
        lines.append("")
    if results["iterations"]:
        head = "| set | iterations | Dice | NCC | folding % |"
        lines += ["### SearchMorph at more iterations than trained", "", head, "|---|---|---|---|---|"]
        for set_name, sweep in results["iterations"].items():
            for n, r in sweep.items():
                d = f"{r['dice_mean']:.3f}" if "dice_mean" in r else "-"
                lines.append(f"| {set_name} | {n} | {d} | {r['ncc_mean']:.3f} | {r['folding_mean']:.3f} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
