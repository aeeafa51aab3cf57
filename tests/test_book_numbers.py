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
