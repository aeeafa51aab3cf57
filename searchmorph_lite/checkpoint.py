"""Checkpoints: one file holding the model's kind, config, state dict and metadata, loadable with weights_only.

A file written by :func:`save_checkpoint` also holds "sha256", a digest of the model's kind, config and every
weight tensor; :func:`read_checkpoint` recomputes it and refuses a file whose weights changed since. Files
without it (the format-1 files shipped in ``pretrained/``) are still checked through the CRC-32 of every member
of the zip archive torch writes, which catches flipped bytes too.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from ._checks import check_device, one_line
from ._files import atomic_write, path_problem
from .refine import MAX_REFINE_STEPS
from .registry import MODELS, build_model, check_model_config  # noqa: F401 (its import path before registry.py)

FORMAT = "searchmorph_lite.checkpoint/2"
# Format 1 (searchmorph_lite 0.1) stored SearchMorph's trunk twice, under both encoders, and kept the hidden-state
# initialisation on the model; format 2 has one SharedEncoder and the iterator owns init_hidden. Older files
# load through upgrade_state_dict.
READABLE_FORMATS = ("searchmorph_lite.checkpoint/1", FORMAT)
_RENAMES_V1 = (  # (old prefix, new prefix) of SearchMorph keys, format 1 -> 2
    ("feature_encoder.trunk.", "encoder.trunk."),
    ("feature_encoder.head.", "encoder.feature_head.conv."),
    ("context_encoder.head.", "encoder.context_head.conv."),
    ("init_hidden.", "iterator.init_hidden."),
)
_RENAMES_VOXELMORPH_UNET = (("encoder.", "unet.down."), ("decoder.", "unet.up."))  # before its U-Net was UNet
# Weights beyond this size come only from a diverged training: trained models here stay below 100.
MAX_WEIGHT = 1e6


def state_digest(kind: str, config: dict, state: dict) -> str:
    """SHA-256 (64 hex digits) of a model's kind, config and every tensor of its state dict (name, dtype, shape,
    bytes): what :func:`save_checkpoint` stores and :func:`read_checkpoint` verifies."""
    h = hashlib.sha256(json.dumps({"model": kind, "config": config}, sort_keys=True).encode())
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"\n{key}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


# Entries of a checkpoint besides the model that :func:`metadata_digest` covers: what a resume trusts (the config
# it ran with, the epoch, the history). Files written before it had no "metadata_sha256"; they still load.
DIGESTED_EXTRAS = ("metadata", "epoch", "history")


def metadata_digest(ckpt: dict) -> str:
    """SHA-256 (64 hex digits) of a checkpoint's metadata, epoch and history (as JSON, NaN as null): what
    :func:`save_checkpoint` stores as "metadata_sha256" and :func:`read_checkpoint` verifies."""
    from ._files import json_safe

    entries = json_safe({k: ckpt.get(k) for k in DIGESTED_EXTRAS})
    return hashlib.sha256(json.dumps(entries, sort_keys=True, default=repr).encode()).hexdigest()


def atomic_save(obj: object, path: str | os.PathLike) -> None:
    """``torch.save`` through the library's atomic writer: a crash never leaves half a file."""
    buffer = io.BytesIO()  # serialised first: a full disk then fails in a plain write, which says so (OSError)
    torch.save(obj, buffer)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer.getbuffer()))


