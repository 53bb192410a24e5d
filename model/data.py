"""Datasets and augmentation. Datasets read and return ``{"image", "mask"}`` dicts (plus
``"weight"``, the separation weight map of :func:`separation_weights`, when asked for).

Images stay in raw uint8 units (as float32 0..255); the model normalises them with the
per-band statistics stored in its checkpoint, so training and inference share one path.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
import rasterio.errors
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from model.checkpoint import Normalization
from model.errors import LabelError, SceneError
from model.ground import ground_metres_per_unit, lonlat

ChipPair = tuple[np.ndarray, np.ndarray]  # (image uint8 (C,H,W), mask uint8 (H,W))


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the 8 dihedral transforms (rotations by 90 degrees, then a flip) of (..., H, W)."""
    x = torch.rot90(x, k % 4, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if k >= 4 else x


def dihedral_inverse(x: torch.Tensor, k: int) -> torch.Tensor:
    """Undo :func:`dihedral` with the same ``k``."""
    if k >= 4:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, -(k % 4), dims=(-2, -1))


def separation_weights(mask: np.ndarray, w0: float, sigma_px: float) -> np.ndarray:
    """Per-pixel loss weights that stress the background between neighbouring footprints.

    The weight map of the original U-Net paper (Ronneberger et al. 2015, eq. 2) without its class
    balancing term: ``1 + w0 * exp(-(d1 + d2)^2 / (2 sigma^2))`` on background pixels, where d1 and
    d2 are the distances to the nearest and second-nearest footprint (8-connected components of
    ``mask``). The yard between two buildings of a campus is then costly to paint over, which is
    what otherwise joins them into one polygon; background far from a second footprint keeps 1.

    Args:
        mask: (H, W) mask, non-zero = footprint.
        w0: Peak extra weight.
        sigma_px: Distance scale in pixels (gaps of about 2 sigma still get ``w0 * e^-2``).

    Returns:
        float32 (H, W) weights >= 1 (all ones when the mask holds fewer than two footprints).
    """
    fg = np.asarray(mask) > 0
    labels, n = ndimage.label(fg, structure=np.ones((3, 3), bool))
    weights = np.ones(fg.shape, np.float32)
    if n < 2 or w0 <= 0:
        return weights
    d1 = np.full(fg.shape, np.inf, np.float32)
    d2 = np.full(fg.shape, np.inf, np.float32)
    for k in range(1, n + 1):
        d = ndimage.distance_transform_edt(labels != k).astype(np.float32)
        d2 = np.minimum(d2, np.maximum(d1, d))
        d1 = np.minimum(d1, d)
    extra = w0 * np.exp(-((d1 + d2) ** 2) / (2.0 * sigma_px**2))
    weights[~fg] += extra[~fg]
    return weights


def compute_normalization(images: Sequence[np.ndarray], max_images: int = 512) -> Normalization:
    """Per-band mean and std over (a sample of) uint8 (C, H, W) images."""
    if len(images) == 0:
        raise LabelError("cannot compute band statistics: no training images were given.")
    idx = np.linspace(0, len(images) - 1, min(len(images), max_images)).astype(int)
    total = total_sq = 0.0
    count = 0
    for i in idx:
        img = np.asarray(images[i], dtype=np.float64)
        total = total + img.sum(axis=(1, 2))
        total_sq = total_sq + (img**2).sum(axis=(1, 2))
        count += img.shape[1] * img.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1.0))
    return Normalization(tuple(float(m) for m in mean), tuple(float(s) for s in std))


class ChipDataset(Dataset):
    """Chips and masks held by (or lazily read through) a sequence of ``(image, mask)`` pairs.

    Args:
        pairs: Sequence of (uint8 (C,H,W), uint8 (H,W)); may be lazy (see :class:`ChipFolder`).
        augment: Random dihedral transform and per-band brightness/contrast jitter.
        seed: Seed of the augmentation generator.
        separation: ``(w0, sigma_px)``: also return ``"weight"``, :func:`separation_weights` of the mask.
    """

    def __init__(self, pairs: Sequence[ChipPair], augment: bool = False, seed: int = 0,
                 separation: tuple[float, float] | None = None) -> None:
        self.pairs = pairs
        self.augment = augment
        self.seed = seed
        self._rng: np.random.Generator | None = None
        self._rng_key: tuple | None = None
        self.separation = separation

    @property
    def rng(self) -> np.random.Generator:
        """The augmentation generator of this process: ``seed`` in the main process (rank 0), and in
        each DataLoader worker one also seeded by the worker's own torch seed (distinct per worker
        and per epoch, derived from the loader's seeded generator), so workers and DDP ranks do not
        draw the same flips and jitter."""
        info = torch.utils.data.get_worker_info()
        rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)
        key = (os.getpid(), None if info is None else info.seed, rank)
        if self._rng is None or self._rng_key != key:
            entropy = [self.seed, info.seed] if info is not None else [self.seed, rank] if rank else self.seed
            self._rng, self._rng_key = np.random.default_rng(entropy), key
        return self._rng

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image, mask = self.pairs[i]
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        y = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None]
        if self.augment:
            k = int(self.rng.integers(8))
            x, y = dihedral(x, k), dihedral(y, k)
            gain = torch.from_numpy(self.rng.uniform(0.85, 1.15, (x.shape[0], 1, 1)).astype(np.float32))
            offset = torch.from_numpy(self.rng.uniform(-12, 12, (x.shape[0], 1, 1)).astype(np.float32))
            mean = x.mean(dim=(1, 2), keepdim=True)
            x = ((x - mean) * gain + mean + offset).clamp(0, 255)
        out = {"image": x.contiguous(), "mask": y.contiguous()}
        if self.separation is not None:  # from the transformed mask: distances commute with the flips
            out["weight"] = torch.from_numpy(separation_weights(y[0].numpy(), *self.separation))[None]
        return out


