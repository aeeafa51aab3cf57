"""The one scoring code of the book's tables and the benchmarks, against brute force."""

import numpy as np
import pytest
import torch

from searchmorph_lite.brute_force import dice_naive
from searchmorph_lite.scoring import global_ncc, identity_method, run_method, score_flow

from conftest import disc_pair


def _pair(shift: float = 4.0) -> dict:
    moving, fixed, moving_lab, fixed_lab = disc_pair(size=48, shift=shift, r_moving=10.0, r_fixed=12.0)
    return {"moving": moving[0], "fixed": fixed[0], "moving_labels": moving_lab[0], "fixed_labels": fixed_lab[0]}


def test_the_identity_scores_the_unregistered_overlap():
    pair = _pair()
    out = score_flow(pair, identity_method(pair["moving"][0].numpy(), pair["fixed"][0].numpy()))
    assert out["dice"] == pytest.approx(dice_naive(pair["moving_labels"][0], pair["fixed_labels"][0], 1), abs=1e-6)
    assert out["dice_per_label"] == [pytest.approx(out["dice"])] and out["folding"] == 0.0
    m, f = pair["moving"][0].numpy(), pair["fixed"][0].numpy()
    inside = f > 0.02
    assert out["ncc"] == pytest.approx(np.corrcoef(m[inside], f[inside])[0, 1], abs=1e-6)


def test_the_true_shift_scores_higher_than_the_identity_and_run_method_averages():
    pair = _pair(shift=3.0)
    true = np.zeros((2, 48, 48), dtype=np.float32)
    true[0], true[1] = -3.0, 3.0  # the moving disc sits 3 px up and 3 px right of the fixed one
    assert score_flow(pair, true)["ncc"] > score_flow(pair, np.zeros_like(true))["ncc"]
    assert score_flow(pair, true)["dice"] > score_flow(pair, np.zeros_like(true))["dice"]
    out = run_method(lambda m, f: true, [pair, _pair(shift=3.0)])
    assert out["pairs"] == 2 and out["dice_mean"] == pytest.approx(score_flow(pair, true)["dice"])
    assert all(r["seconds"] >= 0 for r in out["per_pair"]) and "seconds_mean" in out


def test_unlabelled_pairs_get_ncc_and_folding_only_and_folded_fields_count():
    pair = {k: v for k, v in _pair().items() if "labels" not in k}
    folded = np.zeros((2, 48, 48), dtype=np.float32)
    folded[0] = 3.0 * np.sin(np.arange(48.0) / 1.5)[:, None]
    out = score_flow(pair, folded)
    assert "dice" not in out and out["folding"] > 10
    assert global_ncc(np.ones(4), np.arange(4.0)) == 0.0  # a constant image has no correlation
    with pytest.raises(ValueError, match="at least one pair"):
        run_method(identity_method, [])
    assert torch.is_tensor(pair["moving"])  # the pair is left as it was


