"""CPU rasterizer speed: forward+backward for 4 cameras at 64² and 128², against the dense oracle.

The dense oracle's cost is exactly proportional to Gaussians × pixels, so it is timed on horizontal strips
(principal point shifted, at most ~4M Gaussian-pixel pairs per strip, the size it runs fastest at) of one
camera, over R of the H rows, and scaled by (H / R) × 4 cameras. Each line says R / H.
"""

from __future__ import annotations

import time

import torch

from lodsgs.cameras import Cameras, orbit_cameras
from lodsgs.splats.model import Splats
from lodsgs.splats.raster_dense import render_dense
from lodsgs.splats.render import render

N_CAMERAS = 4
DENSE_PAIRS_PER_STRIP = 4_000_000


def scene(n: int, seed: int = 0) -> Splats:
    """The test convention: a ball of radius 0.5, world sizes 0.01-0.05, opacities 0.1-0.9, random colours."""
    g = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    params = {"means": d * 0.5 * torch.rand(n, 1, generator=g) ** (1 / 3),
              "scales": torch.log(0.01 + 0.04 * torch.rand(n, 3, generator=g)),
              "quats": torch.randn(n, 4, generator=g),
              "opacities": torch.logit(0.1 + 0.8 * torch.rand(n, generator=g)),
              "sh0": torch.randn(n, 1, 3, generator=g)}
    return Splats(params)


def cameras(size: int) -> Cameras:
    return orbit_cameras(torch.tensor([0.0, 20.0, 10.0, 35.0]), torch.tensor([0.0, 90.0, 180.0, 270.0]),
                         2.7, 50.0, size, size)


def time_raster(splats: Splats, cams: Cameras, reps: int) -> tuple[float, float, int]:
    """Median seconds of (forward, backward) over ``reps`` runs after one warm-up, and the pair count."""
    runs = []
    for _ in range(reps + 1):
        splats.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        out = render(splats, cams, background=(1.0, 1.0, 1.0))
        loss = out.rgb.mean() + out.alpha.mean()
        t1 = time.perf_counter()
        loss.backward()
        runs.append((t1 - t0, time.perf_counter() - t1))
    runs = sorted(runs[1:], key=sum)
    fwd, bwd = runs[len(runs) // 2]
    return fwd, bwd, out.meta["n_pairs"]


def time_dense(splats: Splats, cams: Cameras, rows: int) -> float:
    """Seconds for dense forward+backward of camera 0 over its ``rows`` central rows, in strips."""
    size = cams.width
    strip = max(1, min(rows, DENSE_PAIRS_PER_STRIP // (splats.num * size)))
    first = (size - rows) // 2
    total = 0.0
    for row0 in range(first, first + rows, strip):
        h = min(strip, first + rows - row0)
        Ks = cams.Ks[:1].clone()
        Ks[:, 1, 2] -= row0  # the strip is the sub-image starting at row0
        splats.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        rgb, alpha, _ = render_dense(splats.means, splats.quats, splats.scales, splats.opacities, splats.sh,
                                     cams.viewmats[:1], Ks, size, h, 0, torch.ones(1, 3))
        (rgb.sum() + alpha.sum()).backward()
        total += time.perf_counter() - t0
    return total


def run(quick: bool = False) -> list[str]:
    """Printable lines: rasterizer ms per config, dense estimate, the 16k speedup and the 4 × 8k line."""
    torch.manual_seed(0)
    reps = 1 if quick else 3
    sizes = [64] if quick else [64, 128]
    counts = [4000, 16000] if quick else [4000, 16000, 64000]
    # rows of camera 0 the dense oracle is timed on, per (size, n): all of them for the headline case
    dense_rows = {(64, 4000): 64, (64, 16000): 16 if quick else 64, (64, 64000): 4,
                  (128, 4000): 32, (128, 16000): 8, (128, 64000): 4}
    lines = [f"CPU rasterizer, forward+backward of {N_CAMERAS} cameras (median of {reps}), "
             f"torch threads {torch.get_num_threads()}; dense = oracle timed on R/H rows of 1 camera, "
             f"scaled x(H/R)x{N_CAMERAS}"]
    speedup_16k = None
    for size in sizes:
        cams = cameras(size)
        for n in counts:
            splats = scene(n)
            fwd, bwd, pairs = time_raster(splats, cams, reps)
            rows = dense_rows[(size, n)]
            dense = time_dense(splats, cams, rows) * size / rows * N_CAMERAS
            speedup = dense / (fwd + bwd)
            if (size, n) == (64, 16000):
                speedup_16k = speedup
            lines.append(f"  {size}x{size} {n // 1000:>2}k: {(fwd + bwd) * 1e3:7.1f} ms "
                         f"(fwd {fwd * 1e3:.1f} + bwd {bwd * 1e3:.1f}), {pairs / 1e6:.2f}M pairs | "
                         f"dense {dense:6.1f} s (R/H = {rows}/{size}) | {speedup:.0f}x")
    splats = scene(8000, seed=1)
    fwd, bwd, _ = time_raster(splats, cameras(64), 1 if quick else 5)
    lines.append(f"4 views x 8k at 64x64: {(fwd + bwd) * 1e3:.1f} ms forward+backward "
                 f"(fwd {fwd * 1e3:.1f} + bwd {bwd * 1e3:.1f})")
    lines.append(f"speedup 64x64 16k: {speedup_16k:.0f}x")
    return lines
