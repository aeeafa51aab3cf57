"""Issue 10's bad-input and fault sweep: every case gets one readable line, and what must keep working does.

The cases and their lines live in ``bad_input_table.py`` (which also renders ``book/bad_input.md``); the tests
below them check behaviour that a line cannot show: digests, applied config changes, memory, JSON, temporaries,
resampling.
"""

import json
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bad_input_table import (
    CASES,
    PAGE,
    SMALL,
    TINY_TRAIN,
    cli,
    copy,
    nifti,
    pattern,
    register_args,
    render,
    shared,
    tiny_yaml,
)

from searchmorph_lite import SearchMorph, SearchMorphConfig, load_checkpoint, read_checkpoint, register
from searchmorph_lite.pipeline import register_images
from searchmorph_lite.train import TrainConfig, train

UNSAFE = ("weights_only", "allow_pickle", "arbitrary code")


@pytest.mark.parametrize("case", CASES, ids=[f"{c.item}-{c.what[:60]}" for c in CASES])
def test_bad_input_gets_its_one_line(case, tmp_path):
    line = case.run(tmp_path)
    assert "\n" not in line and not any(word in line for word in UNSAFE), line
    assert pattern(case.expected, tmp_path).fullmatch(line), f"\n got: {line}\nwant: {case.expected}"


def test_book_page_lists_every_case_as_the_tests_check_them():
    assert PAGE.read_text() == render(), "run: python tests/bad_input_table.py"


# 1. damaged checkpoints ------------------------------------------------------------------------------------------


def test_save_checkpoint_stores_a_digest_that_read_checkpoint_verifies(tmp_path):
    raw = torch.load(shared("ck.pt"), weights_only=True)
    assert len(raw["sha256"]) == 64
    raw["config"]["radius"] = 1  # the digest covers the config too
    torch.save(raw, tmp_path / "ck.pt")
    with pytest.raises(ValueError, match="ck.pt is damaged: its weights do not match the SHA-256"):
        read_checkpoint(tmp_path / "ck.pt")


def test_shipped_format_1_files_without_a_digest_still_load():
    from searchmorph_lite.pretrained import available_pretrained, pretrained_path

    formats = set()
    for name in available_pretrained():
        raw = torch.load(pretrained_path(name), weights_only=True)
        formats.add(raw["format"])
        if raw["format"] == "searchmorph_lite.checkpoint/1":  # the first models: no digest, loaded as they are
            assert "sha256" not in raw
        else:  # shipped since: format 2, whose digest read_checkpoint verifies
            assert raw["format"] == "searchmorph_lite.checkpoint/2" and len(raw["sha256"]) == 64
        assert read_checkpoint(pretrained_path(name))["model"] in ("SearchMorph", "VoxelMorph")
    assert "searchmorph_lite.checkpoint/1" in formats or not available_pretrained()


def test_a_file_saved_without_zip_crcs_still_loads(tmp_path):
    raw = torch.load(shared("ck.pt"), weights_only=True)
    torch.serialization.set_crc32_options(False)
    try:
        torch.save(raw, tmp_path / "ck.pt")
    finally:
        torch.serialization.set_crc32_options(True)
    assert read_checkpoint(tmp_path / "ck.pt")["model"] == "SearchMorph"


def test_one_line_removes_torchs_unsafe_advice():
    from searchmorph_lite._checks import one_line

    torch_text = (
        "Weights only load failed. In PyTorch 2.6, we changed the default value of the `weights_only` argument "
        "in `torch.load` from `False` to `True`. Re-running `torch.load` with `weights_only` set to `False` will "
        "likely succeed, but it can result in arbitrary code execution.\n\nUnsupported operand 149\n\nCheck the "
        "documentation of torch.load to learn more"
    )
    assert one_line(torch_text) == "Unsupported operand 149"
    assert one_line(ValueError("Object arrays cannot be loaded when allow_pickle=False")) == "unreadable input"


# 2. resume ---------------------------------------------------------------------------------------------------------


