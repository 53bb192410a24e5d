"""Seeded generators of tiny georeferenced test data (GeoTIFF scenes with a real UTM CRS)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from shapely.geometry import box

from model.checkpoint import Checkpoint, Normalization
from model.scene import write_geotiff
from model.unet import UNet, UNetConfig

UTM18N = CRS.from_epsg(32618)
ORIGIN = (285_000.0, 4_320_000.0)  # Ashburn, Virginia, in UTM 18N


def scene_transform(res: float = 0.6, origin=ORIGIN) -> Affine:
    return Affine(res, 0, origin[0], 0, -res, origin[1])


def make_scene(
    path: Path,
    size: tuple[int, int] = (256, 256),
    buildings: list[tuple[int, int, int, int]] = (),
    seed: int = 0,
    bands: int = 4,
    crs: CRS | None = UTM18N,
    res: float = 0.6,
) -> tuple[Path, list]:
    """A textured scene with bright rectangular "roofs" at pixel boxes (row0, col0, row1, col1).

    Returns:
        The GeoTIFF path and the building footprints as shapely boxes in the scene CRS.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    img = rng.normal(90, 20, (bands, h, w))
    img[min(3, bands - 1)] += 40  # vegetation-ish NIR
    t = scene_transform(res)
    polys = []
    for r0, c0, r1, c1 in buildings:
        img[:, r0:r1, c0:c1] = 220 + rng.normal(0, 4, (bands, r1 - r0, c1 - c0))
        img[:, r0:r1:8, c0:c1:8] = 40  # rooftop units
        x0, y0 = t @ (c0, r0)
        x1, y1 = t @ (c1, r1)
        polys.append(box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
    arr = np.clip(img, 0, 255).astype(np.uint8)
    if crs is None:
        import rasterio

        path.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=bands, dtype="uint8") as dst:
            dst.write(arr)
        return path, polys
    write_geotiff(path, arr, crs, t)
    return path, polys


def constant_checkpoint(p: float) -> Checkpoint:
    """A U-Net whose output is ``p`` everywhere (all weights zero, head bias = logit(p))."""
    import torch

    cfg = UNetConfig(base_channels=4, depth=2)
    net = UNet(cfg)
    with torch.no_grad():
        for prm in net.parameters():
            prm.zero_()
        net.head.bias.fill_(float(np.log(p / (1 - p))))
    return Checkpoint(net.state_dict(), cfg, Normalization((0,) * 4, (1,) * 4))
