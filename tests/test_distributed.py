"""Training on several processes (torchrun, DistributedDataParallel, gloo on CPU): shards, sync, checkpoint, resume."""

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml

from searchmorph_lite import read_checkpoint
from searchmorph_lite.cli import main
from searchmorph_lite.distributed import DistInfo
from searchmorph_lite.train import TrainConfig, epoch_loader, train

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="this torch build has no torch.distributed with the gloo backend (CPU processes)",
)

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(
    dataset="brain2d",
    dataset_options={"num_pairs": 8, "image_size": [32, 32]},
    model="SearchMorph",
    model_config={"widths": [4, 4, 4, 4], "feature_dim": 2, "hidden_dim": 8, "motion_dim": 8, "context_dim": 8},
    epochs=1,
    batch_size=2,  # per process: 8 pairs on 2 processes are 2 steps of 2 pairs each
    val_pairs=1,
)
# not anchored to line starts: the ranks share stderr, and another rank's output may sit on the same line
RANK_LINE = re.compile(r"rank (\d+)/(\d+): (\d+) steps, weights sha256 ([0-9a-f]{64})(?![0-9a-f])")
TORCHRUN_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def one_process(monkeypatch):
    """No torchrun environment in this process, whatever pytest was started under."""
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(config: Path, out: Path, *flags: str) -> tuple[dict[int, tuple[int, str]], str]:
    """({rank: (steps, weights digest)}, stderr) of ``torchrun --nproc_per_node=2 -m searchmorph_lite train``."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}"]
    cmd += ["-m", "searchmorph_lite", "train", "--config", str(config), "--out", str(out), "--device", "cpu", *flags]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = {int(r): (int(steps), digest) for r, n, steps, digest in RANK_LINE.findall(done.stderr) if n == "2"}
    assert sorted(ranks) == [0, 1], f"not one line per rank in torchrun's stderr:\n{done.stderr[-3000:]}"
    return ranks, done.stderr


def _shard(n: int, rank: int, epoch: int) -> list[int]:
    info = DistInfo(rank=rank, world_size=2)
    loader = epoch_loader(list(range(n)), TrainConfig(**TINY), epoch, info, torch.Generator())
    return [int(i) for batch in loader for i in batch]


@pytest.mark.parametrize("n", [8, 7])
def test_the_shards_of_two_ranks_are_disjoint_and_cover_the_set(n):
    first, second = _shard(n, 0, epoch=0), _shard(n, 1, epoch=0)
    assert len(first) == len(second) == (n + 1) // 2  # the same number of steps on every rank
    assert set(first) | set(second) == set(range(n))
    if n % 2 == 0:
        assert not set(first) & set(second)
    else:  # drop_last=False pads one shard with one repeated pair
        assert len(set(first) & set(second)) == 1
    assert _shard(n, 0, epoch=1) != first  # set_epoch: a new shuffle every epoch


def test_two_gloo_processes_train_in_sync_write_one_checkpoint_and_resume_across_world_sizes(tmp_path, one_process):
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(TINY))
    run = tmp_path / "run"
    ranks, _ = _torchrun(tmp_path / "cfg.yaml", run)
    ckpt = read_checkpoint(run / "checkpoint.pt")
    assert [ranks[r][0] for r in (0, 1)] == [2, 2]  # both ranks took their steps
    assert ranks[0][1] == ranks[1][1] == ckpt["sha256"]  # the same weights everywhere, and those were saved
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt"]  # one file, no temporary left
    assert ckpt["epoch"] == 1 and ckpt["metadata"]["world_size"] == 2
    assert ckpt["metadata"]["global_batch_size"] == 4 and len(ckpt["history"]["val_dice"]) == 1

    # 2 processes -> 1: continues from the checkpoint's epoch, weights and optimizer
    history = train(TrainConfig(**{**TINY, "epochs": 2}), run, resume=True, device="cpu", progress=False)
    one = read_checkpoint(run / "checkpoint.pt")
    assert history["epoch"] == [1, 2] and history["loss"][0] == ckpt["history"]["loss"][0]
    assert one["metadata"]["world_size"] == 1 and one["sha256"] != ckpt["sha256"]
    assert one["metadata"]["config_changes"] == [{"from_epoch": 2, "changes": {"world_size": [2, 1]}}]

    # 1 -> 2 processes, with a budget the first step spends: every rank stops at that same step (or DDP hangs)
    budget = {**TINY, "epochs": 3, "max_cpu_seconds": sum(history["cpu_seconds"]) + 1e-6}
    (tmp_path / "budget.yaml").write_text(yaml.safe_dump(budget))
    ranks, _ = _torchrun(tmp_path / "budget.yaml", run, "--resume", "--allow-config-change")
    two = read_checkpoint(run / "checkpoint.pt")
    assert [ranks[r][0] for r in (0, 1)] == [1, 1] and ranks[0][1] == ranks[1][1] == two["sha256"]
    assert two["epoch"] == 3 and two["history"]["epoch"] == [1, 2, 3] and two["metadata"]["world_size"] == 2
    assert two["metadata"]["config_changes"][-1]["changes"]["world_size"] == [1, 2]
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt"]


def test_a_malformed_torchrun_environment_is_one_line(tmp_path, one_process, monkeypatch, capsys):
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(TINY))
    args = ["train", "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "run"), "--device", "cpu"]
    monkeypatch.setenv("WORLD_SIZE", "two")
    assert main(args) == 2
    assert capsys.readouterr().err.strip() == "error: WORLD_SIZE must be an integer (torchrun sets it), got 'two'"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: WORLD_SIZE=2 but MASTER_ADDR and MASTER_PORT unset; launch") and "\n" not in err
    assert not (tmp_path / "run").exists()