def test_an_allowed_config_change_runs_the_new_lr_and_records_when(tmp_path):
    run = copy("run", tmp_path)
    cfg = TrainConfig(**{**TINY_TRAIN, "lr": 0.01, "epochs": 3})
    with pytest.raises(ValueError, match="lr: 0.001 in the checkpoint, 0.01 now"):
        train(cfg, run, resume=True, device="cpu", progress=False, max_steps=1)
    history = train(cfg, run, resume=True, device="cpu", progress=False, max_steps=1, allow_config_change=True)
    assert history["epoch"] == [1, 2, 3]
    ckpt = read_checkpoint(run / "checkpoint.pt")
    assert [g["lr"] for g in ckpt["optimizer"]["param_groups"]] == [0.01]
    assert ckpt["metadata"]["train_config"]["lr"] == 0.01
    assert ckpt["metadata"]["config_changes"] == [{"from_epoch": 2, "changes": {"lr": [0.001, 0.01]}}]
    # resuming again with the same config needs no flag and keeps the record
    train(TrainConfig(**{**TINY_TRAIN, "lr": 0.01, "epochs": 4}), run, resume=True, device="cpu", progress=False,
          max_steps=1)  # fmt: skip
    assert read_checkpoint(run / "checkpoint.pt")["metadata"]["config_changes"][0]["from_epoch"] == 2


def test_resume_with_only_more_epochs_needs_no_flag(tmp_path):
    run = copy("run", tmp_path)
    history = train(TrainConfig(**{**TINY_TRAIN, "epochs": 2}), run, resume=True, device="cpu", progress=False)
    assert history["epoch"] == [1, 2] and "config_changes" not in read_checkpoint(run)["metadata"]


