"""Helpers of the browser tests: Debian's chromium driven by Playwright, pages served on 127.0.0.1, and the
pixel comparisons (silhouette IoU, colour difference) against lodsgs's own render from the same camera."""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import math
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from lodsgs.cameras import orbit_cameras
from lodsgs.splats.model import Splats
from lodsgs.splats.render import render

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WEB_CACHE = Path(os.environ.get("LODSGS_WEB_CACHE", Path.home() / ".cache" / "lodsgs-web"))
FLAGS = ["--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-quic"]
# CI sets this so that a missing browser or npm cache fails the suite instead of skipping it
REQUIRED = os.environ.get("LODSGS_REQUIRE_BROWSER") == "1"


def free_port() -> int:
    """A TCP port nothing on this machine listens on now (for a viewer under test)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def need(condition: bool, why: str) -> None:
    if not condition:
        (pytest.fail if REQUIRED else pytest.skip)(why)


def need_browser() -> None:
    need(Path(CHROMIUM).exists(), f"no chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        import playwright  # noqa: F401
    except ImportError:
        need(False, "playwright is not installed (pip install -e .[browser])")


@contextlib.contextmanager
def serve(root: Path, extra: dict[str, Path] | None = None) -> Iterator[str]:
    """Serve ``root`` (and ``extra`` prefixes, e.g. {"npm": node_modules}) on 127.0.0.1; yields the base URL."""
    mounts = {f"/{k}/": Path(v) for k, v in (extra or {}).items()}

    class Handler(http.server.SimpleHTTPRequestHandler):
        def translate_path(self, path: str) -> str:
            for prefix, folder in mounts.items():
                if path.startswith(prefix):
                    return str(folder / path[len(prefix):].split("?")[0])
            return super().translate_path(path)

        def log_message(self, *args) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


_SHARED: list = []  # [playwright, browser] while a chromium is up (one for all tests: a start costs ~1.5 s)


def _chromium():
    from playwright.sync_api import sync_playwright

    if _SHARED and not _SHARED[1].is_connected():
        close_browser()
    if not _SHARED:
        playwright = sync_playwright().start()
        _SHARED[:] = [playwright, playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)]
    return _SHARED[1]


def close_browser() -> None:
    """Stop the shared chromium (test_browser.py does at the end of its module)."""
    if _SHARED:
        playwright, chromium = _SHARED
        _SHARED.clear()
        with contextlib.suppress(Exception):
            chromium.close()
        playwright.stop()


@contextlib.contextmanager
def browser_page(width: int, height: int) -> Iterator:
    """A fresh headless chromium page of ``width`` x ``height`` (its own browser context, in the chromium the
    tests share); page errors and off-machine requests are kept on ``page.problems``."""
    context = _chromium().new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.problems = []
    page.on("pageerror", lambda e: page.problems.append(f"page error: {e}"))
    page.on("request", lambda r: None if r.url.startswith(("http://127.0.0.1", "ws://127.0.0.1", "data:",
                                                           "blob:")) else page.problems.append(r.url))
    try:
        yield page
    finally:
        context.close()


def screenshot(page, background: np.ndarray, timeout_s: float = 30.0, wait_s: float = 0.5) -> np.ndarray:
    """The page as float RGB [H,W,3] once it is drawn and still: software rendering can give blank first
    frames and viewers fade splats in, so shoot until two shots in a row agree and differ from the background;
    fails the test if that does not happen within ``timeout_s``."""
    from PIL import Image

    previous, why = None, "no screenshot taken"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        img = np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB"), dtype=np.float32) / 255
        drawn = foreground(img, background).mean()
        change = np.abs(img - previous).max() if previous is not None else float("inf")
        if drawn > 0.001 and change < 1.5 / 255:
            return img
        why = f"{drawn:.2%} of the pixels drawn, {change * 255:.1f}/255 change since the last shot"
        previous = img
        time.sleep(wait_s)
    pytest.fail(f"the page never settled within {timeout_s:g} s ({why})")


def foreground(img: np.ndarray, background: np.ndarray) -> np.ndarray:
    return np.abs(img - background).sum(-1) > 0.1


def own_render(splats: Splats, position: tuple[float, float, float], fovy_deg: float, width: int,
               height: int, background: np.ndarray) -> np.ndarray:
    """lodsgs's render of ``splats`` from a camera at ``position`` looking at the origin (y up)."""
    x, y, z = position
    r = math.sqrt(x * x + y * y + z * z)
    elevation, azimuth = math.degrees(math.asin(y / r)), math.degrees(math.atan2(x, z))
    cams = orbit_cameras(elevation, azimuth, r, fovy_deg, width, height)
    with torch.no_grad():
        out = render(splats, cams, background=torch.tensor(background, dtype=torch.float32))
    return out.rgb[0].clamp(0, 1).numpy()


