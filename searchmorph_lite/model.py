"""SearchMorph (Fig. 1): encoders -> correlation -> iterated search + ConvGRU -> x2 upsampled field -> warp."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

from ._checks import check_image, check_same_spatial
from .correlation import correlation_pyramid, cost_volume, diamond_offsets, search_features, search_pyramid
from .encoders import ContextEncoder, FeatureEncoder, UNetTrunk
from .iterator import DeformationFieldIterator
from .transform import upsample_flow, warp


@dataclass
class RegistrationResult:
    """What a registration model returns: the final field, the warped moving image, and every iteration's field.

    flow: (B, ndim, *S) in full-resolution pixels; warped: (B, C, *S); flows: list of (B, ndim, *S).
    """

    flow: torch.Tensor
    warped: torch.Tensor
    flows: list[torch.Tensor] = field(default_factory=list)


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

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(self.widths))
        for f in dataclasses.fields(self):  # a YAML typo such as use_context: "no" must not read as True
            value = getattr(self, f.name)
            if f.type in ("bool", bool) and not isinstance(value, bool):
                raise ValueError(f"SearchMorphConfig.{f.name} must be true or false, got {value!r}")
            if f.type in ("int", int) and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"SearchMorphConfig.{f.name} must be an integer, got {value!r}")
        if not self.widths or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in self.widths):
            raise ValueError(f"SearchMorphConfig.widths must be positive integers, got {self.widths!r}")
        for name in ("in_channels", "feature_dim", "hidden_dim", "motion_dim", "levels", "iterations"):
            if getattr(self, name) < 1:
                raise ValueError(f"SearchMorphConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.radius < 0:
            raise ValueError(f"SearchMorphConfig.radius must be >= 0, got {self.radius}")
        if self.ndim != 2:
            raise ValueError("SearchMorph-lite is 2D for now (the paper's search is 2D); ndim must be 2")

    def to_dict(self) -> dict:
        """Plain dict (lists, ints, bools) suitable for a weights_only checkpoint."""
        d = dataclasses.asdict(self)
        d["widths"] = list(self.widths)
        return d


class SearchMorph(nn.Module):
    """SearchMorph: ``model(moving, fixed)`` with images (B, C, H, W) -> RegistrationResult.

    The field lives on the fixed image's grid (``warp`` samples the moving image at p + flow(p)), so for each
    fixed pixel p we search where it sits in the moving image: the fixed features are the first ("query")
    argument of the correlation and the moving features the searched ones. The paper writes eq. 1 with h(M)
    first and warps M with the field, which is only consistent with this reading.
    """

    def __init__(self, config: SearchMorphConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or SearchMorphConfig()
        cin = config.in_channels * (2 if config.joint_encoder else 1)
        trunk = UNetTrunk(cin, config.widths, ndim=config.ndim)
        self.feature_encoder = FeatureEncoder(trunk, config.feature_dim, joint=config.joint_encoder)
        self.context_encoder = (
            ContextEncoder(trunk, config.context_dim, joint=config.joint_encoder) if config.use_context else None
        )
        self.levels = config.levels if config.use_pyramid else 1
        if config.use_search:
            search_dim = self.levels * diamond_offsets(config.radius, config.ndim).shape[0]
        else:
            search_dim = 2 * config.feature_dim
        self.iterator = DeformationFieldIterator(
            search_dim,
            config.context_dim if config.use_context else 0,
            config.hidden_dim,
            config.motion_dim,
            ndim=config.ndim,
        )
        self.init_hidden = nn.Conv2d(config.context_dim, config.hidden_dim, 1) if config.use_context else None
        self.size_multiple = max(trunk.size_multiple, 2**self.levels)

    def check_inputs(self, moving: torch.Tensor, fixed: torch.Tensor) -> None:
        """Raise ValueError for inputs this model cannot register (shape, channels, size multiple, NaN)."""
        check_image(moving, "moving", ndim=self.config.ndim)
        check_image(fixed, "fixed", ndim=self.config.ndim)
        check_same_spatial(moving, fixed, "moving", "fixed")
        for name, x in (("moving", moving), ("fixed", fixed)):
            if x.shape[1] != self.config.in_channels:
                raise ValueError(f"{name} must have {self.config.in_channels} channel(s), got {x.shape[1]}")
        if any(n % self.size_multiple for n in moving.shape[2:]):
            raise ValueError(
                f"image size {tuple(moving.shape[2:])} must be divisible by {self.size_multiple}; "
                "pad it (searchmorph_lite.register does this for you)"
            )

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor, iterations: int | None = None) -> RegistrationResult:
        self.check_inputs(moving, fixed)
        cfg = self.config
        n_iter = cfg.iterations if iterations is None else int(iterations)
        if n_iter < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        trunk_out = self.feature_encoder.run_trunk(moving, fixed)
        h_m, h_f = self.feature_encoder.features(trunk_out)
        context = self.context_encoder.context(trunk_out) if self.context_encoder is not None else None
        b = moving.shape[0]
        half = h_f.shape[2:]
        flow = h_f.new_zeros(b, cfg.ndim, *half)
        if context is not None:
            hidden = torch.tanh(self.init_hidden(context))
        else:
            hidden = h_f.new_zeros(b, cfg.hidden_dim, *half)
        pyramid = None
        if cfg.use_search and cfg.all_pairs:
            volume = cost_volume(h_f, h_m, normalize=cfg.normalize_correlation)
            pyramid = correlation_pyramid(volume, self.levels)
        flows = []
        for _ in range(n_iter):
            where = flow.detach() if cfg.detach_search else flow
            if not cfg.use_search:
                search = torch.cat([h_f, warp(h_m, where)], dim=1)
            elif pyramid is not None:
                search = search_pyramid(pyramid, where, cfg.radius)
            else:
                search = search_features(h_f, h_m, where, cfg.radius, self.levels, normalize=cfg.normalize_correlation)
            hidden, delta = self.iterator(hidden, search, context, where)
            flow = flow + delta
            flows.append(upsample_flow(flow, 2))
        return RegistrationResult(flow=flows[-1], warped=warp(moving, flows[-1]), flows=flows)