def test_a_nan_loss_stops_training_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    import searchmorph_lite.train as tr

    run = copy("run", tmp_path)
    before = (run / "checkpoint.pt").read_bytes()
    monkeypatch.setattr(tr, "registration_loss_all", lambda *a: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(ValueError, match="training diverged: the loss is nan at epoch 2, step 1"):
        train(TrainConfig(**{**TINY_TRAIN, "epochs": 2}), run, resume=True, device="cpu", progress=False)
    assert (run / "checkpoint.pt").read_bytes() == before


# 3. types and devices -------------------------------------------------------------------------------------------


def test_yaml_reads_1e_minus_3_as_a_number(tmp_path):
    (tmp_path / "c.yaml").write_text("lr: 1e-3\nalpha: 2\n")
    cfg = TrainConfig.from_file(tmp_path / "c.yaml")
    assert cfg.lr == 0.001 and cfg.alpha == 2.0 and isinstance(cfg.alpha, float)


@pytest.mark.parametrize(
    "field,value",
    [
        ("dataset", 3),
        ("dataset_options", "num_pairs=4"),
        ("model", ["SearchMorph"]),
        ("model_config", [3]),
        ("similarity", None),
        ("alpha", "2"),
        ("iteration_weight", True),
        ("epochs", 2.0),
        ("batch_size", "8"),
        ("lr", float("inf")),
        ("seed", "0"),
        ("val_pairs", 1.5),
    ],
)
def test_every_train_config_field_refuses_a_wrong_type(field, value):
    with pytest.raises(ValueError, match=f"TrainConfig.{field} must be"):
        TrainConfig(**{field: value})


@pytest.mark.parametrize("spec,match", [("gpu0", "unknown device 'gpu0'"), ("tpu", "unknown device"),
                                        ("meta", "unsupported device 'meta'")])  # fmt: skip
def test_device_names_are_checked(spec, match):
    from searchmorph_lite._checks import check_device

    with pytest.raises(ValueError, match=match):
        check_device(spec)
    assert check_device("cpu") == torch.device("cpu")


def test_an_unexpected_error_is_one_line_with_exit_code_1(monkeypatch, capsys):
    import searchmorph_lite.cli as c

    def boom(args):
        raise RuntimeError("something broke\ninside")

    monkeypatch.setattr(c, "cmd_register", boom)
    code = c.main(register_args(Path("/nonexistent")))
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "unexpected RuntimeError: something broke inside" in err


# 4. outputs --------------------------------------------------------------------------------------------------------


def test_output_paths_are_checked_before_the_checkpoint_is_even_read(tmp_path):
    moving = copy("m.nii.gz", tmp_path)
    line = cli(*register_args(tmp_path, **{"--moving": str(moving), "--out": str(moving),
                                           "--checkpoint": str(tmp_path / "missing.pt")}))  # fmt: skip
    assert "is the --moving input" in line and moving.read_bytes() == shared("m.nii.gz").read_bytes()


def test_a_symlink_to_the_input_is_refused_too(tmp_path):
    moving = copy("m.nii.gz", tmp_path)
    (tmp_path / "link.nii.gz").symlink_to(moving)
    line = cli(*register_args(tmp_path, **{"--moving": str(moving), "--out": str(tmp_path / "link.nii.gz")}))
    assert "is the --moving input" in line


# 6. nonsense -----------------------------------------------------------------------------------------------------


def _count_upsamples(monkeypatch):
    import searchmorph_lite.model as model_module

    calls = []
    real = model_module.upsample_flow
    monkeypatch.setattr(model_module, "upsample_flow", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_forward_keeps_every_field_only_when_asked(monkeypatch):
    torch.manual_seed(0)
    model = SearchMorph(SearchMorphConfig(**SMALL)).eval()
    m, f = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    calls = _count_upsamples(monkeypatch)
    with torch.no_grad():
        every = model(m, f, iterations=6)
        last = model(m, f, iterations=6, keep_flows=False)
    assert len(every.flows) == 6 and len(last.flows) == 1 and len(calls) == 6 + 1
    assert torch.equal(every.flow, last.flow) and torch.equal(every.warped, last.warped)


def test_register_and_evaluate_keep_only_the_last_field(monkeypatch):
    from searchmorph_lite.data import load_dataset
    from searchmorph_lite.train import evaluate

    model = SearchMorph(SearchMorphConfig(**SMALL)).eval()
    calls = _count_upsamples(monkeypatch)
    register(np.random.rand(32, 32), np.random.rand(32, 32), model, iterations=12)
    assert len(calls) == 1
    evaluate(model, load_dataset("brain2d", "val", num_pairs=2, image_size=(32, 32)), iterations=12, batch_size=2)
    assert len(calls) == 2


def test_json_text_writes_null_for_nan_and_inf():
    from searchmorph_lite._files import json_text

    text = json_text({"a": float("nan"), "b": [1.0, float("inf")], "c": np.float32(0.5), "d": np.arange(2)})
    assert json.loads(text, parse_constant=lambda c: pytest.fail(c)) == {"a": None, "b": [1.0, None], "c": 0.5,
                                                                          "d": [0, 1]}  # fmt: skip


def _nan_metrics(monkeypatch):
    import searchmorph_lite.train as tr

    real = tr.evaluate

    def evaluate(*args, **kwargs):
        out = real(*args, **kwargs)
        return {**out, "dice_mean": float("nan"), "folding_mean": float("inf"), "ncc_after": [float("nan")]}

    monkeypatch.setattr(tr, "evaluate", evaluate)


def test_train_prints_strict_json_when_a_metric_is_nan(tmp_path, monkeypatch):
    _nan_metrics(monkeypatch)
    line = cli("train", "--config", tiny_yaml(tmp_path, val_pairs=1), "--out", tmp_path / "run", "--device", "cpu",
               "--max-steps", "1", ok=True)  # fmt: skip
    assert json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in {line}"))["val_dice"] is None


def test_evaluate_prints_and_writes_strict_json_when_a_metric_is_nan(tmp_path, monkeypatch):
    _nan_metrics(monkeypatch)
    line = cli("evaluate", "--checkpoint", shared("vm.pt"), "--dataset", "echo2d-clip", "--max-pairs", "1", "--out",
               tmp_path / "m.json", "--device", "cpu", ok=True)  # fmt: skip
    assert json.loads(line, parse_constant=lambda c: pytest.fail(c))["dice_mean"] is None
    metrics = json.loads((tmp_path / "m.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert metrics["folding_mean"] is None and metrics["ncc_after"] == [None]


# 7. temporaries --------------------------------------------------------------------------------------------------


def _age(path: Path, seconds: float) -> Path:
    os.utime(path, (time.time() - seconds, time.time() - seconds))
    return path


def test_stale_temporaries_of_the_same_target_are_removed_and_nothing_else(tmp_path):
    from searchmorph_lite._files import atomic_write_text

    target = tmp_path / "w.nii.gz"
    ours = tmp_path / ".w.nii.gz.k3x_9abz.tmp.nii.gz"
    ours.write_bytes(b"x" * 1000)
    _age(ours, 3600)
    foreign = {
        ".foo.tmp": 3600,  # no random part
        "x.tmp": 3600,
        ".w.nii.gz.abc.tmp.nii.gz": 3600,  # random part of another length
        ".w.nii.gz.abcdefgh.tmp": 3600,  # the suffix of another kind of target
        ".v.nii.gz.abcdefgh.tmp.nii.gz": 3600,  # another target's
        ".w.nii.gz.ABCDEFGH.tmp.nii.gz": 3600,  # tempfile never uses capitals
        ".w.nii.gz.fresh123.tmp.nii.gz": 5,  # a writer that is still at work
        "w.nii.gz.abcdefgh.tmp.nii.gz": 3600,  # no leading dot
    }
    for name, age in foreign.items():
        (tmp_path / name).write_text("keep")
        _age(tmp_path / name, age)
    (tmp_path / ".w.nii.gz.folder12.tmp.nii.gz").mkdir()  # a folder of that name is never ours
    atomic_write_text(target, "new")
    assert not ours.exists() and target.read_text() == "new"
    for name in foreign:
        assert (tmp_path / name).read_text() == "keep", name
    assert (tmp_path / ".w.nii.gz.folder12.tmp.nii.gz").is_dir()


def test_stale_temporaries_ignore_links_and_fresh_files(tmp_path):
    from searchmorph_lite._files import remove_stale_temporaries, stale_temporaries

    target = tmp_path / "ck.pt"
    (tmp_path / "precious").write_text("keep")
    link = tmp_path / ".ck.pt.abcdefgh.tmp"
    link.symlink_to(tmp_path / "precious")
    fresh = tmp_path / ".ck.pt.ijklmnop.tmp"
    fresh.write_text("being written")
    assert stale_temporaries(target, older_than_s=0) == [fresh]
    assert remove_stale_temporaries(target) == []  # nothing is 10 minutes old
    assert link.is_symlink() and (tmp_path / "precious").read_text() == "keep"


def test_register_removes_the_temporary_an_earlier_kill_left(tmp_path):
    left = tmp_path / ".w.nii.gz.q1w2e3r4.tmp.nii.gz"
    left.write_bytes(b"\0" * 15000)
    _age(left, 3600)
    cli(*register_args(tmp_path), ok=True)
    assert not left.exists() and (tmp_path / "w.nii.gz").is_file()


# 8. wording -------------------------------------------------------------------------------------------------------


def test_a_local_checkpoint_named_like_a_pretrained_model_is_reached_with_dot_slash(tmp_path, monkeypatch):
    (tmp_path / "brain2d").mkdir()
    copy("ck.pt", tmp_path / "brain2d", "checkpoint.pt")
    monkeypatch.chdir(tmp_path)
    cli(*register_args(tmp_path, **{"--checkpoint": "./brain2d"}), ok=True)
    reg = register_images(shared("m.nii.gz"), shared("f.nii.gz"), load_checkpoint(shared("ck.pt"), device="cpu"))
    assert np.allclose(nib.load(tmp_path / "w.nii.gz").get_fdata(), reg.apply(), atol=1e-4)


# 9. resampling ---------------------------------------------------------------------------------------------------


def _zero_field_checkpoint(path, ndim: int) -> None:
    """A SearchMorph whose field is 0 everywhere: register then maps the moving image through the affines alone."""
    from searchmorph_lite import save_checkpoint

    cfg = SearchMorphConfig(ndim=ndim, widths=(4, 8, 8, 8), hidden_dim=8, motion_dim=8, context_dim=8, radius=1)
    model = SearchMorph(cfg)
    torch.nn.init.zeros_(model.iterator.flow_head[-1].weight)
    torch.nn.init.zeros_(model.iterator.flow_head[-1].bias)
    save_checkpoint(path, model)


@pytest.mark.parametrize("ndim", [2, 3])
def test_images_on_other_grids_are_mapped_through_both_affines_as_nibabel_resamples(tmp_path, ndim):
    from nibabel.processing import resample_from_to

    rng = np.random.default_rng(0)
    _zero_field_checkpoint(tmp_path / "ck.pt", ndim)
    affine = np.diag([1.5, 1.25, 1.1, 1.0])
    affine[:3, 3] = [-3.0, 2.0, 1.0 if ndim == 3 else 0.0]
    shape_m, shape_f = ((40, 50), (64, 64)) if ndim == 2 else ((20, 24, 18), (32, 32, 32))
    smooth = lambda shape: np.asarray(  # noqa: E731
        torch.nn.functional.interpolate(torch.tensor(rng.random((1, 1, *[4] * ndim))), size=shape,
                                        mode="bilinear" if ndim == 2 else "trilinear")[0, 0])  # fmt: skip
    moving = nifti(tmp_path / "m.nii.gz", smooth(shape_m), affine)
    fixed = nifti(tmp_path / "f.nii.gz", smooth(shape_f), np.eye(4))
    args = ["register", "--moving", moving, "--fixed", fixed, "--checkpoint", tmp_path / "ck.pt", "--out",
            tmp_path / "w.nii.gz", "--device", "cpu", "--stage", "deform"]  # fmt: skip
    cli(*args, ok=True)
    out = nib.load(tmp_path / "w.nii.gz")
    assert out.shape == shape_f and np.allclose(out.affine, np.eye(4))
    pad = (1,) * (3 - ndim)
    m3 = nib.Nifti1Image(nib.load(moving).get_fdata().reshape(*shape_m, *pad), affine)
    expected = resample_from_to(m3, ((*shape_f, *pad), np.eye(4)), order=1, cval=0.0).get_fdata().reshape(shape_f)
    ones = nib.Nifti1Image(np.ones(m3.shape), affine)  # where a fixed voxel maps inside the moving grid
    inside = resample_from_to(ones, ((*shape_f, *pad), np.eye(4)), order=1, cval=0.0).get_fdata().reshape(shape_f)
    inside = inside > 1 - 1e-9  # (beyond the last voxel centre scipy reads 0, torch blends towards 0)
    assert inside.mean() > 0.3 and np.abs(out.get_fdata() - expected)[inside].max() < 1e-4
    assert np.abs(expected).max() > 0.1
    note = cli(*args, "--resample", ok=True, stream="stderr", line=0)
    assert note.startswith("note: --resample is no longer needed")
    assert np.array_equal(nib.load(tmp_path / "w.nii.gz").get_fdata(), out.get_fdata())


# Issue 24 -----------------------------------------------------------------------------------------------------------
# 1. one run per folder


def test_a_run_holds_its_folder_so_a_second_train_stops_while_the_first_keeps_running(tmp_path, monkeypatch):
    import searchmorph_lite.train as tr

    cfg, seen = TrainConfig(**TINY_TRAIN), []
    real = tr._train_loop

    def loop_that_meets_a_second_run(*args, **kwargs):
        with pytest.raises(ValueError, match=f"run folder {tmp_path / 'run'} is in use by pid {os.getpid()} on "):
            train(cfg, tmp_path / "run", resume=True, device="cpu", progress=False)
        seen.append((tmp_path / "run" / ".lock").read_text())
        return real(*args, **kwargs)

    monkeypatch.setattr(tr, "_train_loop", loop_that_meets_a_second_run)
    train(cfg, tmp_path / "run", device="cpu", progress=False, max_steps=1)
    assert seen and seen[0].startswith(f"pid {os.getpid()} on ")
    assert os.listdir(tmp_path / "run") == ["checkpoint.pt"]  # the lock goes with the run


def test_a_second_process_is_told_which_pid_holds_the_folder(tmp_path):
    import subprocess
    import sys

    (tmp_path / "run").mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from searchmorph_lite._files import exclusive_lock\n"
         f"with exclusive_lock({str(tmp_path / 'run' / '.lock')!r}, 'x'):\n print('locked', flush=True)\n"
         " time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        line = cli("train", "--config", tiny_yaml(tmp_path), "--out", tmp_path / "run", "--device", "cpu")
    finally:
        holder.kill()
        holder.wait()
    assert line.startswith(f"error: run folder {tmp_path / 'run'} is in use by pid {holder.pid} on ")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_checkpoint_that_appears_before_the_lock_is_taken_is_not_overwritten(tmp_path, monkeypatch):
    import searchmorph_lite.train as tr

    run = tmp_path / "run"
    real = tr.exclusive_lock

    def another_run_finishes_first(path, what):
        copy("run", tmp_path, "other")
        (tmp_path / "other" / "checkpoint.pt").rename(run / "checkpoint.pt")
        return real(path, what)

    monkeypatch.setattr(tr, "exclusive_lock", another_run_finishes_first)
    with pytest.raises(ValueError, match="checkpoint.pt already exists"):
        train(TrainConfig(**TINY_TRAIN), run, device="cpu", progress=False)
    assert (run / "checkpoint.pt").read_bytes() == (shared("run") / "checkpoint.pt").read_bytes()


def test_a_lock_file_left_by_a_killed_run_does_not_block_the_next(tmp_path):
    run = copy("run", tmp_path)
    (run / ".lock").write_text("pid 1 on elsewhere since long ago\n")  # the kernel dropped that run's lock
    history = train(TrainConfig(**{**TINY_TRAIN, "epochs": 2}), run, resume=True, device="cpu", progress=False)
    assert history["epoch"] == [1, 2] and not (run / ".lock").exists()


# 4. what a resume trusts


def test_the_digest_covers_the_metadata_epoch_and_history(tmp_path):
    from bad_input_table import edited_checkpoint

    for edit in (lambda raw: raw.update(epoch=7), lambda raw: raw["history"]["loss"].append(0.0),
                 lambda raw: raw["metadata"].update(device="cuda")):  # fmt: skip
        ck = edited_checkpoint(shared("run") / "checkpoint.pt", tmp_path / "ck.pt", edit, redigest=False)
        with pytest.raises(ValueError, match="its metadata, epoch or history do not match the SHA-256 digest"):
            read_checkpoint(ck)


def test_a_run_without_a_metadata_digest_resumes_with_one_warning_line(tmp_path):
    from bad_input_table import edited_checkpoint

    run = copy("run", tmp_path)
    edited_checkpoint(run / "checkpoint.pt", run / "checkpoint.pt", lambda raw: raw.pop("metadata_sha256"), False)
    line = cli("train", "--config", tiny_yaml(tmp_path, epochs=2), "--out", run, "--resume", "--device", "cpu",
               ok=True, stream="stderr")  # fmt: skip
    assert line == f"warning: {run / 'checkpoint.pt'} was written before checkpoints carried a digest of their " \
                   "metadata: the training config it records cannot be verified"  # fmt: skip
    assert "metadata_sha256" in torch.load(run / "checkpoint.pt", weights_only=True)  # and has one now


def test_allow_config_change_resumes_a_run_without_a_recorded_config_and_records_that(tmp_path):
    from bad_input_table import edited_checkpoint

    run = copy("run", tmp_path)
    edited_checkpoint(run / "checkpoint.pt", run / "checkpoint.pt", lambda raw: raw["metadata"].pop("train_config"))
    cfg = TrainConfig(**{**TINY_TRAIN, "epochs": 2})
    train(cfg, run, resume=True, device="cpu", progress=False, allow_config_change=True)
    metadata = read_checkpoint(run)["metadata"]
    unknown = {"train_config": ["<unrecorded>", "<this config>"]}
    assert metadata["config_changes"] == [{"from_epoch": 2, "changes": unknown}]
    assert metadata["train_config"]["epochs"] == 2


# 5. resume


def test_resume_into_an_existing_folder_without_a_checkpoint_starts_with_a_note(tmp_path):
    (tmp_path / "run").mkdir()  # as training/run_queue.sh makes it, for its train.log
    line = cli("train", "--config", tiny_yaml(tmp_path), "--out", tmp_path / "run", "--resume", "--device", "cpu",
               "--max-steps", "1", ok=True, stream="stderr")  # fmt: skip
    assert line == f"note: {tmp_path / 'run' / 'checkpoint.pt'} does not exist yet: --resume starts a new run there"
    assert read_checkpoint(tmp_path / "run")["epoch"] == 1


# 7. divergence


def test_an_exploding_loss_stops_training_with_exit_code_2_and_keeps_the_checkpoint(tmp_path, monkeypatch, capsys):
    import searchmorph_lite.train as tr
    from searchmorph_lite.cli import main

    run = copy("run", tmp_path)
    before = (run / "checkpoint.pt").read_bytes()
    real = tr.registration_loss_all
    monkeypatch.setattr(tr, "registration_loss_all", lambda *a: real(*a) * 1e9)  # finite, but 10^9 times epoch 1's
    code = main(["train", "--config", str(tiny_yaml(tmp_path, epochs=2)), "--out", str(run), "--resume", "--device",
                 "cpu"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and (run / "checkpoint.pt").read_bytes() == before
    assert "training diverged: the loss is" in err and "over 10^6 times the first epoch's" in err
    assert f"at epoch 2, step 1; {run / 'checkpoint.pt'} keeps epoch 1, the last good one" in err


def test_a_failed_run_removes_only_the_folders_it_made(tmp_path):
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "train.log").write_text("log")
    for out in (tmp_path / "a" / "b", tmp_path / "kept"):
        with pytest.raises(ValueError, match="training diverged"):
            train(TrainConfig(**{**TINY_TRAIN, "lr": 1e30}), out, device="cpu", progress=False)
    assert sorted(os.listdir(tmp_path)) == ["kept"] and os.listdir(tmp_path / "kept") == ["train.log"]


# 11. full disks


def test_a_write_that_fails_on_a_nearly_full_disk_says_the_disk_is_full(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from searchmorph_lite import _files

    (tmp_path / "x.pt").write_text("old")

    def torch_writer(tmp):  # torch's zip writer reports a full disk so
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 1472 vs 1366")

    monkeypatch.setattr(_files.os, "statvfs", lambda p: SimpleNamespace(f_bavail=3, f_frsize=4096))
    with pytest.raises(_files.DiskFullError, match=f"cannot write {tmp_path / 'x.pt'}: the disk is full"):
        _files.atomic_write(tmp_path / "x.pt", torch_writer)
    assert os.listdir(tmp_path) == ["x.pt"] and (tmp_path / "x.pt").read_text() == "old"


# 13. memory


def test_a_memory_error_is_one_line_with_exit_code_2(monkeypatch, capsys):
    import searchmorph_lite.cli as c

    def allocate(args):
        raise MemoryError()

    monkeypatch.setattr(c, "cmd_evaluate", allocate)
    code = c.main(["evaluate", "--checkpoint", "x", "--dataset", "brain2d"])
    err = capsys.readouterr().err
    assert code == 2 and err == "error: out of memory: MemoryError; use a smaller image or batch\n"


# 15. wording


def test_evaluate_blames_the_model_when_it_returns_nan_displacements():
    from searchmorph_lite.data import load_dataset
    from searchmorph_lite.train import evaluate

    model = SearchMorph(SearchMorphConfig(**SMALL)).eval()
    with torch.no_grad():
        for p in model.iterator.flow_head[-1].parameters():
            p.fill_(3e38)  # finite weights whose field overflows to inf
    with pytest.raises(ValueError, match="the model returned NaN or inf displacements: its weights are broken"):
        evaluate(model, load_dataset("brain2d", "val", num_pairs=1, image_size=(32, 32)))
