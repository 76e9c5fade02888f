"""The shapes prior's own profile (its budget, the default method): steps/s and where a step's time goes.

Each section is timed around its own call; the two backward passes are run separately (the guidance
loss reaches only the splats through the renderer, the prior loss only α through the UNet), which gives
the same gradients as the generator's single summed backward.
"""

from __future__ import annotations

import time
from collections import defaultdict

import torch

import lodsgs.generate as gen
from benchmarks.sections import timed_sections
from lodsgs.cameras import sample_cameras, view_labels
from lodsgs.config import load_config
from lodsgs.splats.render import render

ROWS = [("unet", "UNet, CFG pair (ε_c, ε_u)"), ("prior", "prior loss fwd+bwd (UNet → α)"),
        ("render", "render fwd+bwd"), ("optim", "optimizer steps"), ("densify", "densify / prune"),
        ("rest", "rest (cameras, encode, text, fused op)")]


def run(quick: bool = False) -> list[str]:
    cfg = load_config(None, ["prior.model=shapes"])
    steps = 60 if quick else cfg.run.steps
    device = torch.device("cpu")
    s = gen.build_state(cfg, "a red cube", gen.load_prior(cfg, device), device)
    t: dict[str, float] = defaultdict(float)
    background = torch.tensor(cfg.render.background, dtype=torch.float32)
    with timed_sections(s.guidance) as timings:
        start = time.perf_counter()
        while s.step < steps:
            gen.set_lrs(cfg, s)
            t0 = time.perf_counter()
            cams = sample_cameras(cfg.camera, cfg.run.batch, s.camera_rng)
            t1 = time.perf_counter()
            out = render(s.splats, cams, background=background)
            s.densifier.step_pre_backward(s.splats, s.optimizers, out.meta, s.step)
            t2 = time.perf_counter()
            g = s.guidance(out.rgb, view_labels(cams, cfg.camera), s.step)
            t3 = time.perf_counter()
            for opt in gen._all_optimizers(s):
                opt.zero_grad(set_to_none=True)
            g.prior_loss.backward()
            t4 = time.perf_counter()
            (g.loss + gen.opaque_term(cfg, out.alpha)).backward()
            t5 = time.perf_counter()
            for opt in gen._all_optimizers(s):
                opt.step()
            t6 = time.perf_counter()
            s.densifier.step_post_backward(s.splats, s.optimizers, out.meta, s.step)
            s.step += 1
            t7 = time.perf_counter()
            t["render"] += (t2 - t1) + (t5 - t4)  # the guidance loss's backward is the renderer's (pixel prior)
            t["prior"] += t4 - t3
            t["optim"] += t6 - t5
            t["densify"] += t7 - t6
            t["rest"] += (t1 - t0) + (t3 - t2)
        total = time.perf_counter() - start
    t["unet"] = timings.get("unet", 0.0)
    t["prior"] += timings.get("prior_loss", 0.0)
    t["rest"] -= timings.get("unet", 0.0) + timings.get("prior_loss", 0.0)
    lines = [f"shapes profile ({cfg.guidance.method}, batch {cfg.run.batch} at {cfg.camera.width}², "
             f"{steps} steps): {steps / total:.2f} steps/s, {total:.1f} s, {s.splats.num} Gaussians at the end"]
    lines += [f"  {label:42s} {t[key] / total:6.1%}" for key, label in ROWS]
    return lines
