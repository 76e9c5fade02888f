"""Generation steps/s of the fast preset on the tiny prior (CPU), split into prior / render / rest."""

from __future__ import annotations

import tempfile
import time

import torch

import lodsgs.trainer as gen
from lodsgs.config import load_config


def run(quick: bool = False) -> list[str]:
    from lodsgs.prior.tiny import build_tiny_prior

    steps = 10 if quick else 40
    with tempfile.TemporaryDirectory() as d:
        model = build_tiny_prior(f"{d}/latent", "latent")
        cfg = load_config("fast", [f"prior.model={model}", "camera.width=64", "camera.height=64"])
        device = torch.device("cpu")
        s = gen.build_state(cfg, "a corgi", gen.load_prior(cfg, device), device)
        gen.train_step(cfg, s, device)  # warm-up
        totals = {"render": 0.0, "prior": 0.0}
        real_render, real_call = gen.render, type(s.guidance).__call__

        def render(*a, **k):
            t = time.perf_counter()
            out = real_render(*a, **k)
            totals["render"] += time.perf_counter() - t
            return out

        def call(self, *a, **k):
            t = time.perf_counter()
            out = real_call(self, *a, **k)
            totals["prior"] += time.perf_counter() - t
            return out

        gen.render, type(s.guidance).__call__ = render, call
        try:
            start = time.perf_counter()
            for _ in range(steps):
                gen.train_step(cfg, s, device)
            total = time.perf_counter() - start
        finally:
            gen.render, type(s.guidance).__call__ = real_render, real_call
    rest = total - totals["render"] - totals["prior"]
    return [f"fast preset, tiny latent prior, CPU, batch {cfg.run.batch} at 64²: {steps / total:.2f} steps/s",
            f"  prior (guidance forward) {totals['prior'] / total:6.1%}",
            f"  render (forward)         {totals['render'] / total:6.1%}",
            f"  rest (backward through both, optimizer, densify) {rest / total:6.1%}"]