class ChipFolder(Sequence):
    """Lazy ``(image, mask)`` pairs from the seed's layout: ``chips/NAME.tif`` + ``masks/NAME.tif``.

    A chip without a mask file raises :class:`LabelError` naming both folders.
    """

    def __init__(self, chips_dir: str | os.PathLike, masks_dir: str | os.PathLike, bands=(1, 2, 3, 4)):
        self.chips_dir, self.masks_dir = Path(chips_dir), Path(masks_dir)
        if not self.chips_dir.is_dir():
            raise SceneError(f"{self.chips_dir}: no such folder. Expected a folder of chip GeoTIFFs.")
        self.chips = sorted(p for p in self.chips_dir.iterdir() if p.suffix.lower() in (".tif", ".tiff"))
        if not self.chips:
            raise SceneError(f"{self.chips_dir}: holds no .tif chips.")
        missing = [p.name for p in self.chips if not (self.masks_dir / p.name).exists()]
        if missing:
            raise LabelError(
                f"{self.masks_dir}: no mask for {len(missing)} chip(s) of {self.chips_dir} "
                f"(first: {missing[0]}). Run `dclabel create-masks` first."
            )
        self.bands = tuple(bands)

    def __len__(self) -> int:
        return len(self.chips)

    def check(self, multiple: int = 1) -> None:
        """Check every chip and its mask before training (headers and mask pixels; fast).

        Raises:
            SceneError: A file that is not a raster; chips of different sizes, or a size that is not
                a multiple of ``multiple`` (the U-Net halves it once per level).
            LabelError: The masks folder is the chips folder; a mask on another grid than its chip
                (size, position or CRS); no mask with any data center.
        """
        if self.masks_dir.resolve() == self.chips_dir.resolve():
            raise LabelError(f"--masks-dir {self.masks_dir} is the chips folder; give the folder `dclabel "
                             "create-masks` wrote the masks to.")
        sizes: dict[tuple[int, int], str] = {}
        positive = 0
        for chip in self.chips:
            mask_path = self.masks_dir / chip.name
            grids = []
            for path in (chip, mask_path):
                try:
                    with rasterio.open(path) as src:
                        grids.append((src.width, src.height, src.transform, src.crs))
                        if path is mask_path:
                            positive += bool((src.read(1) > 0).any())
                except rasterio.errors.RasterioIOError as exc:
                    raise SceneError(f"{path}: not a raster GDAL can read ({exc}); the folder should hold "
                                     "only GeoTIFF chips and masks: move this file out.") from exc
            (w, h, t, crs), (mw, mh, mt, mcrs) = grids
            if (w, h) != (mw, mh) or not t.almost_equals(mt, precision=1e-3 * abs(t.a)) or (
                    crs is not None and mcrs is not None and crs != mcrs):
                raise LabelError(f"{mask_path}: the mask is {mw} x {mh} px at {tuple(mt)[:6]} in {mcrs}, its chip "
                                 f"{chip} is {w} x {h} px at {tuple(t)[:6]} in {crs}; a mask must lie on its "
                                 "chip's grid: make the masks with `dclabel create-masks` from these chips.")
            sizes.setdefault((w, h), chip.name)
        if len(sizes) > 1:
            shown = ", ".join(f"{w} x {h} ({name})" for (w, h), name in list(sizes.items())[:3])
            raise SceneError(f"{self.chips_dir}: chips of different sizes ({shown}); a batch needs one size: cut "
                             "them again at one size, or train on each size's folder separately.")
        (w, h), name = next(iter(sizes.items()))
        if w % multiple or h % multiple:
            raise SceneError(f"{self.chips_dir / name}: chips are {w} x {h} px; the U-Net needs a multiple of "
                             f"{multiple} (it halves the size once per level): cut chips of e.g. 256 px.")
        if not positive:
            raise LabelError(f"{self.masks_dir}: none of the {len(self.chips)} masks holds a data center; a "
                             "model cannot learn the class from background alone: add chips with data centers.")

    def resolution_m(self) -> float | None:
        """Median pixel size of the georeferenced chips in metres (None when none has a projected CRS)."""
        sizes = []
        for chip in self.chips:
            with rasterio.open(chip) as src:
                if src.crs is not None and src.crs.is_projected:
                    factor = ground_metres_per_unit(src.crs, *lonlat(src.crs, *src.xy(src.height // 2, src.width // 2)))
                    sizes.append((abs(src.transform.a) + abs(src.transform.e)) / 2 * factor)
        return float(np.median(sizes)) if sizes else None

    def __getitem__(self, i):  # type: ignore[override]
        with rasterio.open(self.chips[i]) as src:
            if src.count < len(self.bands):
                raise SceneError(f"{self.chips[i]}: expected {len(self.bands)} bands, found {src.count}.")
            if src.dtypes[0] != "uint8":  # per-chip scaling would differ chip to chip; a cast would wrap
                raise SceneError(f"{self.chips[i]}: expected 8-bit chips (uint8, as NAIP), found {src.dtypes[0]}. "
                                 "Convert them with one scale for all, e.g. `gdal_translate -ot Byte -scale 0 4095 0 255`, "
                                 "or cut chips from the scene with `dclabel init`/`write_chips`, which scale it once.")
            image = src.read(list(self.bands))
        with rasterio.open(self.masks_dir / self.chips[i].name) as src:
            mask = (src.read(1) > 0).astype(np.uint8)
        return image.astype(np.uint8), mask