# How a viewer turns a projected Gaussian into alpha, by sigma = d²/2 (d: the pixel's Mahalanobis distance from
# the centre, in standard deviations) and opacity o. lodsgs follows gsplat (alpha = min(0.999, o·exp(-sigma)), dropped
# below 1/255: about 3.3 σ at o = 0.95); the viewers cut each Gaussian off at a fixed distance instead.
KERNELS = {
    "gsplat": lambda sigma, o: torch.where(o * torch.exp(-sigma) >= 1 / 255, (o * torch.exp(-sigma)).clamp_max(0.999),
                                           0.0),
    # Spark (SparkRenderer maxStdDev √8), Babylon.js (gaussianSplattingFragmentDeclaration: discard beyond A < -4),
    # GaussianSplats3D (its splat fragment shader: discard A > 8)
    "cut √8σ": lambda sigma, o: torch.where(sigma <= 4, o * torch.exp(-sigma), 0.0),
    # PlayCanvas (shader-lib gsplat frag normExp): cut at √8σ and faded to 0 there
    "faded to 0 at √8σ": lambda sigma, o: torch.where(
        sigma <= 4, o * (torch.exp(-sigma) - math.exp(-4)) / (1 - math.exp(-4)), 0.0),
    # three.js GaussianSplat (fragment node: discard r² > 4)
    "cut 2σ": lambda sigma, o: torch.where(sigma <= 2, o * torch.exp(-sigma), 0.0),
}


def kernel_render(splats: Splats, position: tuple[float, float, float], fovy_deg: float, width: int, height: int,
                  background: np.ndarray, kernel: str, tile: int = 32) -> np.ndarray:
    """lodsgs's splats drawn with a viewer's kernel (KERNELS), otherwise as ``own_render`` draws them (gsplat's
    projection and 0.3 px² low-pass, depth order, front-to-back blending), tile by tile with the Gaussians that
    reach each tile. Tells a viewer's own kernel cut-off apart from a misread file."""
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci, _spherical_harmonics

    x, y, z = position
    r = math.sqrt(x * x + y * y + z * z)
    cams = orbit_cameras(math.degrees(math.asin(y / r)), math.degrees(math.atan2(x, z)), r, fovy_deg, width, height)
    with torch.no_grad():
        covars, _ = _quat_scale_to_covar_preci(splats.quats, splats.scales, compute_covar=True, compute_preci=False)
        _, means2d, depths, conics, _ = _fully_fused_projection(
            splats.means, covars, cams.viewmats, cams.Ks, width, height, eps2d=0.3, near_plane=0.01, far_plane=1e10)
        campos = torch.linalg.inv(cams.viewmats)[0, :3, 3]
        colors = (_spherical_harmonics(splats.sh_degree, splats.means - campos, splats.sh) + 0.5).clamp_min(0.0)
        order = torch.argsort(depths[0])
        order = order[depths[0, order] > 0.01]
        means2d, conics, colors, opac = means2d[0, order], conics[0, order], colors[order], splats.opacities[order]
        a, b, c = conics.unbind(-1)
        reach = 3.5 * torch.sqrt(torch.maximum(c, a) / (a * c - b * b))  # px, beyond every kernel's cut-off
        bg = torch.as_tensor(background, dtype=torch.float32)
        img = bg.expand(height, width, 3).clone()
        for y0 in range(0, height, tile):
            for x0 in range(0, width, tile):
                y1, x1 = min(y0 + tile, height), min(x0 + tile, width)
                near = ((means2d[:, 0] + reach > x0) & (means2d[:, 0] - reach < x1) &
                        (means2d[:, 1] + reach > y0) & (means2d[:, 1] - reach < y1))
                if not near.any():
                    continue
                ys, xs = torch.meshgrid(torch.arange(y0, y1) + 0.5, torch.arange(x0, x1) + 0.5, indexing="ij")
                dx = means2d[near, 0, None] - xs.reshape(1, -1)
                dy = means2d[near, 1, None] - ys.reshape(1, -1)
                sigma = 0.5 * (a[near, None] * dx * dx + c[near, None] * dy * dy) + b[near, None] * dx * dy
                alpha = KERNELS[kernel](sigma, opac[near, None]).clamp_min(0.0)  # [n, P], front to back
                before = torch.cumprod(torch.cat([torch.ones_like(alpha[:1]), 1.0 - alpha]), 0)  # transmittance
                rgb = (alpha * before[:-1]).T @ colors[near] + before[-1][:, None] * bg
                img[y0:y1, x0:x1] = rgb.reshape(y1 - y0, x1 - x0, 3)
    return img.clamp(0, 1).numpy()


