"""Guidance step time split (text / VAE / UNet / fused / backward / other) on the tiny latent prior (CPU); the
SD-2.1-sized step is ``benchmarks/bench_sd.py``.

The split comes from ``benchmarks.sections.timed_sections`` (CUDA-synchronized calls); backward is timed as one block:
it is the VAE encoder's backward plus, for LODS, the UNet's backward into α / ψ.
"""

from __future__ import annotations

import tempfile
import time

import torch

from benchmarks.sections import timed_sections
from lodsgs.prior.diffusion import DiffusionPrior
from lodsgs.prior.guidance import Guidance, GuidanceConfig

ROWS = [("text", "text encoder (cached prompts)"), ("encode", "VAE encode / resize"),
        ("prior_loss", "UNet, prior loss (α/ψ)"), ("unet", "UNet, CFG pair"), ("fused", "fused guidance op"),
        ("backward", "backward (VAE, UNet→α/ψ)")]
IN_MODELS = ("encode", "prior_loss", "unet", "backward")  # time spent inside UNet + VAE


def split(prior: DiffusionPrior, images: torch.Tensor, method: str, reps: int) -> tuple[float, dict[str, float]]:
    """Mean seconds per guidance step (forward + backward) and per section, after one warm-up step."""
    sync = torch.cuda.synchronize if images.is_cuda else (lambda: None)
    guidance = Guidance(prior, GuidanceConfig(method=method), "a corgi")
    views = (["front", "side", "back", "side"] * len(images))[: len(images)]
    out = guidance(images, views, 0)  # warm-up: kernels, allocator, prompt cache
    (out.loss + out.prior_loss).backward()
    total = 0.0
    with timed_sections(guidance) as times:
        for step in range(reps):
            images.grad = None
            sync()
            start = time.perf_counter()
            out = guidance(images, views, step)
            mid = time.perf_counter()
            (out.loss + out.prior_loss).backward()
            sync()
            end = time.perf_counter()
            times["backward"] += end - mid
            total += end - start
    return total / reps, {k: v / reps for k, v in times.items()}


def lines(label: str, total: float, parts: dict[str, float]) -> list[str]:
    out = [f"{label}: {total * 1000:.1f} ms per guidance step (forward + backward)"]
    for key, name in ROWS:
        out.append(f"  {name:30s} {parts.get(key, 0) * 1000:9.2f} ms  {parts.get(key, 0) / total:6.1%}")
    other = total - sum(parts.values())
    out.append(f"  {'other (noise, t, logs)':30s} {other * 1000:9.2f} ms  {other / total:6.1%}")
    outside = 1 - sum(parts.get(k, 0) for k in IN_MODELS) / total
    out.append(f"  share of step time outside UNet+VAE: {outside:.1%}")
    return out


def run(quick: bool = False) -> list[str]:
    from lodsgs.prior.tiny import build_tiny_prior

    out = []
    with tempfile.TemporaryDirectory() as d:
        prior = DiffusionPrior.from_pretrained(str(build_tiny_prior(f"{d}/latent", "latent")))
        images = torch.rand(4, 16, 16, 3, requires_grad=True)
        for method in ("lods-embedding", "sds", "lods-lora"):
            total, parts = split(prior, images, method, 5 if quick else 20)
            out += lines(f"tiny latent prior, CPU, batch 4, {method}", total, parts)
    out.append("SD-2.1-sized step: `make bench-sd` (benchmarks/bench_sd.py)")
    return out
