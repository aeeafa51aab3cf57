"""The deformation-field iterator (Sec. III-C): a ConvGRU (eq. 4-7) that turns search maps into field updates."""

from __future__ import annotations

import torch
from torch import nn

from ._nd import nd


class ConvGRU(nn.Module):
    """Convolutional GRU (eq. 4-7): ``forward(h, x)`` with h (B, hidden, *S), x (B, input, *S) -> new h.

    The matrix products of eq. 4-6 become 3x3 convolutions, so every pixel has its own gated memory:
    r = sigmoid(conv_r[h, x]), z = sigmoid(conv_z[h, x]), h~ = tanh(conv_h[r * h, x]), h' = (1 - z) h + z h~.
    """

    def __init__(self, hidden_dim: int = 32, input_dim: int = 64, kernel_size: int = 3, ndim: int = 2) -> None:
        super().__init__()
        conv = nd(ndim).Conv
        pad = kernel_size // 2
        self.conv_r = conv(hidden_dim + input_dim, hidden_dim, kernel_size, padding=pad)
        self.conv_z = conv(hidden_dim + input_dim, hidden_dim, kernel_size, padding=pad)
        self.conv_h = conv(hidden_dim + input_dim, hidden_dim, kernel_size, padding=pad)

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        hx = torch.cat([h, x], dim=1)
        r = torch.sigmoid(self.conv_r(hx))  # eq. 4
        z = torch.sigmoid(self.conv_z(hx))  # eq. 5
        h_tilde = torch.tanh(self.conv_h(torch.cat([r * h, x], dim=1)))  # eq. 6
        return (1 - z) * h + z * h_tilde  # eq. 7


class DeformationFieldIterator(nn.Module):
    """One iteration: (hidden, search map, context, field) -> (new hidden, field update delta (B, ndim, *S)).

    The paper feeds the GRU "the search map and context" and predicts the update with "two convolutional
    layers". It does not say whether the current field is an input; we add it (as RAFT's motion encoder does),
    so the GRU knows where it already looked. ``context_dim=0`` runs without context (Table III).
    The paper does not say how the GRU's memory starts either: :meth:`initial_hidden` gives tanh(1x1 conv of
    the context), as RAFT starts its memory from its context network, or zeros without context.
    """

    def __init__(
        self, search_dim: int, context_dim: int = 32, hidden_dim: int = 32, motion_dim: int = 32, ndim: int = 2
    ) -> None:
        super().__init__()
        conv = nd(ndim).Conv
        self.ndim = ndim
        self.hidden_dim = hidden_dim
        self.motion_encoder = nn.Sequential(
            conv(search_dim + ndim, motion_dim, 3, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
            conv(motion_dim, motion_dim, 3, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        )
        self.gru = ConvGRU(hidden_dim, motion_dim + context_dim, ndim=ndim)
        self.flow_head = nn.Sequential(
            conv(hidden_dim, hidden_dim, 3, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
            conv(hidden_dim, ndim, 3, padding=1),
        )
        # Start near the identity transform, as VoxelMorph initialises its flow layer.
        nn.init.normal_(self.flow_head[-1].weight, std=1e-5)
        nn.init.zeros_(self.flow_head[-1].bias)
        self.init_hidden = conv(context_dim, hidden_dim, 1) if context_dim else None

    def initial_hidden(self, context: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        """H_0 (B, hidden_dim, *S): tanh(conv(context)), or zeros shaped like ``like`` (B, *, *S) without context."""
        if context is not None:
            return torch.tanh(self.init_hidden(context))
        return like.new_zeros(like.shape[0], self.hidden_dim, *like.shape[2:])

    def forward(
        self, hidden: torch.Tensor, search_map: torch.Tensor, context: torch.Tensor | None, flow: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.motion_encoder(torch.cat([search_map, flow], dim=1))
        if context is not None:
            x = torch.cat([x, context], dim=1)
        hidden = self.gru(hidden, x)
        return hidden, self.flow_head(hidden)
