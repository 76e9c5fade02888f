"""File sizes of the same splats as .ply, .spz version 2 (gzip) and .spz version 4 (zstd streams): the shapes
world's "a red cube" and 50,000 random Gaussians at SH degree 3 (Splats.random_ball, SH coefficients N(0, 0.1²)).
Bytes are deterministic: the numbers depend only on the zstandard and zlib libraries.

Usage: python -m benchmarks.bench_spz   (or python -m benchmarks.run spz)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from lodsgs.prior.shapes.world import build_object
from lodsgs.splats.io import write_ply
from lodsgs.splats.model import Splats
from lodsgs.splats.spz import encode_spz


def random_sh3(n: int = 50_000) -> Splats:
    """``n`` Gaussians in a ball with random colours and SH degree 3 coefficients drawn N(0, 0.1²)."""
    s = Splats.random_ball(n, seed=0, sh_degree=3)
    s.params["shN"].data = torch.randn(s.params["shN"].shape, generator=torch.Generator().manual_seed(0)) * 0.1
    return s


def sizes(name: str, splats: Splats) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        write_ply(splats, Path(tmp) / "s.ply")
        ply = (Path(tmp) / "s.ply").stat().st_size
    v2, v4 = len(encode_spz(splats, version=2)), len(encode_spz(splats, version=4))
    return (f"  {name} ({splats.num:,} Gaussians, SH degree {splats.sh_degree}): .ply {ply:,} B, .spz v2 {v2:,} B, "
            f"v4 {v4:,} B (v4/v2 {v4 / v2:.0%})")


def run(quick: bool = False) -> list[str]:
    return [sizes("a red cube", build_object("a red cube")), sizes("random", random_sh3(5_000 if quick else 50_000))]


if __name__ == "__main__":
    print("\n".join(run()))
