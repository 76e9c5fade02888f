"""DiffusionPrior: a frozen text-to-image diffusion model loaded with diffusers ``from_pretrained``.

Latent models (Stable Diffusion 1.x/2.x: a ``vae/`` folder) and pixel-space models (no VAE, such as the
shipped ``shapes`` prior) share one path: ``encode_images`` turns renders into the diffusion model's x0.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from torch import Tensor, nn
from transformers import AutoTokenizer, CLIPTextModel

from lodsgs.errors import LodsgsError

DEFAULT_MODEL = "stabilityai/stable-diffusion-2-1-base"
SHAPES_DIR = Path(__file__).parent / "shapes" / "weights"
NAMED = {"sd21": DEFAULT_MODEL, "sd": DEFAULT_MODEL}


def resolve_model(name_or_path: str) -> str:
    """Map a prior name (``shapes``, ``sd21``) to a hub id or folder; anything else is returned unchanged."""
    if name_or_path == "shapes":
        if not (SHAPES_DIR / "unet").is_dir():
            raise LodsgsError(f"the shapes prior weights are not installed at {str(SHAPES_DIR)!r}; "
                              "train them with `lodsgs prior train-shapes --out DIR` and pass --prior DIR")
        return str(SHAPES_DIR)
    return NAMED.get(name_or_path, name_or_path)


def _has_component(model: str, name: str) -> bool:
    """Whether the pipeline folder / hub repo lists a component (model_index.json or a subfolder)."""
    local = Path(model)
    if local.is_dir():
        return (local / name).is_dir()
    from huggingface_hub import hf_hub_download

    index = json.loads(Path(hf_hub_download(model, "model_index.json")).read_text())
    return index.get(name) is not None and index[name][0] is not None


def _missing_model_error(model: str, err: Exception) -> LodsgsError:
    from huggingface_hub.constants import HF_HUB_CACHE

    if Path(model).is_dir():
        return LodsgsError(f"cannot load the diffusion model from folder {model!r}: {str(err).splitlines()[0]}; "
                           "it needs unet/, scheduler/, text_encoder/, tokenizer/ (and vae/ for latent models)")
    return LodsgsError(
        f"diffusion model {model!r} is not in the Hugging Face cache ({HF_HUB_CACHE}) and cannot be downloaded "
        "here; download it on a machine with network (huggingface-cli download ...) and copy the cache, or point "
        "at a local diffusers folder with --set prior.model=/path/to/folder, or use the offline prior: --prior shapes"
    )


class DiffusionPrior(nn.Module):
    """Frozen UNet + scheduler + text encoder (+ VAE); fp16 on CUDA, fp32 on CPU."""

    def __init__(self, unet: UNet2DConditionModel, scheduler: DDPMScheduler, text_encoder: CLIPTextModel,
                 tokenizer, vae: AutoencoderKL | None = None, name: str = ""):
        super().__init__()
        self.unet, self.text_encoder, self.vae = unet, text_encoder, vae
        self.scheduler, self.tokenizer, self.name = scheduler, tokenizer, name
        for module in (unet, text_encoder, vae):
            if module is not None:
                module.requires_grad_(False).eval()
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.clone().float(), persistent=False)
        self._text_cache: dict[str, Tensor] = {}

    @classmethod
    def from_pretrained(cls, model: str, device: torch.device | str = "cpu") -> DiffusionPrior:
        """Load every component from a hub id or a local diffusers folder; one clear error if absent."""
        device = torch.device(device)
        if device.type == "cpu":  # denormal floats (e.g. LoRA/VAE activations near zero) slow CPU math ~30x
            torch.set_flush_denormal(True)
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        try:
            unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet", torch_dtype=dtype)
            scheduler = DDPMScheduler.from_pretrained(model, subfolder="scheduler")
            text_encoder = CLIPTextModel.from_pretrained(model, subfolder="text_encoder", torch_dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(model, subfolder="tokenizer")
            vae = (AutoencoderKL.from_pretrained(model, subfolder="vae", torch_dtype=dtype)
                   if _has_component(model, "vae") else None)
        except (OSError, ValueError) as e:  # missing files, offline hub, gated repo
            raise _missing_model_error(model, e) from None
        return cls(unet, scheduler, text_encoder, tokenizer, vae, name=model).to(device)

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def num_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    @property
    def image_size(self) -> int:
        """Render resolution the model sees: UNet sample size, times the VAE factor for latent models."""
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1
        return self.unet.config.sample_size * factor

    @torch.no_grad()
    def encode_text(self, prompt: str) -> Tensor:
        """Text-encoder hidden states [1, tokens, width] for a prompt, cached."""
        if prompt not in self._text_cache:
            ids = self.tokenizer([prompt], padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids.to(self.device)
            self._text_cache[prompt] = self.text_encoder(ids)[0]
        return self._text_cache[prompt]

    def encode_images(self, images: Tensor) -> Tensor:
        """Renders [B,H,W,3] in [0,1] -> x0 (VAE latents × scaling factor, or pixels in [-1,1]), with grad."""
        size = self.image_size
        x = images.permute(0, 3, 1, 2)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, (size, size), mode="bilinear", align_corners=False, antialias=True)
        x = (x * 2 - 1).to(self.dtype)
        if self.vae is None:
            return x
        # the mean of the posterior, not a sample: the VAE's sampling noise would only add variance to SDS
        return self.vae.encode(x).latent_dist.mean * self.vae.config.scaling_factor

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1).to(x0.dtype)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def predict_noise(self, x_t: Tensor, t: Tensor, embeddings: Tensor, lora_scale: float | None = None) -> Tensor:
        """ε-prediction in fp32; ``lora_scale`` scales active LoRA adapters (0 disables them)."""
        kwargs = {"scale": lora_scale} if lora_scale is not None else None
        out = self.unet(x_t.to(self.dtype), t, encoder_hidden_states=embeddings.to(self.dtype),
                        cross_attention_kwargs=kwargs).sample
        return out.float()