def save_checkpoint(path: str | os.PathLike, model: nn.Module, metadata: dict | None = None, **extra) -> None:
    """Write ``model`` (SearchMorph or VoxelMorph) with its config and ``metadata`` to ``path`` atomically.

    ``extra`` entries (e.g. optimizer state, epoch) are stored too; keep them to tensors, numbers, strings,
    lists and dicts so the file loads with ``torch.load(weights_only=True)``.
    """
    kind = type(model).__name__
    if kind not in MODELS:
        raise ValueError(f"can only save {sorted(MODELS)}, got {kind}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    config = model.config.to_dict()
    ckpt = {
        "format": FORMAT,
        "model": kind,
        "config": config,
        "state_dict": state,
        "metadata": dict(metadata or {}),
    }
    ckpt.update(extra)
    ckpt["sha256"] = state_digest(kind, config, state)
    ckpt["metadata_sha256"] = metadata_digest(ckpt)
    atomic_save(ckpt, path)


def checkpoint_file(path: str | os.PathLike) -> Path:
    """The checkpoint file ``path`` names: the file itself, or ``<folder>/checkpoint.pt`` for a training run folder.

    FileNotFoundError naming the path when there is none.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"a checkpoint path must be a str or Path, got {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        inner = path / "checkpoint.pt"
        if inner.is_file():
            return inner
        raise FileNotFoundError(
            f"{path} is a folder without checkpoint.pt (a training run folder holds one after its first epoch)"
        )
    problem = path_problem(path)
    if problem:
        raise ValueError(f"checkpoint {str(path)!r} {problem}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {str(path)!r}")
    return path


def _check_zip_crcs(path: Path) -> None:
    """Raise ValueError when a member of the zip archive torch wrote fails its CRC-32 (the file changed since).

    Members stored without a CRC (torch.serialization.set_crc32_options(False) writes 0) are not checked.
    """
    member = "the archive"
    try:
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("data.pkl") for name in archive.namelist()):
                raise ValueError(f"cannot read checkpoint {path}: a zip archive, but not one torch.save wrote")
            for info in archive.infolist():
                if info.CRC == 0:
                    continue
                member = info.filename.split("/", 1)[-1]
                with archive.open(info) as stream:  # reading to the end checks the CRC
                    while stream.read(1 << 20):
                        pass
    except (zipfile.BadZipFile, EOFError, OSError, NotImplementedError, RuntimeError) as err:
        what = f"{member} fails its CRC-32 check" if "CRC" in str(err) else f"{member}: {one_line(err, 120)}"
        raise ValueError(
            f"{path} is damaged: its bytes changed after it was written ({what}); restore it from a backup or "
            f"download/train it again"
        ) from None


def _torch_load(path: Path) -> object:
    """``torch.load(path, weights_only=True)`` with torch's messages turned into one safe line (ValueError)."""
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise for our user
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt and foreign files
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found:  # the safe unpickler met a reference to Python code: the file is foreign or hostile
            raise ValueError(
                f"refused to load {path}: it refers to Python code ({found.group(1)}) that a safe load does not "
                f"run, so it is not a searchmorph_lite checkpoint"
            ) from None
        reason = re.split(r"(?<=\.)\s", one_line(err, 300))[0]  # torch's first sentence; the rest is advice
        raise ValueError(
            f"cannot read checkpoint {path}: not a torch checkpoint, or damaged ({type(err).__name__}: {reason})"
        ) from None


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint dict at ``path``, loaded with weights_only=True, its state dict in today's key format.

    ``path`` may be a training run folder (its ``checkpoint.pt`` is read). Clear errors (ValueError,
    FileNotFoundError, naming the file) when it is not one, when it is incomplete, when its bytes or weights
    changed since it was written (zip CRC-32, and the SHA-256 digest that :func:`save_checkpoint` stores), or when
    its weights hold NaN or inf. The "format" entry says which format the file itself is in.
    """
    path = checkpoint_file(path)
    try:
        with open(path, "rb"):  # zipfile.is_zipfile and torch.load would hide a permission error
            pass
    except OSError as err:
        raise ValueError(f"cannot read checkpoint {path}: {err.strerror or one_line(err)}") from None
    if path.stat().st_size == 0:
        raise ValueError(f"cannot read checkpoint {path}: the file is empty")
    is_zip = zipfile.is_zipfile(path)
    if is_zip:
        _check_zip_crcs(path)
    ckpt = _torch_load(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("format"), str):
        raise ValueError(f"{path} is not a searchmorph_lite checkpoint (no '{FORMAT}' format tag)")
    if ckpt["format"] not in READABLE_FORMATS:
        if ckpt["format"].startswith("searchmorph_lite.checkpoint/"):
            raise ValueError(
                f"{path} has format {ckpt['format']!r}, newer than this searchmorph_lite reads; upgrade it"
            )
        raise ValueError(f"{path} is not a searchmorph_lite checkpoint (no '{FORMAT}' format tag)")
    for key, kind in (("model", str), ("config", dict), ("state_dict", dict)):
        if key not in ckpt:
            raise ValueError(f"{path} is an incomplete searchmorph_lite checkpoint: it has no {key!r} entry")
        if not isinstance(ckpt[key], kind):
            raise ValueError(f"{path}: its {key!r} entry is a {type(ckpt[key]).__name__}, not a {kind.__name__}")
    if ckpt["model"] not in MODELS:
        raise ValueError(f"{path} holds an unknown model {ckpt['model']!r} (known: {', '.join(sorted(MODELS))})")
    state = ckpt["state_dict"]
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{path}: state_dict entry {key!r} is a {type(value).__name__}, not a tensor")
    _verify_digests(ckpt, path, is_zip)
    check_metadata(ckpt, path)
    for key, value in state.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(f"{path}: weight {key!r} holds NaN or inf values, so the checkpoint is unusable")
        if value.is_floating_point() and value.numel() and float(value.abs().max()) > MAX_WEIGHT:
            raise ValueError(
                f"{path}: weight {key!r} holds values up to {float(value.abs().max()):.3g} (trained weights stay "
                f"far below {MAX_WEIGHT:.0g}): the training that wrote it diverged, so the checkpoint is unusable"
            )
    try:
        ckpt["state_dict"] = upgrade_state_dict(ckpt["model"], state, ckpt["format"])
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return ckpt


def _verify_digests(ckpt: dict, path: Path, is_zip: bool) -> None:
    """Raise ValueError when the weights or the metadata differ from the digests stored when ``ckpt`` was saved.

    A format-2 file always has its weights digest ("sha256"); a file without one is refused. Format-1 files have
    none: in a zip archive their bytes are still checked by the CRC-32 of every member, and a legacy (non-zip)
    format-1 file, which has neither, gets one warning that it cannot be verified. Files written before the
    metadata digest ("metadata_sha256") load as they are.
    """
    if ckpt["format"] != READABLE_FORMATS[0] and not isinstance(ckpt.get("sha256"), str):
        raise ValueError(
            f"{path} has no 'sha256' entry: every {ckpt['format']} file stores the digest of its weights, so its "
            f"weights cannot be verified; restore it from a backup or download/train it again"
        )
    if "sha256" in ckpt and ckpt["sha256"] != state_digest(ckpt["model"], ckpt["config"], ckpt["state_dict"]):
        raise ValueError(
            f"{path} is damaged: its weights do not match the SHA-256 digest stored when it was saved; restore it "
            f"from a backup or download/train it again"
        )
    if "metadata_sha256" in ckpt and ckpt["metadata_sha256"] != metadata_digest(ckpt):
        raise ValueError(
            f"{path} is damaged: its metadata, epoch or history do not match the SHA-256 digest stored when it was "
            f"saved; restore it from a backup or download/train it again"
        )
    if not is_zip and "sha256" not in ckpt:
        warnings.warn(
            f"{path} is a legacy (non-zip) checkpoint without a digest: its weights cannot be verified", stacklevel=3
        )


# Metadata entries that inference reads: (check, what it must be). A wrong one is refused when the file loads,
# naming the file and the entry, instead of failing later inside register().
_METADATA_CHECKS = {
    "refine_steps": (
        lambda v: _is_int(v) and 0 <= v <= MAX_REFINE_STEPS,
        f"a whole number of steps from 0 to {MAX_REFINE_STEPS}",
    ),
    "refine_levels": (lambda v: _is_int(v) and 1 <= v <= 8, "a whole number of pyramid levels from 1 to 8"),
    "refine_lr": (lambda v: _is_number(v) and 0 < v < 1e3, "a step size in pixels, > 0"),
    "train_config": (lambda v: isinstance(v, dict), "a mapping of TrainConfig fields"),
    "history": (lambda v: isinstance(v, dict), "a mapping of per-epoch lists"),
    "config_changes": (lambda v: isinstance(v, list), "a list of changes"),
}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_metadata(ckpt: dict, path: str | os.PathLike) -> None:
    """Raise ValueError naming ``path`` and the entry when the metadata of ``ckpt`` is not a mapping, or an entry
    that inference or a resume reads (refine_steps, refine_lr, train_config, ...) has the wrong type or range."""
    metadata = ckpt.get("metadata")
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise ValueError(f"{path}: its 'metadata' entry is a {type(metadata).__name__}, not a mapping")
    for key, (ok, what) in _METADATA_CHECKS.items():
        if key in metadata and not ok(metadata[key]):
            raise ValueError(f"{path}: metadata {key!r} must be {what}, got {metadata[key]!r}")
    train_config = metadata.get("train_config") or {}
    for key, ok, what in (("similarity", lambda v: isinstance(v, str), "a name"), ("alpha", _is_number, "a number")):
        if key in train_config and not ok(train_config[key]):
            raise ValueError(f"{path}: metadata train_config.{key} must be {what}, got {train_config[key]!r}")


def upgrade_state_dict(kind: str, state: dict, version: str) -> dict:
    """State dict of a ``version`` checkpoint with the keys of today's ``kind`` model.

    Format 1 SearchMorph files hold the shared trunk twice (``feature_encoder.trunk`` and
    ``context_encoder.trunk``); the copies must be equal, and one is kept. VoxelMorph files written before its
    U-Net became :class:`~searchmorph_lite.encoders.UNet` (2026-12-07) name its blocks ``encoder.i`` and
    ``decoder.i``; today they are ``unet.down.i`` and ``unet.up.i``, the same tensors in the same order.
    """
    if not isinstance(state, dict):
        return state
    if kind == "VoxelMorph":
        renames = _RENAMES_VOXELMORPH_UNET
    elif kind == "SearchMorph" and version != FORMAT:
        renames = _RENAMES_V1
    else:
        return state
    new = {}
    for key, value in state.items():
        if key.startswith("context_encoder.trunk.") and kind == "SearchMorph":
            twin = state.get("feature_encoder." + key[len("context_encoder.") :])
            if twin is None or not torch.equal(twin, value):
                raise ValueError(f"format-1 checkpoint: the two copies of the shared trunk differ at {key}")
            continue
        for old, renamed in renames:
            if key.startswith(old):
                key = renamed + key[len(old) :]
                break
        new[key] = value
    return new


def load_checkpoint(
    path: str | os.PathLike, expected_model: str | None = None, device: str | torch.device | None = None
) -> nn.Module:
    """The model stored at ``path``, in eval mode on ``device``; its metadata is ``model.metadata``.

    ``expected_model`` ("SearchMorph"/"VoxelMorph") raises ValueError when the file holds another kind. A training
    checkpoint's per-epoch history and epoch count join its metadata ("history", "epochs") unless it has them,
    so a run in progress reads like a shipped model.
    """
    device = check_device(device)
    ckpt = read_checkpoint(path)
    kind = ckpt["model"]
    if expected_model is not None and kind != expected_model:
        raise ValueError(f"{path} holds a {kind} checkpoint, expected {expected_model}")
    try:
        model = build_model(kind, ckpt["config"])
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    load_weights(model, ckpt["state_dict"], str(path))
    model.metadata = dict(ckpt.get("metadata") or {})
    if isinstance(ckpt.get("history"), dict):
        model.metadata.setdefault("history", ckpt["history"])
    if isinstance(ckpt.get("epoch"), int):
        model.metadata.setdefault("epochs", ckpt["epoch"])
    return model.to(device).eval()


def load_weights(model: nn.Module, state: dict, source: str) -> None:
    """Load ``state`` into ``model``; a mismatch is one short ValueError naming ``source`` (not torch's key list)."""
    kind = type(model).__name__
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        hint = ""
        for other, (model_cls, config_cls) in MODELS.items():
            other_keys = set(model_cls(config_cls()).state_dict())
            if other != kind and len(set(state) & other_keys) > len(set(state) & set(expected)):
                hint = f"; they look like {other} weights"
        example = (missing or unexpected)[0]
        raise ValueError(
            f"{source}: its weights do not fit a {kind}: {len(missing)} tensor(s) missing and {len(unexpected)} "
            f"unexpected (e.g. {example!r}){hint}"
        )
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            bad = sum(tuple(state[k].shape) != tuple(v.shape) for k, v in expected.items())
            raise ValueError(
                f"{source}: its weights do not fit this {kind} config: {key!r} has shape {tuple(state[key].shape)} "
                f"in the file but {tuple(value.shape)} in the model ({bad} tensor(s) differ)"
            )
    model.load_state_dict(state)


def largest_weight(model: nn.Module) -> torch.Tensor:
    """The largest |value| (a 0-dim tensor on the model's device, inf or NaN when one is not finite) of ``model``'s
    floating-point parameters; read back only when checked, so a training step does not wait for it."""
    tops = [p.detach().abs().max() for p in model.parameters() if p.is_floating_point() and p.numel()]
    return torch.stack(tops).max() if tops else torch.zeros(())


def default_device() -> torch.device:
    """``cuda`` when a GPU is present, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
