"""The numbers of the book's pages, the model card and the README, generated from the stored results.

    python .ci/book_numbers.py           # rewrite every generated file that is stale (after a benchmark or a ship)
    python .ci/book_numbers.py --check   # exit 1 naming the stale ones (tests/test_book_numbers.py does the same)

Read, never written: benchmarks/results.json, transfer_results.json, refine_time_brain2d.json,
refine_time_echo2d.json, volumes_results.json (when present), and the metadata of every shipped model
(searchmorph_lite/pretrained/*.pt). Written:

* book/_generated/*.md, the paragraphs of book/intro.md and book/benchmarks.md that hold numbers (each page pulls
  its fragments in with MyST's ``{include}``; the pages' own prose holds none);
* searchmorph_lite/pretrained/MODEL_CARD.md (training/ship_pretrained.py's ``model_card_text``);
* README.md's paragraph on the shipped models, between its ``book-numbers`` markers.

Every comparison in words ("beats", "loses to", "not resolved", "ties with") is searchmorph_lite.book's
``paired_verdict`` on the per-pair scores of the JSON: a margin over twice the paired standard error, never typed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "training"))

from searchmorph_lite.book import Verdict, paired_verdict  # noqa: E402

GENERATED = ROOT / "book" / "_generated"
README = ROOT / "README.md"
README_START = "<!-- book-numbers:pretrained:start (python .ci/book_numbers.py writes this paragraph) -->"
README_END = "<!-- book-numbers:pretrained:end -->"
SYN = "ANTs SyN"
ABLATIONS = {  # shipped name -> what it removes (Table III), against brain2d-ablation-base
    "brain2d-no-context": "without context",
    "brain2d-no-search": "without the search module",
    "brain2d-no-pyramid": "without the pyramid",
    "brain2d-no-iteration": "without iterations",
}


@dataclass(frozen=True)
class Results:
    """The stored results the generated text is made of."""

    inference: dict  # benchmarks/results.json
    transfer: dict  # benchmarks/transfer_results.json
    refine: dict  # {"brain2d": refine_time_brain2d.json, "echo2d": refine_time_echo2d.json}
    models: dict  # {shipped name: checkpoint dict (metadata, config, ...)}
    volumes: dict | None = None  # benchmarks/volumes_results.json, when the suite has been run

    @property
    def metadata(self) -> dict:
        """{shipped name: its metadata}."""
        return {n: ck["metadata"] for n, ck in self.models.items()}

    @property
    def memory_row(self) -> dict:
        """results.json's correlation-memory row at the benchmark's image size."""
        return next(m for m in self.inference["memory"] if m["image"] == self.inference["settings"]["size"])


def load_results(root: Path = ROOT) -> Results:
    """The JSON results and the shipped models' checkpoints under ``root``."""
    from ship_pretrained import shipped_checkpoints

    def read(name: str) -> dict:
        return json.loads((root / "benchmarks" / name).read_text())

    refine = {m: read(f"refine_time_{m}.json") for m in ("brain2d", "echo2d")}
    volumes = read("volumes_results.json") if (root / "benchmarks" / "volumes_results.json").is_file() else None
    return Results(read("results.json"), read("transfer_results.json"), refine, shipped_checkpoints(), volumes)


# --- formatting -----------------------------------------------------------------------------------------------------


def f3(x: float) -> str:
    """Three decimals, as the benchmark tables print scores and folding percentages."""
    return f"{x:.3f}"


def signed(x: float) -> str:
    """A difference with its sign and three decimals ("+0.005", "-0.042")."""
    return f"{x:+.3f}"


def secs(x: float) -> str:
    """Seconds to three significant digits."""
    return f"{x:.3g}"


def size(shape) -> str:
    return " x ".join(str(n) for n in shape)


def wrap(text: str, width: int = 118) -> str:
    """``text`` with each line (a paragraph or a bullet) wrapped at ``width`` columns, bullets indented by two, and
    never inside a code span or inline math (a line break there would change it)."""
    import re
    import textwrap

    def protect(m: re.Match) -> str:
        return m.group(0).replace(" ", "\x00")

    out = []
    for line in text.split("\n"):
        kept = re.sub(r"`[^`]*`|\$[^$]*\$", protect, line)
        indent = "  " if line.startswith("- ") else ""
        lines = textwrap.wrap(kept, width, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False)
        out.append("\n".join(lines).replace("\x00", " "))
    return "\n".join(out)


