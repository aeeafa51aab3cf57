"""searchmorph_lite.book.paired_verdict: the chapters' verdicts with paired standard errors."""

from __future__ import annotations

import math

import pytest

from searchmorph_lite.book import METHOD_COLORS, method_color, paired_verdict


def test_verdict_is_said_from_the_higher_mean_with_the_paired_standard_error():
    a, b = [0.80, 0.82, 0.84, 0.86], [0.70, 0.71, 0.75, 0.74]
    v = paired_verdict("B", "A", b, a)
    d = [x - y for x, y in zip(a, b)]
    mean = sum(d) / 4
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / 3) / 2  # loops: std(ddof=1) / sqrt(n)
    assert (v.winner, v.loser, v.state, v.n) == ("A", "B", "beats", 4)
    assert v.diff == pytest.approx(mean) and v.se == pytest.approx(se)
    assert "margin > 2 paired SE" in v.words() and "0." not in v.words()


@pytest.mark.parametrize(
    "a, b, state",
    [
        ([0.5, 0.6, 0.4, 0.7], [0.52, 0.55, 0.45, 0.66], "not resolved"),  # noisy differences around +0.005
        ([0.5, 0.6], [0.5002, 0.5998], "tie"),
        ([0.9], [0.1], "not resolved"),  # one pair: no standard error, never resolved
    ],
)
def test_verdict_states(a, b, state):
    assert paired_verdict("a", "b", a, b).state == state


def test_verdict_refuses_unpaired_scores():
    with pytest.raises(ValueError):
        paired_verdict("a", "b", [0.1, 0.2], [0.1])


def test_searchmorph_variants_get_colours_of_their_own():
    names = ["SyN", "VoxelMorph", "SearchMorph", "SearchMorph, 1 iteration", "SearchMorph + 30 refinement steps"]
    colors = [method_color(n, i) for i, n in enumerate(n for n in names if n not in METHOD_COLORS)]
    assert len(set(colors) | {METHOD_COLORS[n] for n in names if n in METHOD_COLORS}) == len(names)
