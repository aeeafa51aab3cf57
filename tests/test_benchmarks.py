"""One benchmark suite: the interleaved timing loop, the one normalize every suite uses, memory by formula and
measurement, and the entry point ``python -m benchmarks --suite NAME``."""

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import searchmorph_lite as sm
from searchmorph_lite.scoring import identity_method, interleave, run_method, run_methods

from conftest import disc_pair

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the benchmarks package lives at the repository's root, beside the library

from benchmarks import beyond, common, memory, refine_time, transfer  # noqa: E402

SUITE_FILES = sorted((ROOT / "benchmarks").glob("*.py")) + [ROOT / "training" / "choose_refinement.py"]


def _pair(shift: float) -> dict:
    moving, fixed, moving_lab, fixed_lab = disc_pair(size=32, shift=shift, r_moving=7.0, r_fixed=8.0)
    return {"moving": moving[0], "fixed": fixed[0], "moving_labels": moving_lab[0], "fixed_labels": fixed_lab[0]}


def _shift(m: np.ndarray, f: np.ndarray) -> np.ndarray:
    """A fake method: the same 2 px shift for every pair."""
    flow = np.zeros((2, *m.shape), dtype=np.float32)
    flow[0], flow[1] = -2.0, 2.0
    return flow


def _without_seconds(result: dict) -> dict:
    return {
        "per_pair": [{k: v for k, v in row.items() if k != "seconds"} for row in result["per_pair"]],
        **{k: v for k, v in result.items() if k not in ("per_pair", "seconds_mean")},
    }


@pytest.mark.parametrize("names", ["AB", "ABC"])
def test_interleave_rotates_the_methods_pair_by_pair_after_one_untimed_warm_up(names):
    calls = []
    methods = {name: (lambda item, name=name: calls.append((name, item)) or f"{name}{item}") for name in names}
    out = interleave(methods, [0, 1, 2, 3], keep=lambda name, item, output, seconds: (output, seconds >= 0))
    n = len(names)
    assert calls[:n] == [(name, 0) for name in names]  # the warm-up: each method once on the first item
    turns = [names[i % n :] + names[: i % n] for i in range(4)]  # AB, BA, AB, BA / ABC, BCA, CAB, ABC
    assert calls[n:] == [(name, i) for i, turn in enumerate(turns) for name in turn]
    assert out == {name: [(f"{name}{i}", True) for i in range(4)] for name in names}
    calls.clear()
    interleave(methods, [0, 1], warmup=False)
    assert calls == [("A", 0), ("B", 0), *(("C", 0),) * (n == 3), *[(name, 1) for name in turns[1]]]


def test_run_methods_scores_every_pair_as_each_method_alone():
    pairs = [_pair(2.0), _pair(3.0), _pair(1.0)]
    together = run_methods({"Identity": identity_method, "shift": _shift}, pairs, labels=[1])
    for name, method in (("Identity", identity_method), ("shift", _shift)):
        alone = run_method(method, pairs, labels=[1])
        assert _without_seconds(together[name]) == _without_seconds(alone)
        assert together[name]["pairs"] == 3 and all(row["seconds"] >= 0 for row in together[name]["per_pair"])
    assert together["shift"]["dice_mean"] > together["Identity"]["dice_mean"]  # the scores tell the methods apart


def test_run_methods_adds_the_extra_scores_to_each_row_and_averages_the_scalar_ones():
    pairs = [_pair(2.0), _pair(3.0)]

    def extra(pair: dict, flow: np.ndarray) -> dict:
        return {"largest": float(np.abs(flow).max()), "values": flow.ravel()}

    out = run_methods({"shift": _shift}, pairs, labels=[1], extra=extra)["shift"]
    assert [row["largest"] for row in out["per_pair"]] == [2.0, 2.0] and out["largest_mean"] == 2.0
    assert out["per_pair"][0]["values"].shape == (2 * 32 * 32,) and "values_mean" not in out
    with pytest.raises(ValueError, match="at least one method"):
        run_methods({}, pairs)


@pytest.fixture
def normalize_seen(monkeypatch) -> list:
    """The ``normalize`` of every ``register`` call (``register`` replaced by one returning the zero field)."""
    import searchmorph_lite.inference

    seen = []

    def fake_register(moving, fixed, model, normalize=True, **kwargs):
        seen.append(normalize)
        return moving, np.zeros((moving.ndim, *moving.shape), dtype=np.float32)

    monkeypatch.setattr(searchmorph_lite.inference, "register", fake_register)
    return seen


