import os
import sys
from pathlib import Path

# ANTs reads its thread count once, at its first registration; one thread makes seeded runs repeat exactly
os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))


def disc_pair(size: int = 64, shift: float = 5.0, r_moving: float = 14.0, r_fixed: float = 18.0):
    """A moving/fixed pair of soft discs (1, 1, size, size) with their label maps: a known deformation."""
    yy, xx = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    c = size / 2

    def disc(cy, cx, r):
        d = torch.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        img = torch.sigmoid((r - d) / 1.5) * (0.6 + 0.4 * torch.cos(d / 3))
        return img[None, None], (d <= r).long()[None, None]

    moving, moving_lab = disc(c - shift, c + shift, r_moving)
    fixed, fixed_lab = disc(c, c, r_fixed)
    return moving, fixed, moving_lab, fixed_lab


@pytest.fixture
def pair():
    torch.manual_seed(0)
    return disc_pair()


@pytest.fixture(autouse=True, scope="session")
def _isolated_data_root(tmp_path_factory):
    """Generated data caches go to a temporary folder, never the user's home."""
    import os

    old = os.environ.get("SEARCHMORPH_DATA")
    if old is None:
        os.environ["SEARCHMORPH_DATA"] = str(tmp_path_factory.mktemp("searchmorph_data"))
    yield
    if old is None:
        os.environ.pop("SEARCHMORPH_DATA", None)
