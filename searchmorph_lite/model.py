"""SearchMorph (Fig. 1): encoders -> correlation -> iterated search + ConvGRU -> x2 upsampled field -> warp."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch

from ._checks import check_iterations, set_checked_fields
from ._precision import at_least_float32, full_precision
from .base import RegistrationModel, RegistrationResult
from .correlation import LOOKUPS
from .encoders import SharedEncoder
from .iterator import DeformationFieldIterator
from .transform import integrate_velocity, upsample_flow, warp

__all__ = ["ABLATIONS", "RegistrationResult", "SearchMorph", "SearchMorphConfig", "zeroed_input"]


@dataclass(frozen=True)
class SearchMorphConfig:
    """Hyper-parameters of SearchMorph. Defaults follow the paper where it speaks (levels, radius, iterations,
    feature and context widths); the rest is our choice, named in each field's comment."""

    in_channels: int = 1
    widths: tuple[int, ...] = (16, 32, 32, 32)  # trunk widths per level (paper: "U-Net-like", widths in appendix)
    feature_dim: int = 4  # channels of h(M) and h(F): the 8-channel map split in two
    context_dim: int = 32
    hidden_dim: int = 32  # GRU hidden state width (paper silent)
    motion_dim: int = 32  # width of the search-map encoder before the GRU (paper silent)
    levels: int = 4  # correlation pyramid levels, kernels 1, 2, 4, 8
    radius: int = 3  # diamond search radius (3 for brain MR, 2 for echo)
    iterations: int = 4
    joint_encoder: bool = True  # trunk sees [M, F] stacked (the paper's split); False = siamese (RAFT)
    normalize_correlation: bool = True  # divide correlations by sqrt(feature_dim), as RAFT
    all_pairs: bool = False  # True builds the H x W x H x W volume (teaching); False uses search_features
    detach_search: bool = True  # search positions use a detached field, as RAFT detaches its coordinates
    use_context: bool = True  # Table III "w/o context"
    use_search: bool = True  # Table III "w/o search module": the GRU sees features instead of a search map
    use_pyramid: bool = True  # Table III "w/o corr pyramid": one level only
    ndim: int = 2
    diffeomorphic: bool = False  # True: the iterator accumulates a stationary velocity v; the field is exp(v)
    integration_steps: int = 7  # scaling-and-squaring steps of exp(v) (VoxelMorph-diff's 7)
    feature_stride: int = 2  # features, search and GRU at 1/2 resolution (the paper's); 1 = full resolution

    def __post_init__(self) -> None:
        set_checked_fields(self, "SearchMorphConfig.")  # a YAML typo such as use_context: "no" is refused
        for name in ("in_channels", "feature_dim", "hidden_dim", "motion_dim", "levels", "iterations"):
            if getattr(self, name) < 1:
                raise ValueError(f"SearchMorphConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.integration_steps < 0:
            raise ValueError(f"SearchMorphConfig.integration_steps must be >= 0, got {self.integration_steps}")
        if self.radius < 0:
            raise ValueError(f"SearchMorphConfig.radius must be >= 0, got {self.radius}")
        if self.feature_stride not in (1, 2):
            raise ValueError(f"SearchMorphConfig.feature_stride must be 1 or 2, got {self.feature_stride}")
        if self.ndim not in (2, 3):
            raise ValueError(f"SearchMorphConfig.ndim must be 2 or 3, got {self.ndim}")

    @property
    def lookup(self) -> str:
        """The correlation lookup this config asks for: a key of ``correlation.LOOKUPS``."""
        if not self.use_search:
            return "warped-features"
        return "all-pairs" if self.all_pairs else "on-the-fly"

    def to_dict(self) -> dict:
        """Plain dict (lists, ints, bools) suitable for a weights_only checkpoint."""
        d = dataclasses.asdict(self)
        d["widths"] = list(self.widths)
        return d


# Table III's rows: the SearchMorphConfig switches that remove one component each (chapter 9 shows what each
# changes inside ``forward``; chapter 13 trains and scores them). "SearchMorph" is the full model.
ABLATIONS: dict[str, dict[str, bool | int]] = {
    "SearchMorph": {},
    "w/o context": {"use_context": False},
    "w/o search module": {"use_search": False},
    "w/o corr pyramid": {"use_pyramid": False},
    "w/o iteration": {"iterations": 1},
}


class SearchMorph(RegistrationModel):
    """SearchMorph (Fig. 1): ``model(moving, fixed)`` with images (B, C, *S) -> RegistrationResult.

    Encoder -> correlation lookup -> ``iterations`` x (search map -> ConvGRU -> field update) -> x2 upsampled
    field -> warp. 2D or 3D (``config.ndim``); in 3D the diamond of eq. 3 becomes the octahedron. With
    ``config.feature_stride=1`` (not the paper's) the trunk decodes to full resolution, the search and the GRU run
    there, and the field is not upsampled: finer fields, at 2^ndim times the search cost.

    With ``config.diffeomorphic`` the iterator's accumulated field is a stationary velocity v (not in the paper,
    which is not diffeomorphic; VoxelMorph-diff's construction): v is upsampled like the field and the output
    displacement is exp(v) by scaling and squaring (:func:`~searchmorph_lite.transform.integrate_velocity`), so
    it cannot fold up to discretisation. The search and the GRU still see v itself, which equals exp(v) to first
    order; integrating at every iteration would cost ``integration_steps`` warps per iteration.

    The field lives on the fixed image's grid (``warp`` samples the moving image at p + flow(p)), so for each
    fixed pixel p we search where it sits in the moving image: the fixed features are the query of the lookup
    and the moving features the searched ones. The paper writes eq. 1 with h(M) first and warps M with the
    field, which is only consistent with this reading.
    """

    def __init__(self, config: SearchMorphConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or SearchMorphConfig()
        self.ndim, self.in_channels = cfg.ndim, cfg.in_channels
        context_dim = cfg.context_dim if cfg.use_context else 0
        self.levels = cfg.levels if cfg.use_pyramid else 1
        self.encoder = SharedEncoder(
            cfg.in_channels, cfg.widths, cfg.feature_dim, context_dim, cfg.joint_encoder, cfg.ndim, cfg.feature_stride
        )
        lookup = LOOKUPS[cfg.lookup]  # all-pairs volume, on-the-fly search, or "w/o search": the one switch
        # a factory: make_lookup(query, searched) builds the lookup once per pair; forward then calls it per iteration
        self.make_lookup = partial(lookup, radius=cfg.radius, levels=self.levels, normalize=cfg.normalize_correlation)
        search_dim = lookup.channels(cfg.feature_dim, cfg.radius, self.levels, cfg.ndim)
        self.iterator = DeformationFieldIterator(search_dim, context_dim, cfg.hidden_dim, cfg.motion_dim, cfg.ndim)
        # the pyramid halves the feature grid levels - 1 times
        self.size_multiple = max(self.encoder.trunk.size_multiple, cfg.feature_stride * 2 ** (self.levels - 1))

    def forward(
        self, moving: torch.Tensor, fixed: torch.Tensor, iterations: int | None = None, keep_flows: bool = True
    ) -> RegistrationResult:
        """RegistrationResult: field (B, ndim, *S), warped moving image, and with ``keep_flows`` every
        iteration's field (the sequence loss needs them); without it ``flows`` holds only the last one, so
        inference memory does not grow with ``iterations`` (at most 1000). Diffeomorphic models also return the
        velocity (B, ndim, *S) whose exponential is the field; every entry of ``flows`` is then exp of that
        iteration's velocity."""
        self.check_inputs(moving, fixed)
        stride = self.config.feature_stride
        n_iter = check_iterations(self.config.iterations if iterations is None else iterations)
        h_m, h_f, context = self.encoder(moving, fixed)  # features and context at 1/stride resolution
        # Under mixed precision (TrainConfig.amp) the search and the field stay float32 (_precision.py); the
        # encoders, the ConvGRU and the flow head run in reduced precision, and each update is added in float32.
        with full_precision(moving):  # correlation pyramid (eq. 1-2), searched around the field (eq. 3)
            lookup = self.make_lookup(at_least_float32(h_f), at_least_float32(h_m))
        hidden = self.iterator.initial_hidden(context, h_f)
        flow = moving.new_zeros(h_f.shape[0], self.ndim, *h_f.shape[2:])  # phi_0 = 0, in the images' float type
        fields = []
        for _ in range(n_iter):
            where = flow.detach() if self.config.detach_search else flow
            hidden, delta = self.iterator(hidden, lookup(where), context, where)  # ConvGRU (eq. 4-7)
            flow = flow + delta  # phi_t = phi_{t-1} + delta phi (a velocity when diffeomorphic)
            if keep_flows:
                fields.append(upsample_flow(flow, stride))  # Phi: x stride to the input's resolution
        fields = fields if keep_flows else [upsample_flow(flow, stride)]
        flows = [self.exponential(f) for f in fields]
        velocity = fields[-1] if self.config.diffeomorphic else None
        return RegistrationResult(flow=flows[-1], warped=warp(moving, flows[-1]), flows=flows, velocity=velocity)

    def exponential(self, field: torch.Tensor) -> torch.Tensor:
        """Displacement (B, ndim, *S) of an accumulated field (B, ndim, *S): exp(v) if diffeomorphic, else itself."""
        return integrate_velocity(field, self.config.integration_steps) if self.config.diffeomorphic else field


ZEROABLE = ("search", "context")


@contextmanager
def zeroed_input(model: SearchMorph, part: str) -> Iterator[SearchMorph]:
    """``model`` with one input of its ConvGRU replaced by zeros while the block runs: every search map (B, K, *s)
    (``part="search"``) or the context (B, C, *s) (``"context"``); the model is whole again afterwards.

    Table III retrains without a component; this asks a *trained* model how much it relies on one: a model that
    reads its search map loses Dice when the map is zeroed (``training/search_use.py``, chapter 14).
    """
    if part not in ZEROABLE:
        raise ValueError(f"part must be one of {', '.join(ZEROABLE)}, got {part!r}")
    if not isinstance(model, SearchMorph):
        raise TypeError(f"zeroed_input needs a SearchMorph, got {type(model).__name__}")
    if part == "search":
        make = model.make_lookup  # an instance attribute, built in __init__

        def make_zero(*args, **kwargs):
            lookup = make(*args, **kwargs)
            return lambda where: torch.zeros_like(lookup(where))

        model.make_lookup = make_zero
        try:
            yield model
        finally:
            model.make_lookup = make
    else:
        encode = model.encoder.forward

        def zero_context(*args, **kwargs):
            h_m, h_f, context = encode(*args, **kwargs)
            return h_m, h_f, torch.zeros_like(context)

        model.encoder.forward = zero_context
        try:
            yield model
        finally:
            del model.encoder.forward  # the override: the class's method comes back
