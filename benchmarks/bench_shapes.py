"""The shapes prior's own profile (its budget, the default method): steps/s of ``generate.train_step`` itself,
where a step's time goes, and the size of the files the run's splats make.

The loop runs the real ``train_step``; the parts are timed by wrapping, for this run only, what it calls: the
renderer's forward, the UNet's forward (every call: the CFG pair and the prior loss), the one joint backward
(the renderer's and the UNet's), the optimizer steps and densification. The rest is cameras, image
encoding, text embeddings and the fused op.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import torch

import lodsgs.trainer as gen
from lodsgs.config import load_config
from lodsgs.splats.io import write_ply
from lodsgs.splats.spz import encode_spz, write_spz

ROWS = [("unet", "UNet forward (CFG pair, prior loss)"), ("render", "render forward"),
        ("backward", "joint backward (render + UNet → α)"), ("optim", "optimizer steps"),
        ("densify", "densify / prune"), ("rest", "rest (cameras, encode, text, fused op)")]


@contextlib.contextmanager
def timed(owner, name: str, totals: dict[str, float], key: str) -> Iterator[None]:
    """Add the time of every call of ``owner.name`` to ``totals[key]`` while the block runs."""
    real = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            totals[key] += time.perf_counter() - start

    setattr(owner, name, wrapper)
    try:
        yield
    finally:
        if isinstance(owner, type):
            setattr(owner, name, real)
        else:
            delattr(owner, name)  # the instance falls back to its class's method again


@contextlib.contextmanager
def timed_module(module: torch.nn.Module, totals: dict[str, float], key: str) -> Iterator[None]:
    """Add the time of every forward of ``module`` to ``totals[key]`` (forward hooks; no code changed)."""
    starts: list[float] = []
    pre = module.register_forward_pre_hook(lambda *_: starts.append(time.perf_counter()))
    post = module.register_forward_hook(lambda *_: totals.__setitem__(key, totals[key] + time.perf_counter()
                                                                       - starts.pop()))
    try:
        yield
    finally:
        pre.remove(), post.remove()


def file_sizes(splats) -> str:
    """What the run's splats weigh as .ply and .spz (the .ply's bytes a Gaussian after its header)."""
    with tempfile.TemporaryDirectory() as tmp:
        ply, spz = Path(tmp) / "s.ply", Path(tmp) / "s.spz"
        write_ply(splats, ply)
        write_spz(splats, spz)
        header = ply.read_bytes().index(b"end_header\n") + len(b"end_header\n")
        per = (ply.stat().st_size - header) / splats.num
        v2 = len(encode_spz(splats, version=2))
        return (f"  files of these {splats.num:,} Gaussians (SH degree {splats.sh_degree}): .ply "
                f"{ply.stat().st_size / 1000:.0f} kB ({per:.0f} B a Gaussian), .spz {spz.stat().st_size / 1000:.0f} kB "
                f"(version 4; version 2: {v2 / 1000:.0f} kB)")


def run(quick: bool = False) -> list[str]:
    cfg = load_config(None, ["prior.model=shapes"])
    steps = 60 if quick else cfg.run.steps
    device = torch.device("cpu")
    prior = gen.load_prior(cfg, device)
    s = gen.build_state(cfg, "a red cube", prior, device)
    t: dict[str, float] = defaultdict(float)
    optimizers = [*s.optimizers.values(), *([s.prior_optimizer] if s.prior_optimizer else [])]
    with contextlib.ExitStack() as stack:
        stack.enter_context(timed(gen, "render", t, "render"))
        stack.enter_context(timed(torch.Tensor, "backward", t, "backward"))
        stack.enter_context(timed_module(prior.unet, t, "unet"))
        for name in ("step_pre_backward", "step_post_backward"):
            stack.enter_context(timed(s.densifier, name, t, "densify"))
        for opt in optimizers:
            stack.enter_context(timed(opt, "step", t, "optim"))
        start = time.perf_counter()
        while s.step < steps:
            gen.train_step(cfg, s, device)
        total = time.perf_counter() - start
    t["rest"] = total - sum(t[key] for key, _ in ROWS if key != "rest")
    lines = [f"shapes profile ({cfg.guidance.method}, batch {cfg.run.batch} at {cfg.camera.width}², "
             f"{steps} steps of generate.train_step): {steps / total:.2f} steps/s, {total:.1f} s, "
             f"{s.splats.num} Gaussians at the end"]
    lines += [f"  {label:42s} {t[key] / total:6.1%}" for key, label in ROWS]
    return lines + [file_sizes(s.splats)]