def compare(subject: str, other: str, v: Verdict) -> str:
    """``subject``'s side of a paired verdict against ``other``, in words, with both means: "beats SyN (0.778 vs
    0.750)", "loses to ...", "is above SyN within 2 paired SE, not resolved (...)", "ties with ..."."""
    ours, theirs = (v.mean_winner, v.mean_loser) if v.winner == subject else (v.mean_loser, v.mean_winner)
    means = f"{f3(ours)} vs {f3(theirs)}"
    if v.state == "tie":
        return f"ties with {other} ({means})"
    if v.state == "not resolved":
        side = "above" if v.winner == subject else "below"
        return f"is {side} {other} within 2 paired SE, not resolved ({means})"
    return f"{'beats' if v.winner == subject else 'loses to'} {other} ({means})"


def verdict(group: dict, a: str, b: str, key: str) -> Verdict:
    """paired_verdict of methods ``a`` and ``b`` of a transfer set or refine_time table on per-pair ``key``."""
    per_pair = group["per_pair"] if "per_pair" in group else {m: r["per_pair"] for m, r in group["methods"].items()}
    return paired_verdict(a, b, [p[key] for p in per_pair[a]], [p[key] for p in per_pair[b]], what=key)


def method_mean(group: dict, method: str, key: str) -> float:
    return group["methods"][method][f"{key}_mean"]


def refined_name(md: dict) -> str:
    """The transfer benchmark's name of a model run with its recommended refinement."""
    return f"SearchMorph + {md['refine_steps']} refinement steps"


def refinement_words(md: dict) -> str:
    """ "100 steps of 1 px on 3 levels": the recommended refinement recorded in a model's metadata."""
    words = f"{md['refine_steps']} steps"
    if md.get("refine_lr"):
        words += f" of {md['refine_lr']:g} px"
    if md.get("refine_levels"):
        words += f" on {md['refine_levels']} level{'s' if md['refine_levels'] != 1 else ''}"
    return words


def budget(md: dict) -> tuple[float, str]:
    """(seconds, clock) of a shipped model's training budget; (0, clock) for a run without one."""
    tc = md["train_config"]
    return float(tc.get("max_seconds") or tc.get("max_cpu_seconds") or 0), md.get("budget_clock", "CPU seconds")


def epochs_words(md: dict) -> str:
    pairs = f" ({md['pairs_seen']:,} pairs)" if md.get("pairs_seen") else ""
    return f"{md['epochs']} epochs{pairs}"


def pair_budget(a: dict, b: dict) -> str:
    """ "the same 13,200 CPU seconds of training steps each", or both budgets where they differ."""
    (sa, clock), (sb, _) = budget(a), budget(b)
    if sa == sb:
        return f"the same {sa:,.0f} {clock} of training steps each"
    return f"{sa:,.0f} and {sb:,.0f} {clock} of training steps"


# --- the intro ------------------------------------------------------------------------------------------------------


def intro_models(r: Results) -> str:
    """book/intro.md: how the shipped models evaluated in chapters 11-13 were trained."""
    md = r.metadata
    brain, brain_vm, echo, echo_vm = (md[n] for n in ("brain2d", "brain2d-voxelmorph", "echo2d", "echo2d-voxelmorph"))
    base = md["brain2d-ablation-base"]
    steps = math.ceil(base["train_pairs"] / base["batch_size"]) * base["epochs"]
    wide = echo["dataset_options"].get("variability") == "wide"
    from ship_pretrained import PAPER_EPOCHS

    hardware = brain["hardware"] if brain["hardware"] == brain_vm["hardware"] else "each model's card names its own"
    return (
        f"The brain pair, `brain2d` and `brain2d-voxelmorph`, trained on virtual subjects (`{brain['dataset']}`) for "
        f"{pair_budget(brain, brain_vm)} ({hardware}): {epochs_words(brain)} for SearchMorph, "
        f"{epochs_words(brain_vm)} for VoxelMorph. The echo pair, `echo2d` and `echo2d-voxelmorph`, trained on "
        + ('wide synthetic loops (`variability="wide"`, chapter 1)' if wide else "synthetic loops (chapter 1)")
        + f" for {pair_budget(echo, echo_vm)}: {epochs_words(echo)} for SearchMorph, {epochs_words(echo_vm)} for "
        f"VoxelMorph. The four ablations and their full model trained for {base['epochs']} epochs of "
        f"{base['train_pairs']} pairs ({steps} Adam steps at batch {base['batch_size']}, against the paper's "
        f"{PAPER_EPOCHS} epochs on a GPU).\n"
    )


