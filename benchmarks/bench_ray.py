"""`lodsgs batch --ray` against the local batch: 4 short shapes prompts, sequential in this process vs a local
Ray with 2 one-CPU workers, in one run (prompts per minute and their ratio), and the prior's load time that an
actor pays once and a fresh task process would pay per prompt."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from lodsgs.batch import run_batch
from lodsgs.config import load_config
from lodsgs.generate import load_prior

PROMPTS = ["a red cube", "a blue torus", "a green cone", "a yellow sphere"]


def run(quick: bool = False) -> list[str]:
    try:
        import ray
    except ImportError:
        return ["ray is not installed (pip install 'lodsgs[ray]'): skipped"]
    from lodsgs.ray_batch import run_batch_ray

    steps = 40 if quick else 100
    cfg = load_config(None, ["prior.model=shapes", f"run.steps={steps}", "run.turntable_frames=12"])
    t0 = time.perf_counter()
    load_prior(cfg, torch.device("cpu"))
    load_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run_batch(PROMPTS, cfg, Path(tmp) / "local", log=lambda _: None)
        local_s = time.perf_counter() - t0
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            t0 = time.perf_counter()
            run_batch_ray(PROMPTS, cfg, Path(tmp) / "ray", "local", 0, 1, 2, log=lambda _: None, progress=False)
            ray_s = time.perf_counter() - t0
        finally:
            ray.shutdown()
    per_min = [60 * len(PROMPTS) / s for s in (local_s, ray_s)]
    return [f"{len(PROMPTS)} prompts x {steps} steps, shapes prior: local sequential {local_s:.1f} s "
            f"({per_min[0]:.2f} prompts/min), --ray with 2 one-CPU workers {ray_s:.1f} s ({per_min[1]:.2f} "
            f"prompts/min, {per_min[1] / per_min[0]:.2f}x, Ray start included)",
            f"  shapes prior load in this process {load_s:.2f} s (an actor pays it once per worker, not per prompt)"]
