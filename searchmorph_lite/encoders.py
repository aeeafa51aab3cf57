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

import math

import torch
from torch import nn

from ._nd import nd


def conv_block(in_channels: int, out_channels: int, stride: int = 1, ndim: int = 2, norm: bool = True) -> nn.Sequential:
    """Conv (3x3) -> BatchNorm -> LeakyReLU(0.2), the paper's unit: (B, in, *S) -> (B, out, *S/stride).

    ``norm=False`` drops the BatchNorm and gives the convolution a bias (VoxelMorph's unit: conv -> LeakyReLU).
    """
    layers = nd(ndim)
    conv = layers.Conv(in_channels, out_channels, 3, stride=stride, padding=1, bias=not norm)
    if not norm:
        return nn.Sequential(conv, nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(conv, layers.BatchNorm(out_channels), nn.LeakyReLU(0.2, inplace=True))


def stack_pair(moving: torch.Tensor, fixed: torch.Tensor, joint: bool) -> torch.Tensor:
    """The trunk's input: [M, F] as channels (B, 2C, *S) when ``joint``, else as a batch (2B, C, *S)."""
    return torch.cat([moving, fixed], dim=1 if joint else 0)


class UNet(nn.Module):
    """The one U-Net of the package: input (B, in_channels, *S) -> (B, out_channels, *S / 2^(down - up)).

    ``down_widths``: one conv block per encoder level, the first with stride ``first_stride``, the others with
    stride 2. ``up_widths``: one conv block per decoder level, each on [upsampled x, the skip of the level it
    climbs to]. The skips are the encoder levels' outputs, and with ``first_stride=2`` the input itself as the
    full-resolution skip (VoxelMorph's U-Net). ``norm``: BatchNorm in every block (the paper's trunk) or a biased
    convolution (VoxelMorph); ``upsample``: "linear" or "nearest". :class:`UNetTrunk` (SearchMorph's encoders)
    and :class:`~searchmorph_lite.baselines.VoxelMorph` are two configurations of this class.
    """

    def __init__(
        self,
        in_channels: int,
        down_widths: tuple[int, ...],
        up_widths: tuple[int, ...],
        ndim: int = 2,
        first_stride: int = 1,
        norm: bool = True,
        upsample: str = "linear",
    ) -> None:
        super().__init__()
        if first_stride not in (1, 2):
            raise ValueError(f"UNet first_stride must be 1 or 2, got {first_stride!r}")
        skip_channels = [in_channels] if first_stride == 2 else []
        self.input_skip = first_stride == 2
        self.down = nn.ModuleList()
        prev = in_channels
        for i, w in enumerate(down_widths):
            self.down.append(conv_block(prev, w, stride=first_stride if i == 0 else 2, ndim=ndim, norm=norm))
            prev = w
            skip_channels.append(w)
        if len(up_widths) > len(skip_channels) - 1:
            raise ValueError(f"a U-Net with {len(skip_channels)} levels climbs at most {len(skip_channels) - 1} up")
        self.up = nn.ModuleList()
        for i, w in enumerate(up_widths):
            self.up.append(conv_block(prev + skip_channels[-2 - i], w, ndim=ndim, norm=norm))
            prev = w
        self.out_channels = prev
        self.size_multiple = 2 ** (len(down_widths) - (first_stride == 1))
        mode = nd(ndim).linear_mode if upsample == "linear" else upsample
        self.upsample = nn.Upsample(scale_factor=2, mode=mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(n % self.size_multiple for n in x.shape[2:]):
            raise ValueError(
                f"{type(self).__name__} input size {tuple(x.shape[2:])} must be divisible by {self.size_multiple} "
                f"({int(math.log2(self.size_multiple))} downsamplings)"
            )
        skips = [x] if self.input_skip else []
        for block in self.down:
            x = block(x)
            skips.append(x)
        for i, block in enumerate(self.up):
            x = block(torch.cat([self.upsample(x), skips[-2 - i]], dim=1))
        return x


class UNetTrunk(UNet):
    """SearchMorph's trunk, a :class:`UNet`: input (B, in_channels, *S) -> (B, widths[stride - 1], *S/stride).

    Encoder levels 1, 1/2, ..., 1/2^(len(widths)-1) with ``widths`` channels; the decoder climbs back to 1/2
    resolution (``stride=2``, the paper's) or to full resolution (``stride=1``: one more up block, onto the
    level-0 skip), concatenating the skip of each level. Inputs must be divisible by 2^(len(widths)-1).
    """

    def __init__(
        self, in_channels: int = 2, widths: tuple[int, ...] = (16, 32, 32, 32), ndim: int = 2, stride: int = 2
    ) -> None:
        if len(widths) < 2:
            raise ValueError(f"widths needs at least 2 levels, got {widths}")
        if stride not in (1, 2):
            raise ValueError(f"UNetTrunk stride must be 1 or 2, got {stride!r}")
        up = tuple(widths[i] for i in range(len(widths) - 2, stride - 2, -1))  # back to level stride - 1
        super().__init__(in_channels, tuple(widths), up, ndim=ndim, first_stride=1)
        self.widths = tuple(widths)
        self.stride = stride


class FeatureHead(nn.Module):
    """The feature encoder's last layer: trunk output -> (h(M), h(F)), each (B, feature_dim, *S/2).

    Joint trunk: one 3x3 convolution emits 2 * feature_dim channels, split into h(M) and h(F) (the paper's
    "split the 8-channel map into two 4-channel maps"). Siamese trunk (batch [M; F]): the batch is split.
    """

    def __init__(self, trunk_channels: int, feature_dim: int = 4, joint: bool = True, ndim: int = 2) -> None:
        super().__init__()
        self.joint = joint
        self.feature_dim = feature_dim
        self.conv = nd(ndim).Conv(trunk_channels, feature_dim * (2 if joint else 1), 3, padding=1)

    def forward(self, trunk_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.conv(trunk_out)
        if self.joint:
            return out[:, : self.feature_dim], out[:, self.feature_dim :]
        h_m, h_f = out.chunk(2, dim=0)
        return h_m, h_f


class ContextHead(nn.Module):
    """The context encoder's last layer: trunk output -> context (B, context_dim, *S/2).

    A siamese trunk's two outputs (batch [M; F]) are stacked as channels first, so the context sees both images.
    """

    def __init__(self, trunk_channels: int, context_dim: int = 32, joint: bool = True, ndim: int = 2) -> None:
        super().__init__()
        self.joint = joint
        self.conv = nd(ndim).Conv(trunk_channels * (1 if joint else 2), context_dim, 3, padding=1)

    def forward(self, trunk_out: torch.Tensor) -> torch.Tensor:
        if not self.joint:
            trunk_out = torch.cat(trunk_out.chunk(2, dim=0), dim=1)
        return self.conv(trunk_out)


class SharedEncoder(nn.Module):
    """Fig. 1's feature and context encoders: one trunk, run once, and two heads -> (h(M), h(F), context).

    ``forward(moving, fixed)`` with images (B, C, *S) returns h(M), h(F) (B, feature_dim, *S/stride) and the
    context (B, context_dim, *S/stride), or None when ``context_dim`` is 0 (Table III "w/o context"). The paper's
    encoders "share weights for each layer except for the last layer": that is this one trunk with two last layers.
    """

    def __init__(
        self,
        in_channels: int = 1,
        widths: tuple[int, ...] = (16, 32, 32, 32),
        feature_dim: int = 4,
        context_dim: int = 32,
        joint: bool = True,
        ndim: int = 2,
        stride: int = 2,
    ) -> None:
        super().__init__()
        self.joint = joint
        self.trunk = UNetTrunk(in_channels * (2 if joint else 1), widths, ndim=ndim, stride=stride)
        self.feature_head = FeatureHead(self.trunk.out_channels, feature_dim, joint=joint, ndim=ndim)
        self.context_head = ContextHead(self.trunk.out_channels, context_dim, joint, ndim) if context_dim else None

    def forward(
        self, moving: torch.Tensor, fixed: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        trunk_out = self.trunk(stack_pair(moving, fixed, self.joint))
        h_m, h_f = self.feature_head(trunk_out)
        context = self.context_head(trunk_out) if self.context_head is not None else None
        return h_m, h_f, context


class FeatureEncoder(nn.Module):
    """Feature encoder alone (trunk + feature head): (moving, fixed) (B, C, *S) -> (h(M), h(F)), (B, D, *S/2) each.

    SearchMorph uses :class:`SharedEncoder`, which adds the context head to the same trunk.
    """

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
        self.head = FeatureHead(self.trunk.out_channels, feature_dim, joint=joint, ndim=ndim)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.trunk(stack_pair(moving, fixed, self.joint)))


class ContextEncoder(nn.Module):
    """Context encoder alone (trunk + context head): (moving, fixed) -> context (B, context_dim, *S/2)."""

    def __init__(self, trunk: UNetTrunk, context_dim: int = 32, joint: bool = True, ndim: int = 2) -> None:
        super().__init__()
        self.joint = joint
        self.trunk = trunk
        self.head = ContextHead(trunk.out_channels, context_dim, joint=joint, ndim=ndim)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(stack_pair(moving, fixed, self.joint)))
