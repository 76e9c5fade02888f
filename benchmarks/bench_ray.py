"""`lodsgs batch --ray` against the local batch: 4 short shapes prompts, sequential in this process vs a local
Ray with 2 one-CPU workers (lodsgs's actors, each loading the prior once), and vs the design not taken: one
Ray task per prompt in a fresh process (``max_calls=1``, Ray's default for tasks that ask for a GPU), which
imports torch and loads the prior again for every prompt. One run; prompts per minute and ratios."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from lodsgs.batch import run_batch
from lodsgs.config import load_config
from lodsgs.trainer import load_prior

PROMPTS = ["a red cube", "a blue torus", "a green cone", "a yellow sphere"]


def run(quick: bool = False) -> list[str]:
    try:
        import ray
    except ImportError:
        return ["ray is not installed (pip install 'lodsgs[ray]'): skipped"]
    from lodsgs.ray_batch import run_batch_ray

    @ray.remote(num_cpus=1, max_calls=1)
    def one_task(prompt: str, cfg, out: str) -> None:  # the design not taken: prior loaded per prompt
        from lodsgs import api

        api.run(prompt, cfg, Path(out), quiet=True, prior=load_prior(cfg, torch.device("cpu")))

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
            t0 = time.perf_counter()
            ray.get([one_task.remote(p, cfg, str(Path(tmp) / "tasks")) for p in PROMPTS])
            task_s = time.perf_counter() - t0
        finally:
            ray.shutdown()
    per_min = [60 * len(PROMPTS) / s for s in (local_s, ray_s, task_s)]
    return [f"{len(PROMPTS)} prompts x {steps} steps, shapes prior: local sequential {local_s:.1f} s "
            f"({per_min[0]:.2f} prompts/min); --ray, 2 one-CPU actors: {ray_s:.1f} s ({per_min[1]:.2f} prompts/min, "
            f"{per_min[1] / per_min[0]:.2f}x, worker start-up included); a task per prompt in a fresh process: "
            f"{task_s:.1f} s ({per_min[2]:.2f} prompts/min, {per_min[2] / per_min[0]:.2f}x)",
            f"  shapes prior load in this process {load_s:.2f} s (an actor pays it once per worker, not per prompt)"]

