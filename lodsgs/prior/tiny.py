"""Tiny random diffusion models saved in the diffusers layout, for tests and benchmarks.

They load through exactly the ``from_pretrained`` path users hit with Stable Diffusion (latent: with a
VAE and a CLIP BPE tokenizer) or with the shapes prior (pixel space: no VAE, a word-level tokenizer).
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

WIDTH = 32
TOKENS = 16


def _clip_tokenizer(folder: Path) -> CLIPTokenizer:
    """A character-level CLIP BPE tokenizer (no merges): every word becomes its letters."""
    folder.mkdir(parents=True, exist_ok=True)
    tokens = ["<|startoftext|>", "<|endoftext|>"] + list(string.ascii_lowercase + ",")
    tokens += [c + "</w>" for c in string.ascii_lowercase + ","]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=TOKENS,
                         pad_token="<|endoftext|>")


def _word_tokenizer():
    from lodsgs.prior.shapes.train import build_tokenizer

    return build_tokenizer()


def build_tiny_prior(path: Path, kind: str = "latent", seed: int = 0) -> Path:
    """Save a random tiny model: ``latent`` (UNet 4ch 8² + VAE ×2 + CLIP) or ``pixel`` (UNet 3ch 16²)."""
    if kind not in ("latent", "pixel"):
        raise ValueError(f"kind must be 'latent' or 'pixel', got {kind!r}")
    path = Path(path)
    torch.manual_seed(seed)
    channels = 4 if kind == "latent" else 3
    unet = UNet2DConditionModel(
        sample_size=8 if kind == "latent" else 16, in_channels=channels, out_channels=channels,
        block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, cross_attention_dim=WIDTH,
        attention_head_dim=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    tokenizer = _clip_tokenizer(path / "tokenizer") if kind == "latent" else _word_tokenizer()
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=WIDTH, intermediate_size=64,
                                        num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=TOKENS))
    unet.save_pretrained(path / "unet")
    text.save_pretrained(path / "text_encoder")
    tokenizer.save_pretrained(path / "tokenizer")
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                  beta_end=0.012).save_pretrained(path / "scheduler")
    index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
             "scheduler": ["diffusers", "DDPMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", type(tokenizer).__name__]}
    if kind == "latent":
        AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                      down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                      norm_num_groups=4, sample_size=16).save_pretrained(path / "vae")
        index["vae"] = ["diffusers", "AutoencoderKL"]
    (path / "model_index.json").write_text(json.dumps(index, indent=2))
    return path
