"""The bad-input and fault sweeps of issues 10 and 24, as data: every case, how it is done, and the line it gets.

``tests/test_reliability.py`` runs every case of ``CASES`` and checks its line against ``expected`` (``{tmp}``
stands for the case's folder, ``...`` for a part that varies, e.g. torch's own wording); it also checks that
``book/bad_input.md`` is what :func:`render` makes of them. After changing a case, rewrite the page with
``python tests/bad_input_table.py``.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import nibabel as nib
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from conftest import disc_pair  # noqa: E402

PAGE = Path(__file__).parents[1] / "book" / "bad_input.md"
ITEMS = {
    1: "Damaged checkpoint",
    2: "Resume with a changed config",
    3: "Tracebacks",
    4: "Output paths",
    5: "Unsafe advice",
    6: "Nonsense values",
    7: "Leftover temporaries",
    8: "Wording",
    9: "Images on different grids",
    10: "Two runs in one folder; a full disk",
    11: "Diverged training",
}


@dataclass(frozen=True)
class Case:
    """One attack: ``run(folder)`` does it and returns the line the user sees (stderr, or stdout when it works)."""

    item: int
    what: str
    run: Callable[[Path], str]
    expected: str


# ---------------------------------------------------------------------------------------------------- helpers


def cli(*argv: str, ok: bool = False, line: int = -1, stream: str = "stdout") -> str:
    """The one line ``python -m searchmorph_lite *argv`` prints on stderr; with ``ok``, line ``line`` of its
    ``stream`` ("stdout" or "stderr").

    Asserts the exit code (non-zero and not 1, the code of a bug, unless ``ok``), one stderr line, no traceback;
    with ``ok``, that no stderr line repeats (a note printed three times must not pass because one line is kept).
    """
    from searchmorph_lite.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit_:  # argparse
            code = exit_.code
    text = err.getvalue()
    assert "Traceback" not in text, text
    if ok:
        assert code == 0, text
        notes = [x for x in text.splitlines() if x.strip()]
        assert len(notes) == len(set(notes)), f"a line repeats on stderr:\n{text}"
        return (out if stream == "stdout" else err).getvalue().strip().splitlines()[line]
    lines = [x for x in text.splitlines() if x.strip()]
    assert code not in (0, 1) and len(lines) == 1, (code, text)
    return lines[0]


def raises(call: Callable[[], object], kind: type = ValueError) -> str:
    """The message of the ``kind`` exception ``call()`` raises (AssertionError when it raises nothing)."""
    try:
        call()
    except kind as err:
        return f"{type(err).__name__}: {err}"
    raise AssertionError(f"{call} raised nothing")


SMALL = dict(widths=[8, 16, 16, 16], hidden_dim=16, motion_dim=16, context_dim=16, radius=2)
TINY_TRAIN = dict(
    dataset="brain2d",
    dataset_options={"num_pairs": 2, "image_size": [32, 32]},
    model="VoxelMorph",
    model_config={"enc_widths": [4, 8], "dec_widths": [8, 8, 4]},
    epochs=1,
    batch_size=2,
    val_pairs=0,
)
_SHARED: dict[str, Path] = {}


def shared(name: str) -> Path:
    """A file or folder built once per process and copied by the cases (never modified): see the code."""
    if not _SHARED:
        root = Path(tempfile.mkdtemp(prefix="bad_input_"))
        from searchmorph_lite import SearchMorph, SearchMorphConfig, VoxelMorph, save_checkpoint
        from searchmorph_lite.train import TrainConfig, train

        torch.manual_seed(0)
        model = SearchMorph(SearchMorphConfig(**SMALL))
        for p in model.iterator.flow_head[-1].parameters():
            torch.nn.init.normal_(p, std=0.05)
        save_checkpoint(root / "ck.pt", model.eval())
        save_checkpoint(root / "vm.pt", VoxelMorph())
        moving, fixed, *_ = disc_pair()
        nifti(root / "m.nii.gz", moving[0, 0].numpy())
        nifti(root / "f.nii.gz", fixed[0, 0].numpy())
        train(TrainConfig(**TINY_TRAIN), root / "run", device="cpu", progress=False, max_steps=1)
        _SHARED.update({p.name: p for p in root.iterdir()})
    return _SHARED[name]


def copy(name: str, folder: Path, new_name: str | None = None) -> Path:
    """A copy of :func:`shared` ``name`` in ``folder``."""
    src, dst = shared(name), folder / (new_name or name)
    (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    return dst


def nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None, dtype=np.float32) -> Path:
    """``array`` saved as NIfTI at ``path`` (default affine: 1 mm voxels)."""
    nib.save(nib.Nifti1Image(np.asarray(array).astype(dtype), np.eye(4) if affine is None else affine), str(path))
    return path


def register_args(t: Path, **overrides: str) -> list[str]:
    """CLI arguments of a register of the shared pair with the shared SearchMorph checkpoint, into ``t``."""
    args = {
        "--moving": str(shared("m.nii.gz")),
        "--fixed": str(shared("f.nii.gz")),
        "--checkpoint": str(shared("ck.pt")),
        "--out": str(t / "w.nii.gz"),
        "--device": "cpu",
    }
    args.update(overrides)
    return ["register"] + [x for k, v in args.items() if v is not None for x in (k, v)]


def write_yaml(t: Path, text: str) -> Path:
    (t / "cfg.yaml").write_text(text)
    return t / "cfg.yaml"


def tiny_yaml(t: Path, **changes) -> Path:
    """The shared run's config with ``changes``, as YAML in ``t``."""
    import yaml

    return write_yaml(t, yaml.safe_dump({**TINY_TRAIN, **changes}))


def resume_args(t: Path, *extra: str, **changes) -> list[str]:
    """CLI arguments resuming a copy of the shared run with its config changed by ``changes``."""
    run = copy("run", t)
    return ["train", "--config", tiny_yaml(t, **changes), "--out", run, "--resume", "--device", "cpu", *extra]


