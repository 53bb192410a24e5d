"""``dclabel demo``: write the demo project (synthetic scene, seed labels, first model)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``dclabel demo`` to the parser."""
    from loop.demo_config import DemoConfig, default_demo_dir

    d = DemoConfig()
    p = sub.add_parser("demo", help="create the demo project (synthetic NAIP-like scene, seed labels, model)")
    p.add_argument("--output-dir", type=Path, default=None, help=f"project folder (default {default_demo_dir()})")
    p.add_argument("--size", type=int, default=d.size, help="scene side in pixels")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--site", choices=["ashburn", "santa_clara"], default=d.site)
    p.add_argument("--seed-fraction", type=float, default=d.seed_fraction, help="labeled share of the scene")
    p.add_argument("--epochs", type=int, default=d.initial_epochs, help="epochs of the first model (0: none)")
    p.set_defaults(func=_demo)


def _demo(a: argparse.Namespace) -> int:
    from loop.demo import DemoConfig, ensure_demo_project

    cfg = DemoConfig(size=a.size, seed=a.seed, site=a.site, seed_fraction=a.seed_fraction,
                     initial_epochs=a.epochs)
    root = ensure_demo_project(a.output_dir, cfg, progress=lambda d, t, i: print(f"[{d}/{t}] {i['step']}"))
    print(f"demo project ready: {root}\n  open it with: dclabel app {root}")
    return 0
