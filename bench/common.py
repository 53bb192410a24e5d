"""Shared helpers of the benchmarks: cached synthetic scenes and peak-RSS measurement."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

OUT = Path(__file__).resolve().parent / "out"


def synthetic_scene(size: int, seed: int = 0, difficulty: float = 1.0, site: str = "ashburn", **extra) -> Path:
    """A cached synthetic scene of ``size`` x ``size`` px (drawn once, reused by later runs);
    ``extra`` are further :class:`model.synth.SynthConfig` fields (part of the cache name)."""
    from model.synth import SynthConfig, generate_scene

    tag = "".join(f"_{k}{v:g}" if isinstance(v, float) else f"_{k}{v}" for k, v in sorted(extra.items()))
    tif = OUT / f"scene_{site}_{size}_s{seed}_d{difficulty:g}{tag}.tif"
    if not tif.exists():
        generate_scene(tif, tif.with_suffix(".geojson"),
                       SynthConfig(width=size, height=size, seed=seed, difficulty=difficulty, site=site, **extra))
    return tif


def tiled_scene(base: Path, size: int) -> Path:
    """A ``size`` x ``size`` scene made by repeating ``base`` (keeps realistic content at any size
    without drawing a huge scene in memory). Written block by block."""
    out = base.with_name(f"{base.stem}_tiled{size}.tif")
    if out.exists():
        return out
    with rasterio.open(base) as src:
        img = src.read()
        profile = src.profile | {"width": size, "height": size, "tiled": True, "blockxsize": 256,
                                 "blockysize": 256, "compress": "deflate", "BIGTIFF": "IF_SAFER"}
    bh, bw = img.shape[1:]
    tmp = out.with_suffix(".part.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        for r in range(0, size, bh):
            for c in range(0, size, bw):
                h, w = min(bh, size - r), min(bw, size - c)
                flip = img[:, ::-1] if (r // bh + c // bw) % 2 else img  # avoid exact repetition
                dst.write(np.ascontiguousarray(flip[:, :h, :w]), window=Window(c, r, w, h))
    tmp.rename(out)
    return out


def run_measured(cmd: list[str]) -> tuple[float, int]:
    """Run a command; return (wall seconds, peak RSS in MiB of the command's process tree)."""
    probe = (
        "import json,resource,subprocess,sys,time;"
        "t=time.perf_counter();r=subprocess.run(sys.argv[1:]);dt=time.perf_counter()-t;"
        "print(json.dumps({'rc':r.returncode,'s':dt,"
        "'rss':resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))"
    )
    res = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True)
    line = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else "{}"
    info = json.loads(line)
    if info.get("rc") != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
    return float(info["s"]), int(info["rss"]) // 1024