def per_set(sets: dict) -> str:
    """ "24 pairs per set", or each set's count where they differ."""
    counts = {s["pairs"] for s in sets.values()}
    if len(counts) == 1:
        return f"{counts.pop()} pairs per set"
    return ", ".join(f"{s['pairs']} pairs on {name}" for name, s in sets.items())


def label_words(group: dict, method: str) -> str:
    """ "blood pool and myocardium" for the echo labels, else "its N labels"."""
    n = len(group["per_pair"][method][0]["dice_per_label"])
    return "blood pool and myocardium" if n == 2 else f"its {n} labels"


def brain_findings(r: Results) -> str:
    """The Table I bullet: in distribution and out of it, from the transfer benchmark's brain sets."""
    md = r.models["brain2d"]["metadata"]
    sets = {k: s for k, s in r.transfer["sets"].items() if s["kind"] == "brain"}
    ind = sets.pop("in-distribution")
    refined = refined_name(md)
    labels = len(ind["methods"]["Identity"]["per_pair"][0]["dice_per_label"])
    m = {k: f3(method_mean(ind, k, "dice")) for k in ind["methods"]}
    fold = {k: f3(ind["methods"][k]["folding_mean"]) for k in ind["methods"]}
    chosen = md.get("refine_choice")
    chosen = " chosen on validation sets in and out of distribution" if chosen else ""
    alone = [(name, verdict(s, "SearchMorph", SYN, "dice")) for name, s in sets.items()]
    with_refinement = [(name, verdict(s, refined, SYN, "dice")) for name, s in sets.items()]
    clauses = "; ".join(f"on {name} it {compare('SearchMorph', 'SyN', v)}" for name, v in alone)
    if all(v.state == "beats" and v.winner == refined for _, v in with_refinement):
        means = ", ".join(f3(v.mean_winner) for _, v in with_refinement)
        refined_words = f"refined, it beats SyN on every set ({means})"
    else:
        refined_words = "refined: " + "; ".join(f"on {n} it {compare(refined, 'SyN', v)}" for n, v in with_refinement)
    return (
        f"- **Brain MR, Table I** ([chapter 11](../notebooks/11_brain_evaluation.ipynb); here the stored run of "
        f"`benchmarks/transfer.py`: {ind['pairs']} `{md['dataset']}` test pairs at {size(md['image_size'])}, in "
        "distribution: the same kind of virtual subjects, from template slabs no training pair used): mean Dice over "
        f"{labels} tissue labels {m['Identity']} for the identity, {m[SYN]} SyN, {m['VoxelMorph']} VoxelMorph, "
        f"{m['SearchMorph']} SearchMorph ({fold['SearchMorph']} % folded pixels) and {m[refined]} SearchMorph with "
        f"its recommended refinement ({refinement_words(md)},{chosen}; {fold[refined]} % folding). Refined, it "
        f"{compare(refined, 'SyN', verdict(ind, refined, SYN, 'dice'))}; the network alone "
        f"{compare('SearchMorph', 'SyN', verdict(ind, 'SearchMorph', SYN, 'dice'))}. Out of distribution "
        f"({per_set(sets)}, paired verdicts as above), the network alone: {clauses}; {refined_words}.\n"
    )


