"""load_pretrained: names, errors, and (for every shipped checkpoint) a working model in eval mode."""

import numpy as np
import pytest

from searchmorph_lite import load_pretrained, register
from searchmorph_lite.pretrained import PRETRAINED, available_pretrained, pretrained_path


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(ValueError, match="brain2d-voxelmorph"):
        load_pretrained("mnist")


def test_missing_file_says_how_to_get_it(monkeypatch, tmp_path):
    import searchmorph_lite.pretrained as pre

    monkeypatch.setattr(pre, "pretrained_path", lambda name: tmp_path / f"{name}.pt")
    with pytest.raises(FileNotFoundError, match="python -m searchmorph_lite train"):
        load_pretrained("brain2d")


@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_shipped_model_loads_in_eval_mode_and_registers(name):
    if not pretrained_path(name).is_file():
        pytest.skip(f"{name} is not shipped in this checkout (available: {available_pretrained()})")
    model = load_pretrained(name, device="cpu")
    assert not model.training and type(model).__name__ == PRETRAINED[name]
    assert {"data", "epochs", "hardware"} <= set(model.metadata)
    rng = np.random.default_rng(0)
    warped, flow = register(rng.random((100, 90)), rng.random((100, 90)), model)
    assert warped.shape == (100, 90) and np.isfinite(flow).all()
