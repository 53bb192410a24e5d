"""The seed study's U-Net as a pure ``nn.Module`` plus its config.

4 levels, 32 base channels, BatchNorm, transposed-convolution decoder, 4-band input and one
logit channel out (binary data center / background).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from model.errors import ConfigError


@dataclass(frozen=True)
class UNetConfig:
    """Shape of the U-Net.

    Attributes:
        in_channels: Input bands (NAIP: 4).
        base_channels: Channels of the first level; doubled at each level down.
        depth: Number of down-sampling levels (the seed used 4).
        num_classes: Output channels (1 = one logit for data center).
        dropout: Dropout before the head (enables MC-dropout uncertainty when > 0).
    """

    in_channels: int = 4
    base_channels: int = 32
    depth: int = 4
    num_classes: int = 1
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.in_channels < 1 or self.base_channels < 1 or self.depth < 1 or self.num_classes < 1:
            raise ConfigError(f"UNetConfig needs positive sizes, got {self}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"UNetConfig.dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        return asdict(self)


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net returning logits of shape (N, num_classes, H, W).

    Input height and width must be multiples of ``2 ** depth``.
    """

    def __init__(self, config: UNetConfig = UNetConfig()) -> None:
        super().__init__()
        self.config = config
        c = [config.base_channels * 2**i for i in range(config.depth + 1)]
        self.down = nn.ModuleList([_double_conv(config.in_channels, c[0])])
        self.down.extend(_double_conv(c[i], c[i + 1]) for i in range(config.depth))
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(c[i + 1], c[i], 2, stride=2) for i in reversed(range(config.depth))
        )
        self.up_conv = nn.ModuleList(_double_conv(2 * c[i], c[i]) for i in reversed(range(config.depth)))
        self.dropout = nn.Dropout2d(config.dropout) if config.dropout > 0 else nn.Identity()
        self.head = nn.Conv2d(c[0], config.num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up, conv in zip(self.up, self.up_conv, strict=True):
            x = conv(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(self.dropout(x))


def parameter_count(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