def echo_findings(r: Results) -> str:
    """The Table II bullet: synthetic validation pairs (refine_time_echo2d.json) and the real clip (transfer)."""
    md = r.metadata
    val = r.refine["echo2d"]
    clip = r.transfer["sets"]["echo clip"]
    refined = refined_name(md["echo2d"])
    v_val = verdict(val, "network alone", SYN, "dice")
    sweep = r.transfer["iterations"]["echo clip"]
    trained = r.models["echo2d"]["config"]["iterations"]
    last = max(sweep, key=int)
    folded = [n for n in ("echo2d", "echo2d-voxelmorph") if md[n]["train_config"].get("fold_weight")]
    barrier = f"only {' and '.join(f'`{n}`' for n in folded)} trained with a folding barrier" if folded else ""
    c = clip["methods"]
    return (
        f"- **Echocardiography, Table II** ([chapter 12](../notebooks/12_echocardiography.ipynb) scores synthetic "
        "ED-to-frame test pairs per view, each comparison with its paired standard error). On "
        f"{val['pairs']} wide synthetic validation pairs (`benchmarks/refine_time.py --model echo2d`), mean Dice over "
        f"{label_words(val, SYN)}, SearchMorph {compare('network alone', 'SyN', v_val)}. On the real echo clip "
        f"(out of distribution, no labels; {clip['pairs']} ED-to-frame pairs), scored by global NCC (the Pearson "
        f"correlation of warped and fixed inside the sector), SearchMorph "
        f"{compare('SearchMorph', 'SyN', verdict(clip, 'SearchMorph', SYN, 'ncc'))} with "
        f"{f3(c['SearchMorph']['folding_mean'])} % folded pixels, VoxelMorph "
        f"{compare('VoxelMorph', 'SyN', verdict(clip, 'VoxelMorph', SYN, 'ncc'))} with "
        f"{f3(c['VoxelMorph']['folding_mean'])} % ({barrier}), and SearchMorph's recommended refinement "
        f"({refinement_words(md['echo2d'])}) gives {f3(c[refined]['ncc_mean'])} with "
        f"{f3(c[refined]['folding_mean'])} % folding. Run for {last} iterations instead of {trained}, SearchMorph "
        f"reaches NCC {f3(sweep[last]['ncc_mean'])} there (from {f3(sweep[str(trained)]['ncc_mean'])}) with "
        f"{f3(sweep[last]['folding_mean'])} % folding (from {f3(sweep[str(trained)]['folding_mean'])}).\n"
    )


def ablation_findings(r: Results) -> str:
    """The Table III bullet from the shipped ablations' test metrics (unpaired: chapter 13 has the paired ones)."""
    base = r.models["brain2d-ablation-base"]["metadata"]
    parts, resolved = [], []
    for name, words in ABLATIONS.items():
        md = r.models[name]["metadata"]
        diff = md["test_dice_mean"] - base["test_dice_mean"]
        se = math.sqrt((md["test_dice_std"] ** 2 + base["test_dice_std"] ** 2) / base["test_pairs"])
        parts.append(f"{words} {f3(md['test_dice_mean'])} ({signed(diff)})")
        if abs(diff) > 2 * se:
            resolved.append(f"{words} ({'lower' if diff < 0 else 'higher'})")
    resolved_words = (
        f"resolves {' and '.join(resolved)}; the rest lie within it" if resolved else "resolves none of the differences"
    )
    return (
        f"- **Ablations, Table III** ([chapter 13](../notebooks/13_ablations.ipynb)): test Dice of the shipped "
        f"ablations on the {base['test_pairs']} `{base['dataset']}` test pairs, against "
        f"{f3(base['test_dice_mean'])} for the full model trained the same way: {', '.join(parts)}. An unpaired "
        f"check (twice the standard error of a difference of two means) {resolved_words}; chapter 13 gives the paired "
        "verdicts. The paper finds that every component helps.\n"
    )


def speed_findings(r: Results) -> str:
    """The speed bullet, from benchmarks/results.json."""
    res = r.inference
    inf, hw = res["inference"], res["hardware"]
    row = r.memory_row
    return (
        f"- **Speed and memory** ({{doc}}`benchmarks`): one {size(res['settings']['size'])} pair takes "
        f"{secs(inf['SearchMorph']['median_s'])} s with SearchMorph, {secs(inf['VoxelMorph']['median_s'])} s with "
        f"VoxelMorph and {secs(inf[SYN]['median_s'])} s with ANTs SyN (medians of {res['settings']['pairs']} pairs on "
        f"{hw.get('cpu_model') or hw['machine']}, {hw['threads']} threads); the diamond search needs "
        f"{row['ratio']:.0f} times less memory than the all-pairs cost volume at that size.\n"
    )


