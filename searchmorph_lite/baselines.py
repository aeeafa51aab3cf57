"""Baselines: VoxelMorph (a U-Net predicting the field in one shot)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ._checks import set_checked_fields
from ._nd import nd
from ._precision import at_least_float32, full_precision
from .base import RegistrationModel, RegistrationResult
from .encoders import UNet, conv_block
from .transform import warp


@dataclass(frozen=True)
class VoxelMorphConfig:
    """VoxelMorph hyper-parameters (2D or 3D); defaults are VoxelMorph's (enc 16-32-32-32, dec 32-32-32-32-32-16-16)."""

    in_channels: int = 1
    enc_widths: tuple[int, ...] = (16, 32, 32, 32)
    dec_widths: tuple[int, ...] = (32, 32, 32, 32, 32, 16, 16)
    ndim: int = 2

    def __post_init__(self) -> None:
        set_checked_fields(self, "VoxelMorphConfig.")
        if self.in_channels < 1:
            raise ValueError(f"VoxelMorphConfig.in_channels must be >= 1, got {self.in_channels}")
        if len(self.dec_widths) < len(self.enc_widths):
            raise ValueError("dec_widths needs at least as many entries as enc_widths")
        if isinstance(self.ndim, bool) or self.ndim not in (2, 3):
            raise ValueError(f"VoxelMorphConfig.ndim must be 2 or 3, got {self.ndim!r}")

    def to_dict(self) -> dict:
        """Plain dict (lists, ints) suitable for a weights_only checkpoint."""
        d = dataclasses.asdict(self)
        d["enc_widths"], d["dec_widths"] = list(self.enc_widths), list(self.dec_widths)
        return d


class VoxelMorph(RegistrationModel):
    """VoxelMorph: ``model(moving, fixed)`` with images (B, C, *S) -> RegistrationResult (one field), 2D or 3D.

    The U-Net (:class:`~searchmorph_lite.encoders.UNet`, the one SearchMorph's trunk is built from) sees [M, F]
    stacked, downsamples len(enc_widths) times with strided convolutions, decodes with skip connections to full
    resolution, and a 3x3 convolution initialised near zero outputs the field.
    ``iterations`` and ``keep_flows`` are accepted for a common interface and ignored: VoxelMorph predicts in one
    shot.
    """

    def __init__(self, config: VoxelMorphConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or VoxelMorphConfig()
        self.ndim, self.in_channels = config.ndim, config.in_channels
        enc, dec = config.enc_widths, config.dec_widths
        # the U-Net sees [M, F] and keeps them as its full-resolution skip; its first block already strides
        self.unet = UNet(2 * config.in_channels, enc, dec[: len(enc)], self.ndim, first_stride=2, norm=False,
                         upsample="nearest")  # fmt: skip
        prev = self.unet.out_channels
        extra_in = (prev,) + dec[len(enc) : -1]
        self.extra = nn.Sequential(
            *[conv_block(c_in, c_out, ndim=self.ndim, norm=False) for c_in, c_out in zip(extra_in, dec[len(enc) :])]
        )
        prev = dec[-1] if len(dec) > len(enc) else prev
        self.flow_layer = nd(self.ndim).Conv(prev, config.ndim, 3, padding=1)
        nn.init.normal_(self.flow_layer.weight, std=1e-5)
        nn.init.zeros_(self.flow_layer.bias)
        self.size_multiple = 2 ** len(enc)

    def forward(
        self, moving: torch.Tensor, fixed: torch.Tensor, iterations: int | None = None, keep_flows: bool = True
    ) -> RegistrationResult:
        """RegistrationResult with the one field (B, ndim, *S); ``iterations`` and ``keep_flows`` are part of the
        RegistrationModel contract and change nothing here (one shot, one field)."""
        self.check_inputs(moving, fixed)
        x = self.unet(torch.cat([moving, fixed], dim=1))
        x = self.extra(x)
        with full_precision(x):  # the field in float32 under mixed precision (TrainConfig.amp; _precision.py)
            flow = self.flow_layer(at_least_float32(x))
        return RegistrationResult(flow=flow, warped=warp(moving, flow), flows=[flow])


CLASSICAL = ("Affine", "SyN", "ElasticSyN", "Translation", "Rigid")


def _spatial_ndim(x) -> int:
    """3 for a volume (D, H, W) (after dropping leading size-1 axes), else 2 (to_image_tensor refuses the rest)."""
    shape = list(getattr(x, "shape", ()))
    while len(shape) > 2 and shape[0] == 1:
        shape = shape[1:]
    return 3 if len(shape) == 3 else 2


def ants_register(moving, fixed, type_of_transform: str = "SyN", seed: int | None = 1, **kwargs):
    """(warped (*S), flow (ndim, *S)) as numpy: ANTs registration (antspyx) in this project's flow convention.

    Images (H, W) or volumes (D, H, W) (leading size-1 axes are dropped); the flow has 2 or 3 components.

    ``type_of_transform`` is one of ANTs' names ("Affine", "SyN", "ElasticSyN", ...). ANTs' forward transforms
    are composed into one displacement field on the fixed grid; with unit spacing, zero origin and identity
    direction its component k is the displacement along array axis k, which is exactly ``flow`` here
    (``warp(moving, flow)`` reproduces ANTs' warped image, which is what is returned). Needs ``pip install antspyx``.

    ``seed`` (a positive integer) fixes ANTs' metric sampling: with one ITK thread (environment variable
    ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1, read when ANTs first runs) a rerun repeats exactly; with more threads
    results vary slightly. ``None`` seeds from the clock (ANTs does the same for seed 0, so 0 is refused).
    """
    import tempfile

    try:
        import ants
    except ImportError as err:
        raise ImportError("classical baselines need antspyx: pip install antspyx") from err
    from .inference import to_image_tensor

    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 1):
        raise ValueError(f"seed must be a positive integer or None (ANTs reads 0 as a clock seed), got {seed!r}")
    if type_of_transform not in CLASSICAL:
        raise ValueError(f"type_of_transform must be one of {CLASSICAL}, got {type_of_transform!r}")
    ndim = _spatial_ndim(moving)
    m = to_image_tensor(moving, "moving", ndim=ndim).numpy().astype("float32")
    f = to_image_tensor(fixed, "fixed", ndim=ndim).numpy().astype("float32")
    if m.shape != f.shape:
        raise ValueError(f"moving and fixed differ in shape: {m.shape} vs {f.shape}")
    m_img, f_img = ants.from_numpy(m), ants.from_numpy(f)
    # antspyx 0.6 takes the seed of its metric sampling from ants.config (a random_seed argument is ignored);
    # set it for this call only.
    previous_seed = getattr(ants.config, "_random_seed", None)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            ants.config._random_seed = seed
            reg = ants.registration(
                fixed=f_img, moving=m_img, type_of_transform=type_of_transform, outprefix=f"{tmp}/reg_", **kwargs
            )
        finally:
            ants.config._random_seed = previous_seed
        composed = ants.apply_transforms(
            fixed=f_img, moving=m_img, transformlist=reg["fwdtransforms"], compose=f"{tmp}/composed_"
        )
        field = ants.image_read(composed).numpy()
    flow = np.moveaxis(field, -1, 0).astype("float32")
    return reg["warpedmovout"].numpy(), flow
