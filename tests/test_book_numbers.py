"""The book's numbers come from the stored results (.ci/book_numbers.py), never typed: the generated fragments, the
model card and the README's paragraph are current, a changed result makes them stale and can flip a verdict's words,
and the pages' own prose holds no result number."""

from __future__ import annotations

import copy
import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("book_numbers", ROOT / ".ci" / "book_numbers.py")
book_numbers = importlib.util.module_from_spec(spec)
sys.modules["book_numbers"] = book_numbers
spec.loader.exec_module(book_numbers)

PAGES = {"intro": ROOT / "book" / "intro.md", "benchmarks": ROOT / "book" / "benchmarks.md"}
# a number that a result can move: a decimal, thousands, a percentage, a size (192 x 160), a count with its unit
UNITS = r"(?:s|ms|MB|GB|TB|seconds?|epochs?|pairs?|steps?|px|mm|times|threads?|cores?|%|-core)\b"
RESULT_NUMBER = re.compile(
    r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+\.\d+|\d+(?=\s*(?:%|×|x\s*\d))|\d+(?=[ -]?" + UNITS + "))"
)


@pytest.fixture(scope="module")
def results():
    return book_numbers.load_results()


def typed_numbers(text: str) -> list[tuple[str, str]]:
    """(number, its context) of each result-like number in a page's own prose: outside code, math, link targets,
    comments and directives."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks and {include} directives
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"`[^`]*`|\$[^$]*\$|\]\([^)]*\)", "", text)
    return [
        (m.group(0), text[max(0, m.start() - 30) : m.end() + 10].replace("\n", " "))
        for m in RESULT_NUMBER.finditer(text)
    ]


def test_generated_numbers_are_current(results):
    stale = book_numbers.stale(book_numbers.generated(results))
    assert not stale, f"stale: {[str(p.relative_to(ROOT)) for p in stale]}: run python .ci/book_numbers.py"


def test_a_changed_result_makes_the_pages_stale_and_can_flip_a_verdict(results):
    before = book_numbers.intro_findings(results)
    changed = copy.deepcopy(results.transfer)
    ind = changed["sets"]["in-distribution"]["methods"]
    for pair in ind["SearchMorph"]["per_pair"]:  # the network alone now clearly below SyN on every pair
        pair["dice"] -= 0.1
    ind["SearchMorph"]["dice_mean"] -= 0.1
    after = book_numbers.intro_findings(book_numbers.Results(**{**vars(results), "transfer": changed}))
    assert after != before
    assert "the network alone is above SyN within 2 paired SE" in before.replace("\n", " ")
    assert "the network alone loses to SyN" in after.replace("\n", " ")


def test_a_typed_number_in_a_page_is_found():
    text = "SearchMorph scores 0.814 on 24 pairs, 13,200 CPU seconds, a 2-core CPU, 192 x 160, 3 % folding."
    assert [n for n, _ in typed_numbers(text)] == ["0.814", "24", "13,200", "2", "192", "3"]
    refs = "eq. 9, chapter 11, Table III, Fig. 1, `--steps 0 15 30`, $K = 25$, [ch 11](../11_x.ipynb), MNI152"
    assert typed_numbers(refs) == []


@pytest.mark.parametrize("page", sorted(PAGES))
def test_a_page_types_no_result_number_and_includes_its_fragments(page, results):
    text = PAGES[page].read_text()
    assert typed_numbers(text) == [], "numbers in the page's prose: generate them in .ci/book_numbers.py"
    fragments = sorted(p.name for p in book_numbers.generated(results) if p.parent == book_numbers.GENERATED)
    mine = [name for name in fragments if name.startswith(page + "_")]
    assert mine and all(f"{{include}} _generated/{name}" in text for name in mine)


def _volumes(results, sm_dice: float) -> dict:
    """A volumes_results.json for the shipped 3D weights: two pairs per set, SyN at 0.7 Dice in 10 s."""
    methods = {"ANTs SyN": (0.7, 10.0), "brain3d": (sm_dice, 5.0), "brain3d-voxelmorph": (0.68, 4.0),
               "brain3d + refine auto": (0.73, 15.0)}  # fmt: skip
    block = {"pairs": 2, "axis_order_dice_change_max": 0.001, "methods": {}}
    for name, (dice, seconds) in methods.items():
        per_pair = [{"dice": dice + d, "folding": 0.0, "seconds": seconds} for d in (-0.01, 0.01)]
        block["methods"][name] = {"dice": dice, "dice_sd": 0.014, "folding": 0.0, "seconds": seconds,
                                  "per_pair": per_pair}  # fmt: skip
    digests = {n: results.models[n]["sha256"] for n in ("brain3d", "brain3d-voxelmorph")}
    return {"sets": {"test": block, "inverted contrast": copy.deepcopy(block)}, "command": "python volumes.py",
            "threads": 1, "machine": "x86_64, 2 cores", "load_before": 0.0, "load_after": 0.0, "models": digests,
            "refine": {"brain3d": {"steps": 100, "settings": {"lr": 1.0, "levels": 3}}}}  # fmt: skip


def test_the_volumes_section_says_the_targets_from_the_stored_run_and_refuses_other_weights(results):
    if not {"brain3d", "brain3d-voxelmorph"} <= set(results.models):
        pytest.skip("the 3D models are not shipped in this checkout")
    with_run = book_numbers.Results(**{**vars(results), "volumes": _volumes(results, 0.75)})
    text = book_numbers.benchmarks_volumes(with_run).replace("\n", " ")
    assert "**test** (2 pairs): SearchMorph-3D alone beats SyN (0.750 vs 0.700) in 5 s against SyN's 10 s" in text
    assert "refined, 0.02 Dice above SyN or more in no more than twice SyN's time: met on 2 of 2 sets" in text
    assert "| brain3d | 0.750 (0.014) |" in text  # the stored tables follow
    lower = book_numbers.Results(**{**vars(results), "volumes": _volumes(results, 0.60)})
    text = book_numbers.benchmarks_volumes(lower).replace("\n", " ")
    assert "SearchMorph-3D alone loses to SyN (0.600 vs 0.700)" in text
    assert "at SyN's Dice or above, in no more of SyN's time: met on 0 of 2 sets" in text
    other = _volumes(results, 0.75)
    other["models"]["brain3d"] = "0" * 64
    text = book_numbers.benchmarks_volumes(book_numbers.Results(**{**vars(results), "volumes": other}))
    assert "no longer shipped (brain3d)" in text and "SyN" not in text
