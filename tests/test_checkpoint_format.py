"""Checkpoint formats: files written by searchmorph_lite 0.1 (format 1) load into today's modules unchanged."""

from pathlib import Path

import torch

from searchmorph_lite import SearchMorph, SearchMorphConfig, load_checkpoint, read_checkpoint, save_checkpoint
from searchmorph_lite.checkpoint import FORMAT

DATA = Path(__file__).parent / "data"


def test_a_format_1_checkpoint_loads_and_gives_the_field_it_gave_then():
    # searchmorph_v0_1_tiny.pt was written by the 0.1 code (commit f8b830c), with the field it produced on a fixed
    # input pair; its trunk is stored twice, under feature_encoder and context_encoder.
    raw = torch.load(DATA / "searchmorph_v0_1_tiny.pt", weights_only=True)
    assert raw["format"] == "searchmorph_lite.checkpoint/1"
    assert any(k.startswith("context_encoder.trunk.") for k in raw["state_dict"])
    expected = torch.load(DATA / "searchmorph_v0_1_tiny_expected.pt", weights_only=True)
    model = load_checkpoint(DATA / "searchmorph_v0_1_tiny.pt", device="cpu")
    with torch.no_grad():
        flow = model(expected["moving"], expected["fixed"]).flow
    assert flow.abs().max() > 1.0
    # not bit for bit: the thread count changes the order of float sums (2.6e-5 px apart at 1 vs 2 threads)
    torch.testing.assert_close(flow, expected["flow"], rtol=0, atol=1e-3)


def test_upgraded_state_dict_has_the_trunk_once_and_resaves_in_the_new_format(tmp_path):
    ckpt = read_checkpoint(DATA / "searchmorph_v0_1_tiny.pt")
    raw = torch.load(DATA / "searchmorph_v0_1_tiny.pt", weights_only=True)
    trunk = [k for k in raw["state_dict"] if k.startswith("feature_encoder.trunk.")]
    assert len(ckpt["state_dict"]) == len(raw["state_dict"]) - len(trunk)
    model = load_checkpoint(DATA / "searchmorph_v0_1_tiny.pt", device="cpu")
    save_checkpoint(tmp_path / "new.pt", model)
    new = torch.load(tmp_path / "new.pt", weights_only=True)
    assert new["format"] == FORMAT and set(new["state_dict"]) == set(model.state_dict())
    again = load_checkpoint(tmp_path / "new.pt", device="cpu")
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v)


def test_the_default_searchmorph_stores_each_tensor_once():
    keys = list(SearchMorph(SearchMorphConfig()).state_dict())
    trunk = [k for k in keys if ".trunk." in k]
    assert len(trunk) == 36 and all(k.startswith("encoder.trunk.") for k in trunk)
    assert len(keys) == 92 - 36  # format 1 held the 36 trunk tensors twice


def test_a_format_1_file_whose_trunk_copies_differ_is_refused(tmp_path):
    raw = torch.load(DATA / "searchmorph_v0_1_tiny.pt", weights_only=True)
    key = next(k for k in raw["state_dict"] if k.startswith("context_encoder.trunk.") and k.endswith("weight"))
    raw["state_dict"][key] = raw["state_dict"][key] + 1
    torch.save(raw, tmp_path / "bad.pt")
    try:
        read_checkpoint(tmp_path / "bad.pt")
    except ValueError as err:
        assert "copies of the shared trunk differ" in str(err)
    else:
        raise AssertionError("a format-1 file with two different trunks loaded")
