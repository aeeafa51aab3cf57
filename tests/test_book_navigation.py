"""The book's navigation: every chapter ends with a "Next" link to the page that follows it in book/_toc.yml, and
chapter 00's map links every chapter. Read from the jupytext pairs (notebooks/NN_slug.py), which CI keeps in sync
with the notebooks.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NEXT = re.compile(r"^# \[Next: [^\]]+\]\(([^)]+)\)\s*$", re.M)
# Pages whose "Next" link is knowingly missing (page -> reason); strict xfail: the marker must go with the link.
PENDING: dict[str, str] = {}


def toc_files() -> list[str]:
    """Every page of book/_toc.yml in reading order (root first), as paths without suffix."""
    toc = yaml.safe_load((ROOT / "book" / "_toc.yml").read_text())
    return [toc["root"]] + [c["file"] for part in toc["parts"] for c in part["chapters"]]


def resolve(link: str, page: str) -> str:
    """A relative link of ``page`` as a toc path without suffix."""
    target = (ROOT / page).parent / link
    return str(target.resolve().relative_to(ROOT).with_suffix(""))


FILES = toc_files()
CHAPTERS = [f for f in FILES if f.startswith("notebooks/")]


@pytest.mark.parametrize(
    "page",
    [pytest.param(p, marks=pytest.mark.xfail(strict=True, reason=PENDING[p])) if p in PENDING else p for p in CHAPTERS],
)
def test_next_link_points_to_the_next_page_of_the_toc(page):
    links = NEXT.findall((ROOT / f"{page}.py").read_text())
    assert links, f"{page} has no '[Next: ...](...)' line"
    want = FILES[FILES.index(page) + 1]
    assert resolve(links[-1], page) == want, f"{page}: Next goes to {links[-1]}, the toc's next page is {want}"


def test_every_chapter_notebook_is_in_the_toc():
    on_disk = sorted(str(p.relative_to(ROOT).with_suffix("")) for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
    assert on_disk == sorted(CHAPTERS)


def test_chapter_00_map_links_every_chapter():
    text = (ROOT / "notebooks" / "00_welcome.py").read_text()
    missing = [c for c in CHAPTERS[1:] if f"({Path(c).name}.ipynb)" not in text]
    assert not missing, f"chapter 00's map does not link {missing}"