def intro_findings(r: Results) -> str:
    return brain_findings(r) + echo_findings(r) + ablation_findings(r) + speed_findings(r)


# --- the benchmarks page --------------------------------------------------------------------------------------------


def benchmarks_memory(r: Results) -> str:
    """The correlation-memory numbers at the benchmark's image size (results.json)."""
    res = r.inference
    row = r.memory_row
    d, *grid = row["features"]
    volume = (math.prod(grid) ** 2) * 4  # float32 bytes of (hw)^2 correlations
    radius = res["inference"]["SearchMorph"]["config"]["radius"]
    k, levels = row["search_points"], row["levels"]
    return (
        f"At {size(row['image'])} the features are $D \\times h \\times w = {d} \\times {grid[0]} \\times {grid[1]}$, "
        f"so the volume alone takes {volume / 2**20:.0f} MB in float32 and its pyramid adds "
        f"{100 * (row['all_pairs_bytes'] / volume - 1):.0f} % ({row['all_pairs_bytes'] / 2**20:.0f} MB in all). With "
        f"the brain models' radius $r = {radius}$ the search reads $K = {k}$ values on each of $L = {levels}$ levels, "
        f"{k * levels} per pixel, and its lean peak is {row['ratio']:.0f} times smaller than the all-pairs volume.\n"
    )


def benchmarks_transfer(r: Results) -> str:
    """What the stored transfer run says, bullet by bullet (transfer_results.json, the shipped models' metadata)."""
    md = r.metadata
    sets = r.transfer["sets"]
    brain = {k: s for k, s in sets.items() if s["kind"] == "brain"}
    ind = brain["in-distribution"]
    refined_b, refined_e = refined_name(md["brain2d"]), refined_name(md["echo2d"])
    lines = []
    choice = (
        " chosen on validation sets in and out of its training distribution"
        if md["brain2d"].get("refine_choice")
        else ""
    )
    lines.append(
        f"- In distribution ({ind['pairs']} pairs), SearchMorph alone "
        f"{compare('SearchMorph', 'SyN', verdict(ind, 'SearchMorph', SYN, 'dice'))} and "
        f"{compare('SearchMorph', 'VoxelMorph', verdict(ind, 'SearchMorph', 'VoxelMorph', 'dice'))}; with its "
        f"recommended refinement ({refinement_words(md['brain2d'])},{choice}; `training/choose_refinement.py`, the "
        f"model card says how) it {compare(refined_b, 'SyN', verdict(ind, refined_b, SYN, 'dice'))}."
    )
    for name, s in brain.items():
        if name == "in-distribution":
            continue
        lines.append(
            f"- {name.capitalize()} ({s['pairs']} pairs): SearchMorph alone "
            f"{compare('SearchMorph', 'SyN', verdict(s, 'SearchMorph', SYN, 'dice'))}; refined it "
            f"{compare(refined_b, 'SyN', verdict(s, refined_b, SYN, 'dice'))}."
        )
    clip = sets["echo clip"]
    c = clip["methods"]
    echo_budget, clock = budget(md["echo2d"])
    lines.append(
        f"- On the real echo clip ({clip['pairs']} pairs, out of distribution: no model was trained or tuned on it), "
        f"scored by global NCC (the Pearson correlation of warped and fixed inside the sector; chapter 12 prints the "
        f'local NCC, a different measure): the echo models (`variability="wide"`, {echo_budget:,.0f} {clock} '
        f"each) give SearchMorph {f3(c['SearchMorph']['ncc_mean'])} with {f3(c['SearchMorph']['folding_mean'])} % "
        f"folded pixels, which {compare('SearchMorph', 'SyN', verdict(clip, 'SearchMorph', SYN, 'ncc'))}, and "
        f"VoxelMorph {f3(c['VoxelMorph']['ncc_mean'])} with {f3(c['VoxelMorph']['folding_mean'])} %. The "
        f"recommended refinement ({refinement_words(md['echo2d'])}) gives {f3(c[refined_e]['ncc_mean'])} in "
        f"{secs(c[refined_e]['seconds_mean'])} s per pair against SyN's {secs(c[SYN]['seconds_mean'])} s."
    )
    sweep = r.transfer["iterations"]["echo clip"]
    trained = r.models["echo2d"]["config"]["iterations"]
    beyond = [n for n in sorted(sweep, key=int) if int(n) > trained]
    lines.append(
        f"- SearchMorph run for more iterations than its default {trained} on the echo clip: NCC "
        + ", ".join(f"{f3(sweep[n]['ncc_mean'])} at {n}" for n in sorted(sweep, key=int))
        + "; folding "
        + ", ".join(f"{f3(sweep[n]['folding_mean'])} % at {n}" for n in [str(trained), *beyond])
        + "."
    )
    measured = {}
    for name, s in sets.items():
        threads = s.get("measured", r.transfer).get("threads", r.transfer["threads"])
        measured.setdefault(threads, []).append(name)
    seconds = "; ".join(f"{', '.join(names)} on {t} thread{'s' if t > 1 else ''}" for t, names in measured.items())
    lines.append(
        f"\nSeconds in these tables: {seconds} ({r.transfer['machine']}), on a machine shared with trainings: "
        "not idle timings."
    )
    return "\n".join(lines) + "\n"


