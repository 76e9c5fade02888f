"""Guidance step time split (text / VAE / UNet / fused / backward / other) on the tiny latent prior (CPU), and,
where a GPU is present, on an SD-2.1-shaped UNet + VAE + text encoder with random weights at 512² × 8.

The split comes from ``Guidance.timings`` (CUDA-synchronized sections); backward is timed as one block:
it is the VAE encoder's backward plus, for LODS, the UNet's backward into α / ψ.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

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
    guidance.timings = {}
    total = 0.0
    for step in range(reps):
        images.grad = None
        sync()
        start = time.perf_counter()
        out = guidance(images, views, step)
        mid = time.perf_counter()
        (out.loss + out.prior_loss).backward()
        sync()
        end = time.perf_counter()
        guidance.timings["backward"] = guidance.timings.get("backward", 0.0) + end - mid
        total += end - start
    return total / reps, {k: v / reps for k, v in guidance.timings.items()}


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
    if torch.cuda.is_available():
        out += lines("SD-2.1-shaped UNet+VAE+CLIP-H (random weights), CUDA fp16, 512² x 8, lods-embedding",
                     *split(sd_shaped_prior(), torch.rand(8, 512, 512, 3, device="cuda", requires_grad=True),
                            "lods-embedding", 3 if quick else 10))
    else:
        out.append("SD-2.1-shaped timing: skipped (no CUDA GPU here)")
    return out


def sd_shaped_prior() -> DiffusionPrior:
    """SD-2.1-base's UNet, VAE and text-encoder shapes with random weights (timing does not depend on values)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lodsgs.prior.tiny import _clip_tokenizer

    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                                use_linear_projection=True, block_out_channels=(320, 640, 1280, 1280))
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        sample_size=512, scaling_factor=0.18215)
    with tempfile.TemporaryDirectory() as d:
        tok = _clip_tokenizer(Path(d) / "tokenizer", 77)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=1024, intermediate_size=4096,
                                        num_hidden_layers=23, num_attention_heads=16, max_position_embeddings=77,
                                        hidden_act="gelu", pad_token_id=tok.pad_token_id,
                                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    return DiffusionPrior(unet.half(), sched, text.half(), tok, vae.half(), name="sd21-shaped").cuda()
