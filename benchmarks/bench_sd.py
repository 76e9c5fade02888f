"""`make bench-sd`: one guidance step of each method on Stable Diffusion 2.1-base's architecture (random weights,
lodsgs/prior/sd_random.py) at the paper's setting, 512² renders -> 64² latents: time split and peak memory.

Batch 8 (the paper's) on CUDA in fp16, batch 1 on the CPU in fp32 (LODSGS_SD_BATCH overrides). The weights
are built once (2.6 GB, fp16 on disk) into LODSGS_SD_RANDOM (default ~/.cache/lodsgs/sd21-random), in a
subprocess so that building does not count in the peak memory. Backward is split in two: the guidance
loss's (VAE encoder backward to the renders) and the prior loss's (UNet backward to α / ψ).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.sections import timed_sections
from lodsgs.prior.diffusion import DiffusionPrior
from lodsgs.prior.guidance import Guidance, GuidanceConfig
from lodsgs.prior.sd_random import parameter_counts

FOLDER = Path(os.environ.get("LODSGS_SD_RANDOM", Path.home() / ".cache" / "lodsgs" / "sd21-random"))


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB; process-wide peak


def step(prior: DiffusionPrior, images: torch.Tensor, method: str) -> dict[str, float]:
    """One guidance step: per-section seconds (benchmarks.sections) plus the two backward passes."""
    sync = torch.cuda.synchronize if images.is_cuda else (lambda: None)
    guidance = Guidance(prior, GuidanceConfig(method=method), "a corgi")
    images.grad = None
    sync()
    start = time.perf_counter()
    with timed_sections(guidance) as times:
        out = guidance(images, (["front", "side", "back", "side"] * len(images))[: len(images)], 0)
    t0 = time.perf_counter()
    out.loss.backward()  # to the renders, through the VAE encoder
    sync()
    t1 = time.perf_counter()
    if out.prior_loss.requires_grad:
        out.prior_loss.backward()  # to α / ψ, through the UNet
    sync()
    end = time.perf_counter()
    return {**times, "loss_backward": t1 - t0, "prior_backward": end - t1, "total": end - start,
            "forward": t0 - start}


def run(quick: bool = False) -> list[str]:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import sys; from lodsgs.prior.sd_random import build_sd21_random; "
                    "build_sd21_random(sys.argv[1])", str(FOLDER)], check=True)
    built = time.perf_counter() - start
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    batch = int(os.environ.get("LODSGS_SD_BATCH", 8 if cuda else 1))
    prior = DiffusionPrior.from_pretrained(str(FOLDER), device=device)
    counts = parameter_counts(prior)
    out = [f"SD-2.1-base architecture, random weights ({FOLDER}; ready in {built:.0f} s): "
           + ", ".join(f"{k} {v / 1e6:.0f} M" for k, v in counts.items())
           + f"; {device.type} {prior.dtype}, batch {batch}, renders 512² -> latents 64²"]
    images = torch.rand(batch, 512, 512, 3, device=device, requires_grad=True)
    methods = ("lods-embedding",) if quick else ("lods-embedding", "lods-lora", "sds")
    for method in methods:
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        step(prior, images, method)  # warm-up: allocator, kernels, prompt cache (LoRA: adapters added)
        t = step(prior, images, method)
        vae = t.get("encode", 0) + t["loss_backward"]
        prior_loss = t.get("prior_loss", 0) + t["prior_backward"]
        rest = t["total"] - vae - t.get("unet", 0) - prior_loss - t.get("fused", 0)
        out.append(f"{method}: {t['total']:.2f} s per step | VAE encode fwd+bwd {vae:.2f} s | UNet CFG pass "
                   f"{t.get('unet', 0):.2f} s | prior loss fwd+bwd {prior_loss:.2f} s | fused op "
                   f"{t.get('fused', 0) * 1000:.1f} ms | rest {rest:.2f} s | peak memory {peak_mb(device):,.0f} MB")
    return out


if __name__ == "__main__":
    print("\n".join(run(quick="--quick" in sys.argv)))
