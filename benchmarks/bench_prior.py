"""Guidance step time split (text / encode / UNet / fused / other) on the tiny latent prior (CPU), and
on an SD-2.1-shaped UNet + VAE with random weights at 512² × 8 where a GPU is present."""

from __future__ import annotations

import tempfile
import time
from contextlib import contextmanager

import torch

from lodsgs.prior import fused
from lodsgs.prior.diffusion import DiffusionPrior
from lodsgs.prior.guidance import Guidance, GuidanceConfig


@contextmanager
def timed_methods(targets: list[tuple[object, str, str]], totals: dict[str, float], sync):
    """Wrap obj.method so its wall time (synchronized) adds to totals[label]."""
    originals = []
    for obj, name, label in targets:
        fn = getattr(obj, name)
        originals.append((obj, name, fn))

        def wrapper(*a, _fn=fn, _label=label, **k):
            sync()
            t = time.perf_counter()
            out = _fn(*a, **k)
            sync()
            totals[_label] = totals.get(_label, 0.0) + time.perf_counter() - t
            return out
        setattr(obj, name, wrapper)
    try:
        yield
    finally:
        for obj, name, fn in originals:
            setattr(obj, name, fn)


def split(prior: DiffusionPrior, images: torch.Tensor, reps: int) -> tuple[float, dict[str, float]]:
    sync = torch.cuda.synchronize if images.is_cuda else (lambda: None)
    guidance = Guidance(prior, GuidanceConfig(method="lods-embedding"), "a corgi")
    views = ["front"] * len(images)
    guidance(images, views, 0)  # warm-up (and text cache)
    totals: dict[str, float] = {}
    targets = [(prior, "encode_text", "text"), (prior, "encode_images", "encode"), (prior.unet, "forward", "unet"),
               (fused, "guidance_grad", "fused")]
    with timed_methods(targets, totals, sync):
        prior._text_cache.clear()
        sync()
        start = time.perf_counter()
        for step in range(reps):
            out = guidance(images, views, step)
            (out.loss + out.prior_loss).backward()
        sync()
        total = time.perf_counter() - start
    return total / reps, {k: v / reps for k, v in totals.items()}


def lines(label: str, total: float, parts: dict[str, float]) -> list[str]:
    other = total - sum(parts.values())
    out = [f"{label}: {total * 1000:.1f} ms per guidance step (forward + backward)"]
    for k in ("text", "encode", "unet", "fused"):
        out.append(f"  {k:7s} {parts.get(k, 0) * 1000:8.1f} ms  {parts.get(k, 0) / total:6.1%}")
    out.append(f"  {'other':7s} {other * 1000:8.1f} ms  {other / total:6.1%}")
    outside = 1 - (parts.get("unet", 0) + parts.get("encode", 0)) / total
    out.append(f"  share outside UNet+VAE: {outside:.1%}")
    return out


def run(quick: bool = False) -> list[str]:
    from lodsgs.prior.tiny import build_tiny_prior

    with tempfile.TemporaryDirectory() as d:
        prior = DiffusionPrior.from_pretrained(str(build_tiny_prior(f"{d}/latent", "latent")))
        images = torch.rand(4, 16, 16, 3, requires_grad=True)
        out = lines("tiny latent prior, CPU, batch 4", *split(prior, images, 3 if quick else 10))
    if torch.cuda.is_available():
        out += lines("SD-2.1-shaped UNet+VAE (random weights), CUDA fp16, 512² x 8", *sd_split(2 if quick else 5))
    else:
        out.append("SD-2.1-shaped timing: skipped (no CUDA GPU here)")
    return out


def sd_split(reps: int) -> tuple[float, dict[str, float]]:
    """Random-weight UNet and VAE with SD-2.1-base's configs (timing does not depend on weight values)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lodsgs.prior.tiny import _clip_tokenizer

    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                                use_linear_projection=True, block_out_channels=(320, 640, 1280, 1280))
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        sample_size=512)
    with tempfile.TemporaryDirectory() as d:
        tok = _clip_tokenizer(__import__("pathlib").Path(d) / "tok")
        tok.model_max_length = 77
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=1024, intermediate_size=4096,
                                        num_hidden_layers=23, num_attention_heads=16, max_position_embeddings=77))
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    prior = DiffusionPrior(unet.half(), sched, text.half(), tok, vae.half()).cuda()
    images = torch.rand(8, 512, 512, 3, device="cuda", requires_grad=True)
    return split(prior, images, reps)
