"""Cost of `generate --view`: steps/s of the shapes profile without the viewer, with it (pushing every
`run.view_every` steps, no browser), and with headless chromium watching (software WebGL on the same cores,
so an upper bound; on a desktop the browser draws on the GPU). Same prompt, seed and steps in one run."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import tempfile
from pathlib import Path

import torch

from lodsgs import api
from lodsgs.config import load_config
from lodsgs.trainer import load_prior
from lodsgs.view import LiveView, Viewer


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _browser(url: str):
    """Headless chromium on ``url`` (None if chromium or playwright is missing)."""
    chromium = shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        chromium = None
    if chromium is None:
        yield None
        return
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True,
                              args=["--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader"])
        page = b.new_page(viewport={"width": 640, "height": 480})
        page.goto(url)
        page.wait_for_selector("canvas")
        yield page
        b.close()


def run(quick: bool = False) -> list[str]:
    steps = 40 if quick else 100
    cfg = load_config(None, ["prior.model=shapes", f"run.steps={steps}", "run.spz=false"])
    prior = load_prior(cfg, torch.device("cpu"))
    rates: dict[str, list[float]] = {"off": [], "view": [], "browser": []}
    with tempfile.TemporaryDirectory() as tmp:
        def one(mode: str, view: LiveView | None) -> None:
            run_dir = api.run("a red cube", cfg, Path(tmp) / f"{mode}{len(rates[mode])}", quiet=True,
                               prior=prior, on_step=view).run_dir
            rates[mode].append(json.loads((run_dir / "metrics.json").read_text())["steps_per_second"])

        viewer = Viewer("127.0.0.1", _port(), cfg.camera)
        for _ in range(2):  # interleaved, best of two: drift on a shared machine hits both alike
            one("off", None)
            one("view", LiveView(viewer, cfg.run.view_every))
        with _browser(viewer.url) as page:  # once: the browser's own drawing dominates
            if page is not None:
                one("browser", LiveView(viewer, cfg.run.view_every))
        viewer.close()
    off = max(rates["off"])
    lines = [f"shapes profile, {steps} steps, view every {cfg.run.view_every} steps: "
             f"{off:.2f} steps/s without --view"]
    for mode, label in (("view", "with --view, no browser"), ("browser", "with --view, headless chromium open")):
        if rates[mode]:
            best = max(rates[mode])
            lines.append(f"  {label}: {best:.2f} steps/s ({best / off:.2f}x the rate without)")
    return lines
