"""Resuming a training run: what may change between the checkpoint and the config that continues it."""

from __future__ import annotations

import dataclasses
import importlib
import warnings
from pathlib import Path

from ._files import json_safe
from .config import TrainConfig
from .registry import check_model_config

# Keys of a TrainConfig that a resumed run may change only when asked (allow_config_change): the new values apply
# from the next epoch on, and the checkpoint's metadata records it. "epochs" may always change: continuing a run
# for more epochs is what resuming is for. The model and its config never change: the weights belong to them.
MODEL_KEYS = ("model", "model_config")


def _flat_diff(old: dict, new: dict, skip: tuple[str, ...] = ()) -> dict[str, tuple]:
    """{"key" or "key.subkey": (old value, new value)} for every entry that differs (one level into dicts)."""
    unset = "<unset>"
    diff = {}
    for key in sorted(set(old) | set(new), key=str):
        if key in skip:
            continue
        a, b = old.get(key, unset), new.get(key, unset)
        if isinstance(a, dict) and isinstance(b, dict):
            for sub in sorted(set(a) | set(b), key=str):
                if a.get(sub, unset) != b.get(sub, unset):
                    diff[f"{key}.{sub}"] = (a.get(sub, unset), b.get(sub, unset))
        elif a != b:
            diff[key] = (a, b)
    return diff


def _describe(diff: dict[str, tuple]) -> str:
    return "; ".join(f"{k}: {a!r} in the checkpoint, {b!r} now" for k, (a, b) in diff.items())


def check_resume(ckpt: dict, cfg: TrainConfig, path: Path, allow_config_change: bool) -> dict[str, tuple]:
    """The config changes a resume of ``ckpt`` with ``cfg`` makes ({key: (old, new)}); ValueError when refused.

    Refused: a checkpoint that is not a training one, another model or model config, another training config
    (other than ``epochs``) unless ``allow_config_change``, fewer epochs than it has run. Fields added to
    TrainConfig (or to a dataset's options) since it was written compare at their defaults.
    """
    for key, kind in (("optimizer", dict), ("epoch", int), ("history", dict)):
        if not isinstance(ckpt.get(key), kind):
            raise ValueError(
                f"{path} is not a training checkpoint (it has no {key!r}: a pretrained or exported model?); "
                f"--resume continues only a run written by train, so train into a new --out folder"
            )
    model_diff = _flat_diff({"model": ckpt["model"]}, {"model": cfg.model})
    if not model_diff:
        # the checkpoint's config through today's dataclass, so fields added since (at their defaults) match
        try:
            saved = check_model_config(ckpt["model"], ckpt["config"]).to_dict()
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        model_diff = _flat_diff(saved, check_model_config(cfg.model, cfg.model_config).to_dict())
        model_diff = {f"model_config.{k}": v for k, v in model_diff.items()}
    if model_diff:
        raise ValueError(
            f"{path} was trained with another model/config ({_describe(model_diff)}); its weights belong to that "
            f"model, so train into a new --out folder"
        )
    if "metadata_sha256" not in ckpt:
        warnings.warn(
            f"{path} was written before checkpoints carried a digest of their metadata: the training config it "
            f"records cannot be verified",
            stacklevel=3,
        )
    old = (ckpt.get("metadata") or {}).get("train_config")
    if not isinstance(old, dict):
        if not allow_config_change:
            raise ValueError(
                f"{path} records no training config (metadata 'train_config'), so this resume cannot be checked "
                f"against the config it ran with; pass --allow-config-change (allow_config_change=True) to continue "
                f"it with this config from epoch {ckpt['epoch'] + 1} on (its metadata records that the earlier "
                f"config is unknown)"
            )
        return {"train_config": ("<unrecorded>", "<this config>")}
    # fields added to TrainConfig since the checkpoint was written ran at their defaults: they match those
    defaults = {
        f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default
        for f in dataclasses.fields(TrainConfig)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    }
    old = {**json_safe(defaults), **old}
    new = json_safe(dataclasses.asdict(cfg))
    if old.get("dataset") == new["dataset"] and isinstance(old.get("dataset_options"), dict):
        # an option given at its default (seed: 0) is the option left out: compare what the loader ran with
        option_defaults = json_safe(_option_defaults(cfg.dataset))
        old["dataset_options"] = {**option_defaults, **old["dataset_options"]}
        new["dataset_options"] = {**option_defaults, **new["dataset_options"]}
    diff = _flat_diff(old, new, skip=("epochs", *MODEL_KEYS))
    if diff and not allow_config_change:
        raise ValueError(
            f"{path} was trained with another config: {_describe(diff)}. Resume with the checkpoint's values, "
            f"or pass --allow-config-change (allow_config_change=True) to run the new ones from epoch "
            f"{ckpt['epoch'] + 1} on"
        )
    if cfg.epochs < ckpt["epoch"]:
        raise ValueError(
            f"{path} has already run {ckpt['epoch']} epochs but the config asks for {cfg.epochs}; raise epochs "
            f"(--epochs) to continue it"
        )
    return diff


def _option_defaults(name: str) -> dict:
    """The default of every ``load_dataset(name, ...)`` option that has one (read from its loader's signature)."""
    import inspect

    from .data import REGISTRY

    try:
        module = importlib.import_module(f".data.{REGISTRY[name][0]}", __package__)
        parameters = inspect.signature(getattr(module, REGISTRY[name][1])).parameters.values()
    except (KeyError, ImportError, AttributeError, TypeError, ValueError):
        return {}
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