def _transfer_benchmark():
    """benchmarks/transfer.py as a module (it is a script, not part of the package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "transfer.py"
    spec = importlib.util.spec_from_file_location("transfer_benchmark", path)
    transfer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(transfer)
    return transfer


def test_transfer_benchmark_markdown_names_where_and_with_what_it_was_measured(tmp_path):
    import json

    transfer = _transfer_benchmark()
    row = {"dice_mean": 0.8123, "ncc_mean": 0.9, "folding_mean": 0.013, "seconds_mean": 0.24}
    results = {
        "threads": 1, "load_at_start": 0.1, "load_at_end": 1.0, "torch": "x", "machine": "m, 2 cores",
        "command": "python benchmarks/transfer.py --pairs 3", "models": {"brain2d": "brain2d: pretrained, ..."},
        "sets": {"far slices": {"kind": "brain", "pairs": 3, "methods": {"SearchMorph": row}}},
        "iterations": {"echo clip": {"12": {"ncc_mean": 0.5, "folding_mean": 1.5}}},
    }  # fmt: skip
    out = tmp_path / "t"
    out.with_suffix(".json").write_text(json.dumps(results))
    transfer.main(["--markdown-only", "--out", str(out)])
    md = out.with_suffix(".md").read_text()
    assert md.startswith("Measured on m, 2 cores, torch x, 1 thread(s)")
    assert "`python benchmarks/transfer.py --pairs 3`" in md
    assert "- brain2d: pretrained, ..." in md
    assert "### far slices (3 pairs)" in md and "| SearchMorph | 0.812 | 0.900 | 0.013 | 0.24 |" in md
    assert "| echo clip | 12 | - | 0.500 | 1.500 |" in md
    assert "later run" not in md
    # a set rerun on its own (--sets) says so under its heading
    later = {"command": "python benchmarks/transfer.py --sets 'echo clip'", "threads": 2, "load_at_start": 0.2,
             "load_at_end": 1.1}  # fmt: skip
    results["sets"]["echo clip"] = {"kind": "echo", "pairs": 2, "methods": {"SearchMorph": row}, "measured": later}
    out.with_suffix(".json").write_text(json.dumps(results))
    transfer.main(["--markdown-only", "--out", str(out)])
    md = out.with_suffix(".md").read_text()
    assert md.count("Measured in a later run") == 1
    heading = "### echo clip (2 pairs)\n\nMeasured in a later run: "
    assert heading + "`python benchmarks/transfer.py --sets 'echo clip'`" in md


def test_transfer_benchmark_merges_a_rerun_set_only_into_earlier_results(tmp_path):
    transfer = _transfer_benchmark()
    with pytest.raises(SystemExit):  # nothing to merge into: argparse error, nothing written
        transfer.main(["--sets", "echo clip", "--out", str(tmp_path / "none")])
    assert list(tmp_path.iterdir()) == []


def test_evaluate_and_score_flow_score_each_pair_on_the_same_labels():
    # pair 0 holds labels 1 and 2, pair 1 labels 1 and 3: each pair is scored on its own (scored_labels), so the
    # batched evaluator and score_flow agree pair by pair, and the table has a nan where a pair has no label
    import numpy as np
    import torch

    from searchmorph_lite import VoxelMorph, VoxelMorphConfig
    from searchmorph_lite.scoring import evaluate, score_flow, scored_labels

    torch.manual_seed(0)
    model = VoxelMorph(VoxelMorphConfig(enc_widths=(4, 4), dec_widths=(4, 4))).eval()
    torch.nn.init.zeros_(model.flow_layer.weight)  # the identity: a field of zeros
    pairs = []
    for other in (2, 3):
        fixed = torch.zeros(1, 16, 16, dtype=torch.long)
        fixed[0, 2:8, 2:8], fixed[0, 9:14, 9:14] = 1, other
        moving = torch.roll(fixed, 1, dims=2)
        pairs.append({"moving": moving.float(), "fixed": fixed.float(), "moving_labels": moving, "fixed_labels": fixed})
    out = evaluate(model, pairs, batch_size=2)
    assert out["labels"] == [1, 2, 3] and np.isnan(out["dice"][0][2]) and np.isnan(out["dice"][1][1])
    for pair, row in zip(pairs, out["dice"]):
        alone = score_flow(pair, np.zeros((2, 16, 16)))
        assert scored_labels(pair["fixed_labels"]) == [1, 2 if pair is pairs[0] else 3]
        assert abs(np.nanmean(row) - alone["dice"]) < 1e-6


def test_input_use_scores_the_model_with_each_gru_input_zeroed_on_the_same_pairs():
    import searchmorph_lite as sm
    from searchmorph_lite.scoring import input_use

    torch.manual_seed(0)
    model = sm.SearchMorph(sm.SearchMorphConfig(iterations=2)).eval()
    pairs = [_pair(3.0), _pair(5.0)]
    use = input_use(model, pairs)
    assert list(use) == ["as trained", "search zeroed", "context zeroed", "identity (no field)"]
    assert use["as trained"]["field_change"] == 0.0
    for name, part in (("search zeroed", "search"), ("context zeroed", "context")):  # one loop, written out
        flows = []
        for pair in pairs:
            with torch.no_grad(), sm.zeroed_input(model, part):
                flows.append(model(pair["moving"][None], pair["fixed"][None]).flow)
        dices = [score_flow(p, f[0].double().numpy())["dice"] for p, f in zip(pairs, flows)]
        assert use[name]["dice"] == pytest.approx(np.mean(dices))
        assert use[name]["field_change"] > 0
    zero = [dice_naive(p["moving_labels"][0], p["fixed_labels"][0], 1) for p in pairs]
    assert use["identity (no field)"]["dice"] == pytest.approx(np.mean(zero), abs=1e-6)
