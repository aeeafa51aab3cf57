"""Feature and context encoders (Sec. III-A): one U-Net-like trunk shared by two heads.

The paper: both encoders "share weights for each layer except for the last layer", each convolution is followed
by batch normalization and LeakyReLU, the feature encoder ends in 8 channels split into two 4-channel maps
h(M) and h(F), the context encoder ends in 32 channels, and features live at 1/2 resolution.

The paper does not say what the trunk sees. We read "split the 8-channel map into two 4-channel maps" literally
(``joint=True``): the trunk sees the pair [M, F] stacked as channels and its feature head emits 2 * feature_dim
channels, the first half h(M), the second h(F). With ``joint=False`` (siamese, as RAFT) the trunk runs on each
image alone, so h(M) depends on M only (in eval mode: in training mode batch normalization pools statistics over
the stacked M and F batch, so F still leaks into h(M) a little; RAFT uses instance norm there for this reason);
the context head then sees both trunk outputs.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_block(in_channels: int, out_channels: int, stride: int = 1, ndim: int = 2) -> nn.Sequential:
    """Conv (3x3) -> BatchNorm -> LeakyReLU(0.2), the paper's unit: (B, in, *S) -> (B, out, *S/stride)."""
    conv = nn.Conv2d if ndim == 2 else nn.Conv3d
    norm = nn.BatchNorm2d if ndim == 2 else nn.BatchNorm3d
    return nn.Sequential(
        conv(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        norm(out_channels),
        nn.LeakyReLU(0.2, inplace=True),
    )


class UNetTrunk(nn.Module):
    """U-Net trunk: input (B, in_channels, *S) -> (B, widths[1], *S/2), with skip connections.

    Encoder levels 1, 1/2, ..., 1/2^(len(widths)-1) with ``widths`` channels; the decoder climbs back to 1/2
    resolution, concatenating the skip of each level. Inputs must be divisible by 2^(len(widths)-1).
    """

    def __init__(self, in_channels: int = 2, widths: tuple[int, ...] = (16, 32, 32, 32), ndim: int = 2) -> None:
        super().__init__()
        if len(widths) < 2:
            raise ValueError(f"widths needs at least 2 levels, got {widths}")
        self.widths = tuple(widths)
        self.down = nn.ModuleList()
        prev = in_channels
        for i, w in enumerate(widths):
            self.down.append(conv_block(prev, w, stride=1 if i == 0 else 2, ndim=ndim))
            prev = w
        self.up = nn.ModuleList()
        for i in range(len(widths) - 2, 0, -1):  # decode back to level 1 (1/2 resolution)
            self.up.append(conv_block(prev + widths[i], widths[i], ndim=ndim))
            prev = widths[i]
        self.out_channels = prev
        self.size_multiple = 2 ** (len(widths) - 1)
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear" if ndim == 2 else "trilinear")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(n % self.size_multiple for n in x.shape[2:]):
            raise ValueError(
                f"UNetTrunk input size {tuple(x.shape[2:])} must be divisible by {self.size_multiple} "
                f"({len(self.widths) - 1} downsamplings)"
            )
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        for i, block in enumerate(self.up):
            x = block(torch.cat([self.upsample(x), skips[-2 - i]], dim=1))
        return x


class FeatureEncoder(nn.Module):
    """Feature encoder: (moving, fixed) (B, C, *S) each -> (h(M), h(F)), each (B, feature_dim, *S/2)."""

    def __init__(
        self,
        trunk: UNetTrunk | None = None,
        feature_dim: int = 4,
        in_channels: int = 1,
        widths: tuple[int, ...] = (16, 32, 32, 32),
        joint: bool = True,
        ndim: int = 2,
    ) -> None:
        super().__init__()
        self.joint = joint
        self.trunk = trunk or UNetTrunk(in_channels * (2 if joint else 1), widths, ndim=ndim)
        conv = nn.Conv2d if ndim == 2 else nn.Conv3d
        self.head = conv(self.trunk.out_channels, feature_dim * (2 if joint else 1), 3, padding=1)
        self.feature_dim = feature_dim

    def features(self, trunk_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h(M), h(F)) from the trunk's output: split channels (joint) or split the batch (siamese)."""
        out = self.head(trunk_out)
        if self.joint:
            return out[:, : self.feature_dim], out[:, self.feature_dim :]
        h_m, h_f = out.chunk(2, dim=0)
        return h_m, h_f

    def run_trunk(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """Trunk output: (B, c, *S/2) for the stacked pair (joint) or (2B, c, *S/2) for both images (siamese)."""
        if self.joint:
            return self.trunk(torch.cat([moving, fixed], dim=1))
        return self.trunk(torch.cat([moving, fixed], dim=0))

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features(self.run_trunk(moving, fixed))


class ContextEncoder(nn.Module):
    """Context encoder: (moving, fixed) -> context (B, context_dim, *S/2), sharing the feature encoder's trunk."""

    def __init__(self, trunk: UNetTrunk, context_dim: int = 32, joint: bool = True, ndim: int = 2) -> None:
        super().__init__()
        self.trunk = trunk
        self.joint = joint
        conv = nn.Conv2d if ndim == 2 else nn.Conv3d
        in_ch = trunk.out_channels * (1 if joint else 2)
        self.head = conv(in_ch, context_dim, 3, padding=1)

    def context(self, trunk_out: torch.Tensor) -> torch.Tensor:
        """Context (B, context_dim, *S/2) from the trunk's output."""
        if not self.joint:
            trunk_out = torch.cat(trunk_out.chunk(2, dim=0), dim=1)
        return self.head(trunk_out)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        pair = torch.cat([moving, fixed], dim=1 if self.joint else 0)
        return self.context(self.trunk(pair))