def flip_weight_bytes(path: Path, count: int = 2000) -> None:
    """Invert ``count`` bytes inside the data of the largest tensor of the zip checkpoint at ``path``."""
    import struct
    import zipfile

    info = max(zipfile.ZipFile(path).infolist(), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len + 16
    for k in range(min(count, info.file_size - 16)):
        data[start + k] ^= 0xFF
    path.write_bytes(bytes(data))


def with_data_root(t: Path, call: Callable[[], object]) -> object:
    with mock.patch.dict(os.environ, {"SEARCHMORPH_DATA": str(t / "data")}):
        return call()


def warning_of(call: Callable[[], object]) -> str:
    """The one warning ``call()`` emits, as "warning: <message>"."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    assert len(caught) == 1, [str(w.message) for w in caught]
    return f"warning: {caught[0].message}"


# ---------------------------------------------------------------------------------------------------- the cases


def _damaged_shipped(t: Path) -> str:
    ck = copy_pretrained("brain2d", t)
    flip_weight_bytes(ck)
    return cli(*register_args(t, **{"--checkpoint": str(ck)}))


def copy_pretrained(name: str, t: Path) -> Path:
    from searchmorph_lite.pretrained import pretrained_path

    dst = t / f"{name}.pt"
    shutil.copy(pretrained_path(name), dst)
    return dst


def _weights_edited(t: Path) -> str:
    raw = torch.load(shared("ck.pt"), weights_only=True)
    key = next(k for k, v in raw["state_dict"].items() if v.numel() > 100)
    raw["state_dict"][key] = raw["state_dict"][key] + 0.5  # a valid zip with valid CRCs, but not what was saved
    torch.save(raw, t / "ck.pt")
    return cli(*register_args(t, **{"--checkpoint": str(t / "ck.pt")}))


def _truncated(t: Path) -> str:
    data = shared("ck.pt").read_bytes()
    (t / "ck.pt").write_bytes(data[: len(data) // 2])
    return cli(*register_args(t, **{"--checkpoint": str(t / "ck.pt")}))


def _empty_checkpoint(t: Path) -> str:
    (t / "ck.pt").write_bytes(b"")
    return cli(*register_args(t, **{"--checkpoint": str(t / "ck.pt")}))


def _allowed_lr_change(t: Path) -> str:
    from searchmorph_lite import read_checkpoint

    cli(*resume_args(t, "--allow-config-change", lr=0.01, epochs=2), ok=True)
    ckpt = read_checkpoint(t / "run" / "checkpoint.pt")
    lrs = sorted({g["lr"] for g in ckpt["optimizer"]["param_groups"]})
    return f"optimizer lr {lrs}; metadata config_changes {ckpt['metadata']['config_changes']}"


def _pretrained_as_resume(t: Path) -> str:
    (t / "run").mkdir()
    copy_pretrained("brain2d", t).rename(t / "run" / "checkpoint.pt")
    return cli("train", "--config", tiny_yaml(t), "--out", t / "run", "--resume", "--device", "cpu")


def _format_tag_only(t: Path) -> str:
    torch.save({"format": "searchmorph_lite.checkpoint/2"}, t / "ck.pt")
    return cli(*register_args(t, **{"--checkpoint": str(t / "ck.pt")}))


def _state_dict_of_strings(t: Path) -> str:
    torch.save({"format": "searchmorph_lite.checkpoint/2", "model": "SearchMorph", "config": {},
                "state_dict": {"encoder.w": "zeros"}}, t / "ck.pt")  # fmt: skip
    return cli(*register_args(t, **{"--checkpoint": str(t / "ck.pt")}))


def _bad_brain_cache(t: Path, **arrays) -> str:
    from searchmorph_lite.data import load_dataset
    from searchmorph_lite.data.brain2d import _CACHE_NAME, load_mni152_slab

    def go():
        good = load_mni152_slab()  # builds the cache in this data root
        path = t / "data" / "cache" / _CACHE_NAME
        np.savez(path, **{**good, **{k: v(good) for k, v in arrays.items()}})
        line = warning_of(lambda: load_dataset("brain2d", "val", num_pairs=1, image_size=(64, 64)))
        assert _slab_ok(path), "the cache was not rebuilt"
        return line

    return with_data_root(t, go)


def _slab_ok(path: Path) -> bool:
    from searchmorph_lite.data.brain2d import slab_problem

    with np.load(path) as z:
        return slab_problem(dict(z)) is None


def _bad_camus(t: Path, **changes) -> str:
    root = t / "data" / "camus"
    root.mkdir(parents=True)
    frames = np.zeros((6, 16, 16), np.uint8)
    arrays = dict(
        frames=frames,
        labels=np.zeros_like(frames),
        seq_start=np.array([0, 3]),
        seq_len=np.array([3, 3]),
        patients=np.array(["patient0001", "patient0002"]),
        views=np.array(["2CH", "2CH"]),
        es_frame=np.array([2, 2]),
    )
    np.savez(root / "test.npz", **{**arrays, **changes})
    return with_data_root(t, lambda: cli("evaluate", "--checkpoint", shared("vm.pt"), "--dataset", "camus"))


def _bad_lpba40(t: Path) -> str:
    root = t / "data" / "lpba40"
    root.mkdir(parents=True)
    np.savez(
        root / "test.npz",
        moving=np.zeros((2, 32, 32), np.float32),
        moving_labels=np.zeros((2, 16, 16), np.int16),  # labels of the wrong size
        subjects=np.array(["S35", "S36"]),
        fixed=np.zeros((32, 32), np.float32),
        fixed_labels=np.zeros((32, 32), np.int16),
        label_codes=np.array([0, 21]),
    )
    return with_data_root(t, lambda: cli("evaluate", "--checkpoint", shared("vm.pt"), "--dataset", "lpba40"))


def _hard_link_out(t: Path) -> str:
    fixed = copy("f.nii.gz", t)
    os.link(fixed, t / "w.nii.gz")
    return cli(*register_args(t, **{"--fixed": str(fixed)}))


def _out_under_a_file(t: Path) -> str:
    (t / "notes").write_text("x")
    return cli(*register_args(t, **{"--out": str(t / "notes" / "w.nii.gz")}))


def _malicious(t: Path) -> str:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {t / 'pwned'}",))

    torch.save({"format": "searchmorph_lite.checkpoint/2", "model": Evil()}, t / "evil.pt")
    line = cli(*register_args(t, **{"--checkpoint": str(t / "evil.pt")}))
    assert not (t / "pwned").exists()
    return line


def _object_npz(t: Path) -> str:
    root = t / "data" / "camus"
    root.mkdir(parents=True)
    np.savez(root / "test.npz", frames=np.array([{"x": 1}], dtype=object))
    return with_data_root(t, lambda: cli("evaluate", "--checkpoint", shared("vm.pt"), "--dataset", "camus"))


def _small_model():
    from searchmorph_lite import SearchMorph, SearchMorphConfig

    return SearchMorph(SearchMorphConfig(**SMALL)).eval()


def _nan_weights(t: Path) -> str:
    from searchmorph_lite import save_checkpoint

    model = _small_model()
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    save_checkpoint(t / "ck.pt", model)
    return cli(*register_args(t, **{"--checkpoint": str(t / "ck.pt")}))


def _nan_model(t: Path) -> str:
    from searchmorph_lite import register

    model = _small_model()
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    return raises(lambda: register(np.random.rand(32, 32), np.random.rand(32, 32), model))


def _vm_weights_in_sm(t: Path) -> str:
    vm_state = torch.load(shared("vm.pt"), weights_only=True)["state_dict"]
    line = _ck_with(t, lambda raw: raw.update(state_dict=vm_state))
    assert len(line) < 300
    return line


def _shadowing_folder(t: Path) -> str:
    (t / "brain2d").mkdir()
    cwd = os.getcwd()
    os.chdir(t)
    try:
        return cli(*register_args(t, **{"--checkpoint": "brain2d"}), ok=True, stream="stderr")
    finally:
        os.chdir(cwd)


def _grid_case(t: Path, shape=(64, 64), spacing=(1.0, 1.0), *extra: str) -> list[str]:
    rng = np.random.default_rng(0)
    moving = nifti(t / "m.nii.gz", rng.random(shape), np.diag([*spacing, 1.0, 1.0]))
    return register_args(t, **{"--moving": str(moving)}) + list(extra)


def edited_checkpoint(src: Path, dst: Path, edit: Callable[[dict], object], redigest: bool = True) -> Path:
    """``src`` loaded raw, changed by ``edit(raw)`` and saved at ``dst``; with ``redigest`` its digests are made
    to fit again (a file written that way, not one damaged since)."""
    from searchmorph_lite.checkpoint import metadata_digest, state_digest

    raw = torch.load(src, weights_only=True)
    edit(raw)
    if redigest:
        raw["sha256"] = state_digest(raw["model"], raw["config"], raw["state_dict"])
        raw["metadata_sha256"] = metadata_digest(raw)
    torch.save(raw, dst)
    return dst


def _ck_with(t: Path, edit: Callable[[dict], object], redigest: bool = True) -> str:
    """The one line register gets with a copy of the shared checkpoint changed by ``edit``."""
    ck = edited_checkpoint(shared("ck.pt"), t / "ck.pt", edit, redigest)
    return cli(*register_args(t, **{"--checkpoint": str(ck)}))


def _run_with(t: Path, edit: Callable[[dict], object], *extra: str, redigest: bool = True, **changes) -> str:
    """The one line ``train --resume`` gets on a copy of the shared run whose checkpoint ``edit`` changed."""
    args = resume_args(t, *extra, **changes)
    edited_checkpoint(t / "run" / "checkpoint.pt", t / "run" / "checkpoint.pt", edit, redigest)
    return cli(*args)


def _edit_and_drop_digest(raw: dict) -> None:
    raw["state_dict"]["encoder.trunk.down.0.0.weight"] += 0.5
    raw.pop("sha256")


def _legacy_file(t: Path) -> str:
    raw = torch.load(Path(__file__).parent / "data" / "searchmorph_v0_1_tiny.pt", weights_only=True)
    torch.save(raw, t / "old.pt", _use_new_zipfile_serialization=False)
    return cli(*register_args(t, **{"--checkpoint": str(t / "old.pt")}), ok=True, line=0, stream="stderr")


def _locked_run(t: Path) -> str:
    from searchmorph_lite._files import exclusive_lock

    (t / "run").mkdir()
    with exclusive_lock(t / "run" / ".lock", f"run folder {t / 'run'}"):  # as a running train holds it
        return cli("train", "--config", tiny_yaml(t), "--out", t / "run", "--device", "cpu")


def disk_full(*args, **kwargs):
    """A write that fails as on a full disk."""
    import errno

    raise OSError(errno.ENOSPC, "No space left on device")


def _disk_full_checkpoint(t: Path) -> str:
    run = copy("run", t)
    before = (run / "checkpoint.pt").read_bytes()
    with mock.patch("pathlib.Path.write_bytes", disk_full):  # the checkpoint's bytes are written with it
        line = cli("train", "--config", tiny_yaml(t, epochs=2), "--out", run, "--resume", "--device", "cpu")
    assert (run / "checkpoint.pt").read_bytes() == before and os.listdir(run) == ["checkpoint.pt"]
    return line


def _disk_full_out(t: Path) -> str:
    with mock.patch("nibabel.save", disk_full):
        return cli(*register_args(t))


def _loop(t: Path, name: str) -> str:
    (t / name).symlink_to(t / name)
    return str(t / name)


def _fifo(t: Path) -> str:
    os.mkfifo(t / "pipe.nii.gz")
    return str(t / "pipe.nii.gz")


def _unreadable(t: Path) -> str:
    copy("ck.pt", t)
    real_open = open

    def refuse(file, *args, **kwargs):
        if str(file) == str(t / "ck.pt"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    with mock.patch("builtins.open", refuse):
        return cli(*register_args(t, **{"--checkpoint": str(t / "ck.pt")}))


def _out_of_memory(t: Path) -> str:
    def fail(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you "
                           "tried to allocate 274877906944 bytes. Error code 12 (Cannot allocate memory)")  # fmt: skip

    with mock.patch("searchmorph_lite.train._train_loop", fail):
        return cli("train", "--config", tiny_yaml(t), "--out", t / "r", "--device", "cpu")


def _nibabel_log(t: Path) -> str:
    img = nib.Nifti1Image(np.random.default_rng(0).random((64, 64)).astype(np.float32), np.eye(4))
    img.header["pixdim"][1] = 0  # nibabel logs that it sets it to 1
    nib.save(img, t / "m.nii")
    return cli(*register_args(t, **{"--moving": str(t / "m.nii")}), ok=True, line=0, stream="stderr")


def _explicit_default_seed(t: Path) -> str:
    options = {**TINY_TRAIN["dataset_options"], "seed": 0}  # brain2d's default, now given
    return cli(*resume_args(t, epochs=2, dataset_options=options), ok=True)


CASES = [
    # 1. damaged checkpoints
    Case(1, "a copy of the shipped brain2d.pt with 2,000 bytes of a weight tensor inverted", _damaged_shipped,
         "error: {tmp}/brain2d.pt is damaged: its bytes changed after it was written (data/40 fails its CRC-32 "
         "check); restore it from a backup or download/train it again"),
    Case(1, "a checkpoint whose weights were edited and re-saved with torch.save (valid zip, wrong SHA-256)",
         _weights_edited,
         "error: {tmp}/ck.pt is damaged: its weights do not match the SHA-256 digest stored when it was saved; "
         "restore it from a backup or download/train it again"),
    Case(1, "a checkpoint cut to half its size", _truncated,
         "error: cannot read checkpoint {tmp}/ck.pt: not a torch checkpoint, or damaged (...)"),
    Case(1, "an empty checkpoint file", _empty_checkpoint,
         "error: cannot read checkpoint {tmp}/ck.pt: the file is empty"),
    Case(1, "a checkpoint whose weights were edited and its sha256 entry deleted",
         lambda t: _ck_with(t, _edit_and_drop_digest, redigest=False),
         "error: {tmp}/ck.pt has no 'sha256' entry: every searchmorph_lite.checkpoint/2 file stores the digest of its "
         "weights, so its weights cannot be verified; restore it from a backup or download/train it again"),
    Case(1, "a legacy (non-zip) format-1 checkpoint: it runs, with one warning", _legacy_file,
         "warning: {tmp}/old.pt is a legacy (non-zip) checkpoint without a digest: its weights cannot be verified"),
    Case(1, "a checkpoint without read permission", _unreadable,
         "error: cannot read checkpoint {tmp}/ck.pt: Permission denied"),
    Case(1, "a FIFO (named pipe) given as --checkpoint", lambda t: cli(*register_args(t, **{
        "--checkpoint": _fifo(t)})),
         "error: checkpoint '{tmp}/pipe.nii.gz' is a FIFO (named pipe), not a file"),
    Case(1, "/dev/null given as --checkpoint", lambda t: cli(*register_args(t, **{"--checkpoint": "/dev/null"})),
         "error: checkpoint '/dev/null' is a device, not a file"),
    # 2. resume with another config
    Case(2, "train --resume with another lr", lambda t: cli(*resume_args(t, lr=0.01, epochs=2)),
         "error: {tmp}/run/checkpoint.pt was trained with another config: lr: 0.001 in the checkpoint, 0.01 now. "
         "Resume with the checkpoint's values, or pass --allow-config-change (allow_config_change=True) to run the "
         "new ones from epoch 2 on"),
    Case(2, "train --resume with another image size and loss",
         lambda t: cli(*resume_args(t, similarity="mse", dataset_options={"num_pairs": 2, "image_size": [48, 48]})),
         "error: {tmp}/run/checkpoint.pt was trained with another config: dataset_options.image_size: [32, 32] in "
         "the checkpoint, [48, 48] now; similarity: 'lncc' in the checkpoint, 'mse' now. Resume with the "
         "checkpoint's values, or pass --allow-config-change (allow_config_change=True) to run the new ones from "
         "epoch 2 on"),
    Case(2, "train --resume with another dataset", lambda t: cli(*resume_args(t, dataset="echo2d-synthetic",
                                                                              dataset_options={"num_pairs": 2})),
         "error: {tmp}/run/checkpoint.pt was trained with another config: dataset: 'brain2d' in the checkpoint, "
         "'echo2d-synthetic' now; dataset_options.image_size: [32, 32] in the checkpoint, '<unset>' now. Resume "
         "with the checkpoint's values, or pass --allow-config-change (allow_config_change=True) to run the new "
         "ones from epoch 2 on"),
    Case(2, "train --resume --allow-config-change with another lr (it runs: the new lr, recorded)",
         _allowed_lr_change,
         "optimizer lr [0.01]; metadata config_changes [{'from_epoch': 2, 'changes': {'lr': [0.001, 0.01]}}]"),
    Case(2, "train --resume --allow-config-change onto another model",
         lambda t: cli(*resume_args(t, "--allow-config-change", model="SearchMorph", model_config={})),
         "error: {tmp}/run/checkpoint.pt was trained with another model/config (model: 'VoxelMorph' in the "
         "checkpoint, 'SearchMorph' now); its weights belong to that model, so train into a new --out folder"),
    Case(2, "train --resume with fewer epochs than already run",
         lambda t: cli(*_fewer_epochs(t)),
         "error: {tmp}/run/checkpoint.pt has already run 2 epochs but the config asks for 1; raise epochs "
         "(--epochs) to continue it"),
    Case(2, "train --resume of a checkpoint that records no training config (metadata train_config removed)",
         lambda t: _run_with(t, lambda raw: raw["metadata"].pop("train_config"), lr=0.01, epochs=2),
         "error: {tmp}/run/checkpoint.pt records no training config (metadata 'train_config'), so this resume cannot "
         "be checked against the config it ran with; pass --allow-config-change (allow_config_change=True) to "
         "continue it with this config from epoch 2 on (its metadata records that the earlier config is unknown)"),
    Case(2, "train --resume of a checkpoint whose recorded train_config was edited (digest not updated)",
         lambda t: _run_with(t, lambda raw: raw["metadata"]["train_config"].update(lr=0.01), redigest=False,
                             lr=0.01, epochs=2),
         "error: {tmp}/run/checkpoint.pt is damaged: its metadata, epoch or history do not match the SHA-256 digest "
         "stored when it was saved; restore it from a backup or download/train it again"),
    Case(2, "train --resume into a folder that does not exist",
         lambda t: cli("train", "--config", tiny_yaml(t), "--out", t / "nope", "--resume", "--device", "cpu"),
         "error: nothing to resume: the run folder '{tmp}/nope' does not exist (check the path; leave out --resume "
         "(resume=False) to start a new run there)"),
    Case(2, "train --resume with the dataset's default seed now given explicitly (it runs)",
         _explicit_default_seed, '{"epoch": 2, ...}'),
    Case(2, "train without --resume into a folder that holds a run",
         lambda t: cli("train", "--config", tiny_yaml(t), "--out", copy("run", t), "--device", "cpu"),
         "error: {tmp}/run/checkpoint.pt already exists: continue that run with --resume (resume=True), or train "
         "into another --out folder (training never overwrites a run)"),
    # 3. tracebacks
    Case(3, "--device cuda with a CPU-only torch", lambda t: _cpu_torch(lambda: cli(*register_args(
        t, **{"--device": "cuda"}))),
         "error: device 'cuda': this torch build (...) has no CUDA support; use cpu, or install a CUDA build of "
         "torch"),
    Case(3, "--device gpu0", lambda t: cli(*register_args(t, **{"--device": "gpu0"})),
         "error: unknown device 'gpu0': use cpu, cuda, cuda:N or mps (or leave it out: cuda when present, else cpu)"),
    Case(3, "a malformed YAML config", lambda t: cli("train", "--config", write_yaml(t, "epochs: [3\nlr: 1\n"),
                                                      "--out", t / "run"),
         "error: {tmp}/cfg.yaml is not valid YAML at line 2, column 3: expected ',' or ']', but got ':'"),
    Case(3, "epochs: \"3\" in the config", lambda t: cli("train", "--config", tiny_yaml(t, epochs="3"),
                                                          "--out", t / "run"),
         "error: {tmp}/cfg.yaml: TrainConfig.epochs must be an integer, got '3'"),
    Case(3, "lr: fast in the config", lambda t: cli("train", "--config", tiny_yaml(t, lr="fast"), "--out", t / "r"),
         "error: {tmp}/cfg.yaml: TrainConfig.lr must be a finite number, got 'fast'"),
    Case(3, "a model_config value of the wrong type", lambda t: cli(
        "train", "--config", tiny_yaml(t, model="SearchMorph", model_config={"radius": "3"}), "--out", t / "r"),
         "error: {tmp}/cfg.yaml: SearchMorph config: radius must be an integer, got '3'"),
    Case(3, "a key given twice in the YAML config", lambda t: cli(
        "train", "--config", write_yaml(t, "lr: 0.1\nlr: 0.001\n"), "--out", t / "r"),
         "error: {tmp}/cfg.yaml is not valid YAML at line 2, column 1: key 'lr' is given twice"),
    Case(3, "a pretrained .pt given to train --resume", _pretrained_as_resume,
         "error: {tmp}/run/checkpoint.pt is not a training checkpoint (it has no 'optimizer': a pretrained or "
         "exported model?); --resume continues only a run written by train, so train into a new --out folder"),
    Case(3, "a checkpoint holding only the format tag", _format_tag_only,
         "error: {tmp}/ck.pt is an incomplete searchmorph_lite checkpoint: it has no 'model' entry"),
    Case(3, "a checkpoint whose state_dict holds a string", _state_dict_of_strings,
         "error: {tmp}/ck.pt: state_dict entry 'encoder.w' is a str, not a tensor"),
    Case(3, "a brain2d cache whose labels have the wrong size (rebuilt)",
         lambda t: _bad_brain_cache(t, labels=lambda g: g["labels"][:, :10, :10]),
         "warning: rebuilding the data cache {tmp}/data/cache/brain2d_mni152_v1.npz: labels has shape (19, 10, 10), "
         "expected (19, 192, 160)"),
    Case(3, "a brain2d cache that lacks slice offsets (was: error: -8)",
         lambda t: _bad_brain_cache(t, offsets=lambda g: g["offsets"] + 100),
         "warning: rebuilding the data cache {tmp}/data/cache/brain2d_mni152_v1.npz: slice offsets [-9, -8, -7, -6, "
         "-5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9] are missing"),
    Case(3, "a prepared camus split whose sequences run past its frames (was: IndexError)",
         lambda t: _bad_camus(t, seq_start=np.array([0, 5])),
         "error: {tmp}/data/camus/test.npz is not a prepared camus split: sequences run outside the 6 stored "
         "frames; prepare it again with: python data_scripts/prepare_camus.py --src /path/to/CAMUS_public --out "
         "{tmp}/data"),
    Case(3, "a prepared lpba40 split whose labels have the wrong size", _bad_lpba40,
         "error: {tmp}/data/lpba40/test.npz is not a prepared lpba40 split: moving_labels has shape (2, 16, 16), "
         "expected (2, 32, 32); prepare it again with: python data_scripts/prepare_lpba40.py --src /path/to/LPBA40 "
         "--out {tmp}/data"),
    Case(3, "a config file that is a folder", lambda t: cli("train", "--config", t, "--out", t / "r"),
         "error: config {tmp} is a folder, not a .yaml or .json file"),
    Case(3, "a dataset option out of range", lambda t: cli("train", "--config", tiny_yaml(
        t, dataset_options={"num_pairs": 0}), "--out", t / "r", "--device", "cpu"),
         "error: brain2d train split: num_pairs must be an integer >= 1, got 0"),
    Case(3, "a 3D model config on 2D data", lambda t: cli("train", "--config", tiny_yaml(
        t, model_config={"ndim": 3}), "--out", t / "r", "--device", "cpu"),
         "error: a 3D VoxelMorph (model_config.ndim) cannot train on brain2d, whose images are 2D"),
    Case(3, "a .npz given as --checkpoint", lambda t: np.savez(t / "x.npz", a=np.zeros(3)) or cli(
        *register_args(t, **{"--checkpoint": str(t / "x.npz")})),
         "error: cannot read checkpoint {tmp}/x.npz: a zip archive, but not one torch.save wrote"),
    Case(3, "a non-integer --iterations", lambda t: cli(*register_args(t), "--iterations", "many"),
         "error: argument --iterations: invalid int value: 'many' (see python -m searchmorph_lite register --help)"),
    # 4. outputs
    Case(4, "register --out x --flow x", lambda t: cli(*register_args(t, **{"--flow": str(t / "w.nii.gz")})),
         "error: --out and --flow are the same file ({tmp}/w.nii.gz): one would overwrite the other"),
    Case(4, "register --out equal to --moving", lambda t: cli(*register_args(
        t, **{"--moving": str(copy("m.nii.gz", t)), "--out": str(t / "m.nii.gz")})),
         "error: --out {tmp}/m.nii.gz is the --moving input: writing it would destroy the input"),
    Case(4, "register --out a hard link to --fixed", _hard_link_out,
         "error: --out {tmp}/w.nii.gz is the --fixed input: writing it would destroy the input"),
    Case(4, "register --out a folder", lambda t: cli(*register_args(t, **{"--out": str(t)})),
         "error: --out {tmp} is a folder; give a file name such as {tmp}/out.nii.gz"),
    Case(4, "register --out ''", lambda t: cli(*register_args(t, **{"--out": ""})),
         "error: --out is an empty path; give a file name"),
    Case(4, "register --out with another extension", lambda t: cli(*register_args(t, **{"--out": str(t / "w.png")})),
         "error: --out {tmp}/w.png must end in .nii.gz or .nii"),
    Case(4, "register --out inside a file", _out_under_a_file,
         "error: --out {tmp}/notes/w.nii.gz: {tmp}/notes is a file, not a folder"),
    Case(4, "evaluate --out a folder", lambda t: cli("evaluate", "--checkpoint", shared("vm.pt"), "--dataset",
                                                      "brain2d", "--out", t),
         "error: --out {tmp} is a folder; give a file name such as {tmp}/out.json"),
    Case(4, "register --moving a symbolic link loop", lambda t: cli(*register_args(t, **{
        "--moving": _loop(t, "m.nii.gz")})),
         "error: --moving '{tmp}/m.nii.gz' is a symbolic link loop (it leads back to itself)"),
    Case(4, "register --out a symbolic link loop", lambda t: cli(*register_args(t, **{"--out": _loop(t, "w.nii.gz")})),
         "error: --out '{tmp}/w.nii.gz' is a symbolic link loop (it leads back to itself)"),
    Case(4, "register --out inside a folder that is a symbolic link loop", lambda t: cli(*register_args(t, **{
        "--out": str(Path(_loop(t, "loop")) / "w.nii.gz")})),
         "error: --out '{tmp}/loop/w.nii.gz' is inside {tmp}/loop, a symbolic link loop"),
    Case(4, "register --moving a FIFO (named pipe)", lambda t: cli(*register_args(t, **{"--moving": _fifo(t)})),
         "error: --moving '{tmp}/pipe.nii.gz' is a FIFO (named pipe), not a file"),
    Case(4, "register --fixed /dev/null", lambda t: cli(*register_args(t, **{"--fixed": "/dev/null"})),
         "error: --fixed '/dev/null' is a device, not a file"),
    Case(4, "train --out a file", lambda t: cli("train", "--config", tiny_yaml(t), "--out", t / "cfg.yaml"),
         "error: run folder {tmp}/cfg.yaml is a file; training writes a folder (checkpoint.pt inside)"),
    # 5. unsafe advice
    Case(5, "a malicious checkpoint (its pickle calls os.system)", _malicious,
         "error: refused to load {tmp}/evil.pt: it refers to Python code (posix.system) that a safe load does not "
         "run, so it is not a searchmorph_lite checkpoint"),
    Case(5, "a junk checkpoint", lambda t: (t / "ck.pt").write_bytes(b"not a checkpoint") and cli(
        *register_args(t, **{"--checkpoint": str(t / "ck.pt")})),
         "error: cannot read checkpoint {tmp}/ck.pt: not a torch checkpoint, or damaged (UnpicklingError: "
         "Unsupported operand 110)"),
    Case(5, "a prepared split (.npz) holding Python objects", _object_npz,
         "error: cannot read {tmp}/data/camus/test.npz: it holds Python object arrays, which are never loaded; "
         "prepare it again with: python data_scripts/prepare_camus.py --src /path/to/CAMUS_public --out {tmp}/data"),
    # 6. nonsense
    Case(6, "a complex-valued NIfTI", lambda t: cli(*register_args(t, **{"--moving": str(nifti(
        t / "c.nii.gz", np.ones((64, 64)) * (1 + 1j), dtype=np.complex64))})),
         "error: --moving {tmp}/c.nii.gz is complex-valued (complex64); register a real image, e.g. its magnitude"),
    Case(6, "register() of a complex numpy array", lambda t: raises(lambda: _register(np.ones((32, 32)) * 1j)),
         "ValueError: moving is complex-valued (complex128); pass a real image, e.g. np.abs(moving)"),
    Case(6, "register() of a complex tensor", lambda t: raises(
        lambda: _register(torch.ones(32, 32, dtype=torch.complex64))),
         "ValueError: moving is complex-valued (torch.complex64); pass a real image, e.g. moving.abs()"),
    Case(6, "register --iterations 100000", lambda t: cli(*register_args(t), "--iterations", "100000"),
         "error: --iterations=100000 is more than 1000: each iteration costs as much time as the first and the field "
         "stops changing after a few dozen (the paper uses 4 to 16)"),
    Case(6, "model(moving, fixed, iterations=0)", lambda t: raises(
        lambda: _small_model()(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32), iterations=0)),
         "ValueError: iterations must be >= 1, got 0"),
    Case(6, "train --max-steps 0", lambda t: cli("train", "--config", tiny_yaml(t), "--out", t / "r",
                                                  "--max-steps", "0"),
         "error: --max-steps must be an integer >= 1, got 0"),
    Case(6, "evaluate --max-pairs 0", lambda t: cli("evaluate", "--checkpoint", shared("vm.pt"), "--dataset",
                                                     "brain2d", "--max-pairs", "0"),
         "error: --max-pairs must be an integer >= 1, got 0"),
    Case(6, "negative widths in a YAML config's model_config", lambda t: cli("train", "--config", tiny_yaml(
        t, model_config={"enc_widths": [4, -8], "dec_widths": [8, 8, 4]}), "--out", t / "r", "--device", "cpu"),
         "error: {tmp}/cfg.yaml: VoxelMorph config: enc_widths must be a non-empty list of integers >= 1, got [4, -8]"),
    Case(6, "zero input channels in a checkpoint's config",
         lambda t: _ck_with(t, lambda raw: raw["config"].update(in_channels=0)),
         "error: {tmp}/ck.pt: SearchMorph config: in_channels must be an integer >= 1, got 0"),
    Case(6, "training runs out of memory (the allocator's \"can't allocate memory\")", _out_of_memory,
         "error: out of memory: [enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you "
         "tried to allocate 274877906944 bytes. Error code 12 (Cannot allocate memory); use a smaller image or "
         "batch"),
    Case(6, "seed 2**32 in the config", lambda t: cli("train", "--config", tiny_yaml(t, seed=2**32), "--out", t / "r"),
         "error: {tmp}/cfg.yaml: TrainConfig.seed must be at most 2**32 - 1 = 4294967295, got 4294967296"),
    Case(6, "evaluate --iterations with a VoxelMorph checkpoint", lambda t: cli(
        "evaluate", "--checkpoint", shared("vm.pt"), "--dataset", "brain2d", "--iterations", "8"),
         "error: --iterations is for models that iterate (SearchMorph); --checkpoint '...vm.pt' holds a VoxelMorph, "
         "which does not"),
    Case(6, "a JSON config with lr NaN", lambda t: (t / "c.json").write_text('{"lr": NaN}') and cli(
        "train", "--config", t / "c.json", "--out", t / "r"),
         "error: {tmp}/c.json: TrainConfig.lr must be a finite number, got nan"),
    # 8. wording
    Case(8, "a 1 x 1 NIfTI", lambda t: cli(*register_args(t, **{"--moving": str(nifti(t / "p.nii.gz",
                                                                                        np.ones((1, 1))))})),
         "error: --moving {tmp}/p.nii.gz is 1 x 1 voxels: too small to register (at least 2 along every axis)"),
    Case(8, "a 4D NIfTI given to a 2D model", lambda t: cli(*register_args(t, **{"--moving": str(nifti(
        t / "4d.nii.gz", np.ones((64, 64, 1, 3))))})),
         "error: --moving {tmp}/4d.nii.gz is not a 2D image (the model is 2D): shape (64, 64, 1, 3) has 3 axes longer "
         "than 1"),
    Case(8, "a NIfTI holding a NaN", lambda t: cli(*register_args(t, **{"--moving": str(nifti(
        t / "nan.nii.gz", np.where(np.eye(64) > 0, np.nan, 1.0)))})),
         "error: --moving {tmp}/nan.nii.gz contains NaN or inf values (64 of 4096 voxels)"),
    Case(8, "a missing --moving", lambda t: cli(*register_args(t, **{"--moving": str(t / "nope.nii.gz")})),
         "error: --moving {tmp}/nope.nii.gz: no such file"),
    Case(8, "a folder given as --moving", lambda t: cli(*register_args(t, **{"--moving": str(t)})),
         "error: --moving {tmp} is a folder, not a NIfTI file"),
    Case(8, "a training run folder given as --checkpoint (it works)",
         lambda t: cli(*register_args(t, **{"--checkpoint": str(shared("run"))}), ok=True),
         "wrote {tmp}/w.nii.gz"),
    Case(8, "a folder without checkpoint.pt given as --checkpoint",
         lambda t: cli(*register_args(t, **{"--checkpoint": str(t)})),
         "error: {tmp} is a folder without checkpoint.pt (a training run folder holds one after its first epoch)"),
    Case(8, "a ./brain2d folder in the working folder, --checkpoint brain2d (the pretrained model runs)",
         _shadowing_folder, "note: --checkpoint brain2d is the pretrained model; write ./brain2d for the local one"),
    Case(8, "VoxelMorph weights in a SearchMorph checkpoint", _vm_weights_in_sm,
         "error: {tmp}/ck.pt: its weights do not fit a SearchMorph: 56 tensor(s) missing and 24 unexpected (e.g. "
         "'encoder.trunk.down.0.0.weight'); they look like VoxelMorph weights"),
    Case(8, "register(a, b, None)", lambda t: raises(lambda: _register(np.ones((32, 32)), model=None)),
         "ValueError: model must be a searchmorph_lite registration model (SearchMorph, VoxelMorph, or "
         "load_pretrained/load_checkpoint), got NoneType"),
    Case(8, "an image with finite values of 1e308", lambda t: raises(lambda: _register(np.full((32, 32), 1e308))),
         "ValueError: moving has values too large to register (largest |value| 1e+308, float32 holds up to "
         "3.4e+38); rescale the image, e.g. divide it by its maximum"),
    Case(8, "a NIfTI with finite values of 1e308", lambda t: cli(*register_args(t, **{"--moving": str(nifti(
        t / "big.nii.gz", np.full((64, 64), 1e308), dtype=np.float64))})),
         "error: --moving {tmp}/big.nii.gz has values too large to register (largest |value| 1e+308, float32 holds "
         "up to 3.4e+38); rescale it"),
    Case(8, "a checkpoint with NaN weights", _nan_weights,
         "error: {tmp}/ck.pt: weight 'encoder.trunk.down.0.0.weight' holds NaN or inf values, so the checkpoint is "
         "unusable"),
    Case(8, "a checkpoint whose metadata refine_steps is 'abc'",
         lambda t: _ck_with(t, lambda raw: raw["metadata"].update(refine_steps="abc")),
         "error: {tmp}/ck.pt: metadata 'refine_steps' must be a whole number of steps from 0 to 10000, got 'abc'"),
    Case(8, "a checkpoint whose metadata refine_steps is -4 (was: \"got -4\" for --refine auto)",
         lambda t: _ck_with(t, lambda raw: raw["metadata"].update(refine_steps=-4)),
         "error: {tmp}/ck.pt: metadata 'refine_steps' must be a whole number of steps from 0 to 10000, got -4"),
    Case(8, "a checkpoint whose metadata is a list", lambda t: _ck_with(t, lambda raw: raw.update(metadata=[1])),
         "error: {tmp}/ck.pt: its 'metadata' entry is a list, not a mapping"),
    Case(8, "a checkpoint whose weights are huge (1e30, from a diverged training)",
         lambda t: _ck_with(t, lambda raw: raw["state_dict"]["encoder.trunk.down.0.0.weight"].fill_(1e30)),
         "error: {tmp}/ck.pt: weight 'encoder.trunk.down.0.0.weight' holds values up to 1e+30 (trained weights stay "
         "far below 1e+06): the training that wrote it diverged, so the checkpoint is unusable"),
    Case(8, "--checkpoint 'brain2d ' (a trailing space)", lambda t: cli(*register_args(t, **{
        "--checkpoint": "brain2d "})),
         "error: checkpoint not found: 'brain2d ' (pretrained names: ...)"),
    Case(8, "register --refine with a non-ASCII digit", lambda t: cli(*register_args(t), "--refine", "\u00b2"),
         "error: argument --refine: --refine takes a number of steps (0, 30, 100, ...) or auto, got '\u00b2' (see "
         "python -m searchmorph_lite register --help)"),
    Case(8, "a NIfTI whose header nibabel fixes (pixdim 0): nibabel's log line is one warning line (it runs)",
         _nibabel_log, "warning: nibabel: pixdim[1,2,3] should be non-zero; setting 0 dims to 1"),
    Case(8, "evaluate a 3D checkpoint on a 2D dataset", lambda t: _save_3d(t) and cli(
        "evaluate", "--checkpoint", t / "ck3.pt", "--dataset", "brain2d", "--max-pairs", "1", "--device", "cpu"),
         "error: the model is a 3D SearchMorph (config ndim=3) but the dataset's images are 2D; evaluate it on a 3D "
         "dataset"),
    Case(8, "a model built for 2-channel images given 1-channel images (the model does not fit)",
         lambda t: _two_channel_model(),
         "ValueError: this SearchMorph takes images of 2 channel(s) (its config's in_channels), but moving has 1: "
         "register such images with a model built or trained for them"),
    Case(8, "register() with a model whose weights are NaN", _nan_model,
         "ValueError: the model's weight 'encoder.trunk.down.0.0.weight' holds NaN or inf values: the model is "
         "broken"),
    # 9. grids
    Case(9, "images of different size (they register through their affines)",
         lambda t: cli(*_grid_case(t, (48, 40)), "--stage", "deform", ok=True), "wrote {tmp}/w.nii.gz"),
    Case(9, "images of the same size but another voxel spacing (they register through their affines)",
         lambda t: cli(*_grid_case(t, (64, 64), (2.0, 2.0)), "--stage", "deform", ok=True), "wrote {tmp}/w.nii.gz"),
    Case(9, "--resample (from before register worked in physical space)",
         lambda t: cli(*_grid_case(t, (48, 40), (1.0, 1.0), "--resample", "--stage", "deform"), ok=True,
                       stream="stderr", line=0),
         "note: --resample is no longer needed: register always maps the images through their affines"),
    Case(9, "--stage deform with images that do not overlap in physical space",
         lambda t: cli(*_far_case(t), "--stage", "deform"),
         "error: --moving {tmp}/m.nii.gz and --fixed ... do not overlap in physical space (0.0 % of the fixed "
         "foreground falls inside the moving image): check their headers (origins, orientation), or let the "
         "affine stage align them (--stage full)"),
    Case(9, "a singular affine on --fixed (refused before any work)", lambda t: cli(*_singular_case(t)),
         "error: --fixed {tmp}/f0.nii.gz has a singular affine in the world plane of axes xy (voxel axes [[1.0, "
         "0.0, 0.0], [0.0, 0.0, 0.0]]): its header does not say where the voxels are; fix its sform/qform"),
    Case(9, "--moving-labels without --labels-out", lambda t: cli(*register_args(t), "--moving-labels",
                                                                  str(shared("m.nii.gz"))),
         "error: --moving-labels needs --labels-out: the moving label map and where to write it go together"),
    Case(9, "--moving-labels that are not whole numbers", lambda t: cli(*register_args(t), "--moving-labels",
         str(shared("m.nii.gz")), "--labels-out", str(t / "l.nii.gz")),
         "error: --moving-labels ... holds non-integer values: a label map has one whole number per voxel"),
    Case(9, "--moving-labels on another grid than --moving", lambda t: cli(*_labels_elsewhere(t)),
         "error: --moving-labels {tmp}/l0.nii.gz does not lie on the moving image's grid ((32, 32) vs (64, 64) "
         "voxels, or other affines): a label map must be the moving image's own"),
    Case(9, "--iterations with a VoxelMorph checkpoint", lambda t: _voxelmorph_iterations(t),
         "error: iterations (--iterations) is 3, but a VoxelMorph has no iterations: it predicts its field in one "
         "pass; leave the option out"),
    Case(9, "--stage deform without --checkpoint", lambda t: cli(*register_args(t, **{"--checkpoint": None}),
                                                                 "--stage", "deform"),
         "error: --stage deform needs --checkpoint (a model); --stage affine runs without one"),
    # 10. concurrent runs, full disks
    Case(10, "train into a run folder another train is using", _locked_run,
         "error: run folder {tmp}/run is in use by pid ... on ... since ...; wait for it to end, or use another "
         "folder"),
    Case(10, "the disk fills up while train saves its checkpoint (the last one stays as it was)",
         _disk_full_checkpoint,
         "error: cannot write {tmp}/run/checkpoint.pt: the disk is full (no space left in {tmp}/run); the existing "
         "file is unchanged, free some space and run again"),
    Case(10, "the disk fills up while register writes --out", _disk_full_out,
         "error: cannot write {tmp}/w.nii.gz: the disk is full (no space left in {tmp}); nothing was written, free "
         "some space and run again"),
    # 11. divergence
    Case(11, "train with lr: 1e30 (diverges in its first step; no folder is left behind)", lambda t: _diverge(t),
         "error: training diverged: a weight reached ... after the optimizer step at epoch 1, step 1; no checkpoint "
         "was written (try a lower lr)"),
    Case(11, "train --resume --allow-config-change with lr: 1e30 (the checkpoint stays as it was)",
         lambda t: _diverge_resumed(t),
         "error: training diverged: a weight reached ... after the optimizer step at epoch 2, step 1; {tmp}/run/"
         "checkpoint.pt keeps epoch 1, the last good one (try a lower lr)"),
]  # fmt: skip


def _save_3d(t: Path) -> Path:
    from searchmorph_lite import SearchMorph, SearchMorphConfig, save_checkpoint

    config = SearchMorphConfig(ndim=3, widths=(4, 8, 8, 8), hidden_dim=8, motion_dim=8, context_dim=8, radius=1)
    save_checkpoint(t / "ck3.pt", SearchMorph(config))
    return t / "ck3.pt"


def _diverge(t: Path) -> str:
    line = cli("train", "--config", tiny_yaml(t, lr=1e30), "--out", t / "runs" / "new", "--device", "cpu")
    assert not (t / "runs").exists(), os.listdir(t / "runs")
    return line


def _diverge_resumed(t: Path) -> str:
    args = resume_args(t, "--allow-config-change", lr=1e30, epochs=2)
    before = (t / "run" / "checkpoint.pt").read_bytes()
    line = cli(*args)
    assert (t / "run" / "checkpoint.pt").read_bytes() == before
    return line


def _fewer_epochs(t: Path) -> list[str]:
    args = resume_args(t, epochs=2)
    cli(*args, ok=True)  # the run now has 2 epochs
    return ["train", "--config", tiny_yaml(t, epochs=1), "--out", t / "run", "--resume", "--device", "cpu"]


def _cpu_torch(call: Callable[[], str]) -> str:
    with mock.patch.object(torch.version, "cuda", None):
        return call()


def _register(moving, model: object = "small"):
    from searchmorph_lite import register

    model = _small_model() if model == "small" else model
    return register(moving, np.ones((32, 32)), model)


def _voxelmorph_iterations(t: Path) -> str:
    from searchmorph_lite import VoxelMorph, save_checkpoint

    save_checkpoint(t / "vm.pt", VoxelMorph())
    return cli(*register_args(t, **{"--checkpoint": str(t / "vm.pt")}), "--iterations", "3", "--stage", "deform")


def _two_channel_model() -> str:
    import torch

    from searchmorph_lite import SearchMorph, SearchMorphConfig

    model = SearchMorph(SearchMorphConfig(in_channels=2, widths=(4, 8, 8, 8)))
    return raises(lambda: model(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)))


def _far_case(t: Path) -> list[str]:
    affine = np.eye(4)
    affine[:3, 3] = 5000.0
    moving = nifti(t / "m.nii.gz", np.random.default_rng(0).random((64, 64)), affine)
    return register_args(t, **{"--moving": str(moving)})


def _singular_case(t: Path) -> list[str]:
    img = nib.Nifti1Image(np.random.default_rng(0).random((64, 64)).astype(np.float32), None)
    img.set_sform(np.diag([1.0, 0.0, 1.0, 1.0]), code=2)  # the qform cannot hold a singular affine: sform only
    nib.save(img, str(t / "f0.nii.gz"))
    return register_args(t, **{"--fixed": str(t / "f0.nii.gz")})


def _labels_elsewhere(t: Path) -> list[str]:
    labels = nifti(t / "l0.nii.gz", np.ones((32, 32)), np.eye(4))
    return [*register_args(t), "--moving-labels", str(labels), "--labels-out", str(t / "l.nii.gz")]


# ---------------------------------------------------------------------------------------------------- checking


def pattern(expected: str, tmp: Path) -> re.Pattern:
    """Regex of ``expected``: ``{tmp}`` is the case's folder, ``...`` any text."""
    parts = [re.escape(p).replace(re.escape("{tmp}"), re.escape(str(tmp))) for p in expected.split("...")]
    return re.compile(".*?".join(parts), re.DOTALL)


def render(cases: list[Case] = CASES) -> str:
    """The book page: one table per item of the issue, each case with the line it gets."""
    lines = [
        "# What bad input gets",
        "",
        "Every case of the reliability sweeps (issues 10 and 24) with the one line the user now sees. The command line",
        "prints errors as `error: ...` on stderr and exits with code 2, without a traceback and without writing",
        "anything; the Python API raises `ValueError` or `FileNotFoundError` with the same words. `<tmp>` is the",
        "folder of the case and `...` a part that varies. Each row is a test: `tests/test_reliability.py` runs it",
        "and checks the message, and that this page is up to date (`python tests/bad_input_table.py` rewrites it).",
        "",
        "No message ever advises an unsafe load: torch's \"re-run with weights_only=False\" and numpy's",
        "`allow_pickle` are never passed on, since following them would run the file's code.",
        "",
    ]
    for item, title in ITEMS.items():
        rows = [c for c in cases if c.item == item]
        lines += [f"## {item}. {title}", ""]
        if item == 7:
            lines += [
                "A kill during a write can leave the writer's temporary, `.<name>.<8 random characters>.tmp` (or",
                "`.tmp.nii`, `.tmp.nii.gz`), beside the target. The next write of the same target removes those",
                "that nobody has touched for 10 minutes; a live writer keeps its own fresh, so concurrent writes are",
                "safe. Nothing else is ever removed: not `.foo.tmp`, not `x.tmp`, not another target's temporaries,",
                "not a link or a folder of that name (`tests/test_reliability.py::test_stale_temporaries_*`).",
                "",
            ]
            continue
        lines += ["| Case | What the user sees |", "|---|---|"]
        for case in rows:
            message = case.expected.replace("{tmp}", "<tmp>").replace("|", "\\|")
            lines.append(f"| {case.what} | `{message}` |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    PAGE.write_text(render())
    print(f"wrote {PAGE}")
    if "--run" in sys.argv:  # print what every case gets now (to update ``expected``)
        for case in CASES:
            with tempfile.TemporaryDirectory() as folder:
                try:
                    line = case.run(Path(folder))
                except Exception as err:  # noqa: BLE001 - a report, not a test
                    line = f"FAILED {type(err).__name__}: {err}"
                ok = bool(pattern(case.expected, Path(folder)).fullmatch(line))
                print(f"{'ok ' if ok else 'BAD'} {case.what}\n    {line.replace(folder, '{tmp}')}")
