"""What the demo project holds, and where it lives (no heavy imports: the CLI reads it)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from model.errors import ConfigError

DEMO_DIR_ENV = "DCLABEL_DEMO_DIR"


@dataclass(frozen=True)
class DemoConfig:
    """What the demo project holds.

    Attributes:
        size: Scene side in pixels (0.6 m each).
        seed: Seed of the scene generator.
        site: Real cluster layout: ``ashburn`` or ``santa_clara``.
        seed_fraction: Fraction of the scene's chips that come labeled and reviewed (the "few
            labels to start from"; see :func:`loop.demo.seed_labels` for which).
        initial_epochs: Epochs of the first model (0 = no model: the queue starts cold).
        base_channels: Width of the first model's U-Net.
    """

    size: int = 2048
    seed: int = 0
    site: str = "ashburn"
    seed_fraction: float = 0.375
    initial_epochs: int = 25
    base_channels: int = 16

    def __post_init__(self) -> None:
        if not 0.0 <= self.seed_fraction <= 1.0:
            raise ConfigError(f"--seed-fraction must be in 0..1 (a share of the chips), got {self.seed_fraction}")
        if self.initial_epochs < 0:
            raise ConfigError(f"--epochs must be 0 (no first model) or more, got {self.initial_epochs}")


def default_demo_dir() -> Path:
    """``$DCLABEL_DEMO_DIR``, else ``~/.dclabel/demo``."""
    return Path(os.environ.get(DEMO_DIR_ENV) or Path.home() / ".dclabel" / "demo")