def benchmarks_refine(r: Results, model: str) -> str:
    """The sentence before a refine_time table: what it times (refine_time_<model>.json)."""
    t = r.refine[model]
    steps = [int(k.split("+ ")[1].split()[0]) for k in t["methods"] if k.startswith("network +")]
    threads = f"{t['threads']} thread{'s' if t['threads'] > 1 else ''}"
    head = (
        f"`python benchmarks/refine_time.py --model {model}` times SyN and the network with 0 to {max(steps)} "
        f"refinement steps ({', '.join(map(str, steps))}) on {threads} each, paired and interleaved on the same "
        f"{t['pairs']} {t['dataset']} {t['split']} pairs"
    )
    if model == "brain2d":
        return head + ' (where the recommended step count, `model.metadata["refine_steps"]`, was chosen):\n'
    md = r.models[model]["metadata"]
    refined = f"network + {md['refine_steps']} steps"
    ncc, dice = (verdict(t, refined, "network alone", key) for key in ("ncc", "dice"))
    why = ""
    if ncc.state == "beats" and ncc.winner == refined and not (dice.state == "beats" and dice.winner == refined):
        why = ": it matches speckle as well as walls"
    syn = verdict(t, "network alone", SYN, "dice")
    return (
        head + f'. In distribution, the recommended refinement ({refinement_words(md)}, `metadata["refine_lr"]`), '
        f"against the network alone: on NCC it {compare(refined, 'the network alone', ncc)}; on Dice it "
        f"{compare(refined, 'the network alone', dice)}{why}. On Dice the network alone "
        f"{compare('network alone', 'SyN', syn)}. The recommended steps are for image similarity on clips the network "
        "was not trained on:\n"
    )


VOLUMES_RUN = "`python -m benchmarks --suite volumes`"
SM3D, VM3D = "brain3d", "brain3d-voxelmorph"


def volumes_targets(v: dict) -> list[str]:
    """Issue 21's targets, each with the sets (of volumes_results.json) where its means meet it."""
    sets = v["sets"]

    def where(test) -> str:
        met = [name for name, block in sets.items() if test(block["methods"], block)]
        return f"met on {len(met)} of {len(sets)} sets" + (f" ({', '.join(met)})" if met else "")

    refined, syn = volumes_refined(v), SYN
    return [
        "the pipeline with SearchMorph-3D alone at SyN's Dice or above, in no more of SyN's time: "
        + where(lambda m, b: m[SM3D]["dice"] >= m[syn]["dice"] and m[SM3D]["seconds"] <= m[syn]["seconds"]),
        "refined, 0.02 Dice above SyN or more in no more than twice SyN's time: "
        + where(
            lambda m, b: m[refined]["dice"] >= m[syn]["dice"] + 0.02 and m[refined]["seconds"] <= 2 * m[syn]["seconds"]
        ),
        "SearchMorph-3D alone at VoxelMorph-3D's Dice or above (equal training CPU seconds): "
        + where(lambda m, b: m[SM3D]["dice"] >= m[VM3D]["dice"]),
        "folding at most 0.05 % (SearchMorph-3D alone and refined): "
        + where(lambda m, b: max(m[SM3D]["folding"], m[refined]["folding"]) <= 0.05),
        "the same Dice within 0.005 whatever the moving file's axis order: "
        + where(lambda m, b: b["axis_order_dice_change_max"] is not None and b["axis_order_dice_change_max"] <= 0.005),
    ]