def compare(shot: np.ndarray, ours: np.ndarray, background: np.ndarray) -> dict[str, float]:
    """Silhouette IoU, and the mean colour difference on the pixels both call foreground."""
    a, b = foreground(shot, background), foreground(ours, background)
    both = a & b
    return {"iou": float(both.sum() / max((a | b).sum(), 1)),
            "colour_diff": float(np.abs(shot[both] - ours[both]).mean()) if both.any() else 1.0,
            "foreground": float(a.mean())}


def calibration_scene(n: int = 300, seed: int = 0) -> Splats:
    """Three coloured clusters in lodsgs's y-up world: red at +x stretched along x, green at +y stretched along
    y (a 90° turn about z), blue at +z round. Catches axis flips, quaternion order and colour scaling."""
    g = torch.Generator().manual_seed(seed)
    parts = []
    s45 = math.sqrt(0.5)
    for centre, rgb, scale, quat in (((0.6, 0, 0), (0.9, 0.1, 0.1), (0.12, 0.03, 0.03), (1, 0, 0, 0)),
                                     ((0, 0.6, 0), (0.1, 0.8, 0.1), (0.12, 0.03, 0.03), (s45, 0, 0, s45)),
                                     ((0, 0, 0.6), (0.1, 0.2, 0.9), (0.05, 0.05, 0.05), (1, 0, 0, 0))):
        parts.append({"means": torch.tensor(centre) + 0.06 * torch.randn(n, 3, generator=g),
                      "scales": torch.tensor(scale).log().expand(n, 3),
                      "quats": torch.tensor(quat, dtype=torch.float32).expand(n, 4),
                      "opacities": torch.full((n,), 3.0),
                      "sh0": ((torch.tensor(rgb) - 0.5) / 0.28209479177387814).expand(n, 1, 3)})
    return Splats({k: torch.cat([p[k] for p in parts]) for k in parts[0]})


def view_dependent(splats: Splats, seed: int = 0) -> Splats:
    """``splats`` made grey at degree 0 with the same fixed SH bands 1-3 on every Gaussian (|c| ≤ 0.25): colours
    that change with the view direction, band by band. A viewer that reads a band with the wrong sign or order
    (e.g. the odd bands' flip of the y-down file convention) draws other colours: a band's sign wrong moves the
    mean colour difference from about 0.01 to 0.14 or more."""
    g = torch.Generator().manual_seed(seed)
    coefficients = 0.25 * (2 * torch.rand(15, 3, generator=g) - 1)
    params = {k: v.detach().clone() for k, v in splats.params.items()}
    params["sh0"] = torch.zeros_like(params["sh0"])
    params["shN"] = coefficients.expand(splats.num, 15, 3).clone()
    return Splats(params, sh_degree=3)