class _Model:
    metadata: dict = {}


def _networks_of(suite: str, monkeypatch) -> list:
    """The network methods that ``suite`` builds (models replaced by stubs), each to be called on a pair."""
    if suite == "transfer":
        monkeypatch.setattr(transfer, "load_model", lambda name, checkpoint=None: _Model())
        table, _ = transfer.methods("brain", [2], runs={})
        return [table["VoxelMorph"], table["SearchMorph"], table["SearchMorph + 2 refinement steps"]]
    if suite == "beyond":  # beyond scores as it runs: its whole path, on one pair
        monkeypatch.setattr(beyond, "load", lambda name, runs: _Model())
        return [lambda m, f: beyond.score([_pair(2.0)], {}, {"stub": "brain2d"}, runs=False)]
    model = _Model()  # refine: the report's methods are the tuner's (training/choose_refinement.py)
    model.metadata = {"refine_lr": 1.0}
    return [refine_time.refinement_method(model, 0), refine_time.refinement_method(model, 5, lr=0.5, levels=2)]


@pytest.mark.parametrize("suite", ["transfer", "beyond", "refine"])
def test_every_suite_shows_the_networks_the_images_with_the_one_normalize(suite, normalize_seen, monkeypatch):
    for method in _networks_of(suite, monkeypatch):
        method(np.zeros((32, 32), np.float32), np.zeros((32, 32), np.float32))
    assert normalize_seen and set(normalize_seen) == {common.NORMALIZE}


def test_no_suite_calls_register_or_passes_normalize_but_through_the_common_network():
    for path in SUITE_FILES:
        if path.name == "common.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                assert func not in ("register", "network_method"), f"{path.name}:{node.lineno} calls {func}"
                if func in ("network", "refinement_method"):
                    assert "normalize" not in [k.arg for k in node.keywords], f"{path.name}:{node.lineno}"


def test_a_refinement_setting_holds_for_its_own_call_only(normalize_seen, monkeypatch):
    import searchmorph_lite.inference

    model = _Model()
    model.metadata = {"refine_lr": 1.0}
    seen, fake = [], searchmorph_lite.inference.register

    def spy(*args, **kwargs):
        seen.append(dict(model.metadata))
        return fake(*args, **kwargs)

    monkeypatch.setattr(searchmorph_lite.inference, "register", spy)
    refine_time.refinement_method(model, 5, lr=0.5, levels=2)(np.zeros((8, 8)), np.zeros((8, 8)))
    assert seen == [{"refine_lr": 0.5, "refine_levels": 2}] and model.metadata == {"refine_lr": 1.0}


@pytest.mark.parametrize("features", [(8, 6), (4, 4, 4)])
def test_the_search_map_formula_counts_what_search_features_returns_and_its_peak_holds_it(features):
    h_f, h_m = memory.random_features((1, 4, *features))
    peak, held = memory.search_peak_bytes(h_f, h_m, radius=1, levels=3, normalize=True)
    k = sm.diamond_offsets(1, len(features)).shape[0]
    assert held == memory.search_map_bytes(features, 3, k) == 4 * 3 * k * int(np.prod(features))
    assert held <= peak  # the search map is alive when search_features returns


def test_live_tensor_bytes_counts_what_is_alive_at_once():
    with memory.LiveTensorBytes() as meter:
        a = torch.ones(1000)  # 4,000 bytes
        b = torch.ones(500)  # 2,000 more, both alive
        del a
        c = torch.ones(250)  # a was freed: 3,000 alive
    assert meter.peak == 6000 and b.numel() + c.numel() == 750


def test_python_m_benchmarks_runs_a_suite_by_name_and_refuses_an_unknown_one(tmp_path):
    run = [sys.executable, "-m", "benchmarks", "--suite"]
    ok = subprocess.run([*run, "memory", "--sizes", "16x16", "--out", str(tmp_path / "m")], cwd=ROOT,
                        capture_output=True, text=True)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "| 16x16 | 2 | 8x8 |" in (tmp_path / "m.md").read_text() and (tmp_path / "m.json").is_file()
    bad = subprocess.run([*run, "nope"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice: 'nope'" in bad.stderr