def volumes_refined(v: dict) -> str:
    """The volumes suite's name of SearchMorph-3D with refinement."""
    return next(m for m in next(iter(v["sets"].values()))["methods"] if m.startswith(f"{SM3D} + refine"))


def benchmarks_volumes(r: Results) -> str:
    """The 3D pipeline against ANTs from NIfTI files (volumes_results.json and the shipped 3D models), or how to
    measure it when the stored run is missing or scored other weights."""
    v = r.volumes
    if v is None:
        return (
            f"The `volumes` suite has not been run in this checkout: {VOLUMES_RUN} on an idle machine writes "
            "`benchmarks/volumes_results.json`, and `python .ci/book_numbers.py` turns it into this section.\n"
        )
    stale = [n for n, digest in v["models"].items() if n not in r.models or r.models[n].get("sha256") != digest]
    if stale:
        return (
            f"The stored `volumes` results scored weights that are no longer shipped ({', '.join(stale)}); run "
            f"{VOLUMES_RUN} again on an idle machine.\n"
        )
    from benchmarks.volumes import markdown

    refined = volumes_refined(v)
    steps = v["refine"][SM3D]
    settings = steps["settings"]
    how = refinement_words(
        {"refine_steps": steps["steps"], "refine_lr": settings["lr"], "refine_levels": settings["levels"]}
    )
    budgets = ", ".join(f"`{n}` {budget(r.metadata[n])[0]:,.0f} {budget(r.metadata[n])[1]}" for n in (SM3D, VM3D))
    lines = [
        f"Measured by {VOLUMES_RUN} ({v['threads']} thread(s) for torch and ITK, {v['machine']}; training budgets: "
        f"{budgets}; refinement: {how}). Seconds are medians per pair, reading the files included:"
    ]
    for name, block in v["sets"].items():
        m = block["methods"]
        ratio = m[refined]["seconds"] / m[SYN]["seconds"]
        change = block["axis_order_dice_change_max"]
        lines.append(
            f"- **{name}** ({block['pairs']} pairs): SearchMorph-3D alone "
            f"{compare(SM3D, 'SyN', verdict(block, SM3D, SYN, 'dice'))} in {secs(m[SM3D]['seconds'])} s against "
            f"SyN's {secs(m[SYN]['seconds'])} s; refined it "
            f"{compare(refined, 'SyN', verdict(block, refined, SYN, 'dice'))} in {secs(m[refined]['seconds'])} s "
            f"({ratio:.1f}x SyN's); VoxelMorph-3D alone "
            f"{compare(VM3D, 'SyN', verdict(block, VM3D, SYN, 'dice'))}, and SearchMorph-3D alone "
            f"{compare(SM3D, 'VoxelMorph-3D', verdict(block, SM3D, VM3D, 'dice'))}. Folding: "
            f"{f3(m[SM3D]['folding'])} % alone, {f3(m[refined]['folding'])} % refined."
            + (
                ""
                if change is None
                else f" Largest Dice change with the moving file in another axis order: {change:.4f}."
            )
        )
    lines.append("\nIssue 21's targets, from the means above:\n")
    lines += [f"- {t}" for t in volumes_targets(v)]
    return "\n".join(lines) + "\n\nThe stored tables (`benchmarks/volumes_results.md`):\n\n" + markdown(v) + "\n"


# --- the README -----------------------------------------------------------------------------------------------------


