"""DCN-v2 (Wang et al., "DCN V2: Improved Deep & Cross Network and Practical Lessons for Web-scale Learning to Rank
Systems", WWW 2021), parallel form: a cross network and a small MLP read the same standardised feature row, and one
linear layer over both outputs gives the candidate's score.

A cross layer is x_{l+1} = x_0 * (W_l x_l + b_l) + x_l with a full-rank W_l: each layer raises the degree of the
feature crosses by one, so two layers reach the products of three features (a source's score with the user's
history length and the item's age, say) that a weighted sum cannot express.

Layers and `forward` only: training lives in domain.learning.dcn, and serving runs the same forward pass in numpy
(domain.learning.rankers) from the exported weights, so that serving never imports torch.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn


class DCN(nn.Module):
    """`cross_layers` cross layers beside `deep_layers` ReLU layers of width `hidden`, then a linear output."""

    def __init__(self, features: int, *, cross_layers: int = 2, hidden: int = 32, deep_layers: int = 2,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.cross = nn.ModuleList(nn.Linear(features, features) for _ in range(cross_layers))
        widths = [features] + [hidden] * deep_layers
        self.deep = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(features + widths[-1], 1)
        for layer in self.cross:  # start as the identity (x_l = x_0): each cross layer learns a correction
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @torch.no_grad()
    def start_from(self, feature: int) -> None:
        """Make the output that one input feature (standardised: the order is that feature's order), so that training
        starts from an existing ranking (fusion's) and learns corrections to it."""
        self.out.weight.zero_()
        self.out.bias.zero_()
        self.out.weight[0, feature] = 1.0

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        """Return the score of every row (..., features) -> (...)."""
        x = x0
        for layer in self.cross:
            x = x0 * layer(x) + x
        h = x0
        for layer in self.deep:
            h = self.dropout(torch.relu(layer(h)))
        return self.out(torch.cat([x, h], dim=-1)).squeeze(-1)