def readme_pretrained(r: Results) -> str:
    """README.md's paragraph on the shipped models (between its markers)."""
    md = r.metadata
    from ship_pretrained import PAPER_EPOCHS

    from searchmorph_lite.pretrained import pretrained_path

    sizes = [pretrained_path(n).stat().st_size / 1e6 for n in r.models]
    folds = [f"{md[n]['train_config']['fold_weight']:g} (`{n}`)" for n in ("brain2d", "echo2d")]
    brain, echo, base = md["brain2d"], md["echo2d"], md["brain2d-ablation-base"]
    brain_budget, echo_budget = pair_budget(brain, md["brain2d-voxelmorph"]), pair_budget(echo, md["echo2d-voxelmorph"])
    b3, v3 = md["brain3d"], md["brain3d-voxelmorph"]
    three_d = (
        f"The shipped 3D models trained for {pair_budget(b3, v3)} ({b3['epochs']} and {v3['epochs']} epochs of "
        f"{b3['train_pairs']} pairs at {size(b3['image_size'])}, batch {b3['batch_size']})"
    )
    return (
        f"Shipped inside the package (`searchmorph_lite/pretrained/`, {min(sizes):.1f} to {max(sizes):.1f} MB each): "
        "SearchMorph `brain2d` and `echo2d`, the VoxelMorph baselines `brain2d-voxelmorph` and `echo2d-voxelmorph` "
        f"(same data, eq. 9 and budget; only the SearchMorph models added a folding barrier, `fold_weight` "
        f"{' and '.join(folds)}), and the four Table III ablations "
        + ", ".join(f"`{n}`" for n in ABLATIONS)
        + f". `brain2d` and `brain2d-voxelmorph` were trained on {brain['dataset']} (virtual subjects with random "
        f"contrasts and artifacts, test slabs apart from every training slice) for {brain_budget}; "
        f'`brain2d` recommends {refinement_words(brain)} (`refine_steps="auto"`; chosen by '
        "`training/choose_refinement.py` on validation sets in and out of its training distribution). `echo2d` and "
        f'`echo2d-voxelmorph` were trained on {echo["dataset"]} with `variability="wide"` (each sequence its own '
        "sector, heart size, speckle, haze, noise, blur and motion amplitude; new sequences every epoch) for "
        f"{echo_budget}; `echo2d` recommends {refinement_words(echo)}. The ablations "
        f"were trained for {base['epochs']} epochs of {base['train_pairs']} pairs (batch {base['batch_size']}, "
        f"{base['optimizer']}) with the config in `configs/`. {three_d}. That is a teaching budget (the paper trains "
        f"{PAPER_EPOCHS} epochs on a GPU); `searchmorph_lite/pretrained/MODEL_CARD.md` gives data, config, wall time, "
        "hardware and test metrics of each."
    )


def readme_text(r: Results, text: str) -> str:
    """``text`` (README.md) with its generated paragraph replaced."""
    start, end = text.index(README_START) + len(README_START), text.index(README_END)
    return text[:start] + "\n" + wrap(readme_pretrained(r)) + "\n" + text[end:]


# --- all of it ------------------------------------------------------------------------------------------------------

HEADER = "<!-- generated by python .ci/book_numbers.py from benchmarks/*.json and the shipped models: do not edit -->\n"


def generated(r: Results | None = None) -> dict[Path, str]:
    """{path: the text it must hold} for every file this script writes."""
    from ship_pretrained import MODEL_CARD, model_card_text

    r = r or load_results()
    fragments = {
        "intro_models.md": intro_models(r),
        "intro_findings.md": intro_findings(r),
        "benchmarks_memory.md": benchmarks_memory(r),
        "benchmarks_transfer.md": benchmarks_transfer(r),
        "benchmarks_volumes.md": benchmarks_volumes(r),
        "benchmarks_refine_brain2d.md": benchmarks_refine(r, "brain2d"),
        "benchmarks_refine_echo2d.md": benchmarks_refine(r, "echo2d"),
    }
    out = {GENERATED / name: HEADER + wrap(text) for name, text in fragments.items()}
    out[MODEL_CARD] = model_card_text(r.models)
    out[README] = readme_text(r, README.read_text())
    return out


def stale(files: dict[Path, str]) -> list[Path]:
    """The paths among ``files`` whose content differs from the text they must hold."""
    return [p for p, text in files.items() if not p.is_file() or p.read_text() != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a generated file is stale")
    args = parser.parse_args(argv)
    files = generated()
    old = stale(files)
    if args.check:
        for p in old:
            print(f"stale: {p.relative_to(ROOT)} (run python .ci/book_numbers.py)")
        return 1 if old else 0
    GENERATED.mkdir(exist_ok=True)
    for p in old:
        p.write_text(files[p])
        print(f"wrote {p.relative_to(ROOT)}")
    print(f"{len(files) - len(old)} of {len(files)} generated files were up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
