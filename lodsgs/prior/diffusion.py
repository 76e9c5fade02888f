"""DiffusionPrior: a frozen text-to-image diffusion model loaded with diffusers ``from_pretrained``.

A model is a hub id or a local folder in the diffusers pipeline layout: ``unet/``, ``scheduler/``,
``text_encoder/``, ``tokenizer/`` and, for latent models only, ``vae/``. Latent models (Stable Diffusion
1.x/2.x) and pixel-space models (no VAE, such as the shipped ``shapes`` prior) share one path:
``encode_images`` turns renders into the diffusion model's x0.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
import transformers
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from torch import Tensor, nn
from transformers import AutoTokenizer, CLIPTextModel

from lodsgs.errors import LodsgsError
from lodsgs.preflight import check_folder, looks_like_path
from lodsgs.prior.precision import bf16_pays, keep_fp32_islands

if TYPE_CHECKING:
    from lodsgs.config import Config
from lodsgs.prior.hub import SD21, SHAPES_DIR, resolve_model, snapshot  # noqa: F401  (resolve_model: re-exported)

DEFAULT_MODEL = SD21
VIEWS = ("front", "side", "back", "overhead")  # the labels view-dependent prompts append (", front view")


def _hub_snapshot(repo_id: str, revision: str | None = None, fp16: bool = False) -> str:
    """A hub model's local snapshot folder (see ``lodsgs.prior.hub.snapshot``)."""
    return snapshot(repo_id, revision or None, fp16)


def locate(model: str, revision: str = "", fp16: bool = False) -> str:
    """The local diffusers folder of a hub id (cached, else downloaded) or a folder, checked for the layout."""
    if not looks_like_path(model):
        model = _hub_snapshot(model, revision, fp16)
    check_folder(model)
    return str(Path(model).expanduser())


def _variant(folder: Path, component: str) -> str | None:
    """``fp16`` when a component holds only the fp16 variant files (``lodsgs prior download`` on CUDA)."""
    files = [p.name for p in (folder / component).glob("*.safetensors")]
    return "fp16" if files and all(".fp16." in f for f in files) else None


def _has_vae(model: str) -> bool:
    """Whether the (local) model is a latent one: it has a ``vae/`` folder."""
    return (Path(model).expanduser() / "vae").is_dir()


def _missing_model_error(model: str, err: Exception) -> LodsgsError:
    """A local folder diffusers or transformers cannot load: their first line, and the folder."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return LodsgsError(f"cannot load the diffusion model from folder {model!r}: {first}")


class DiffusionPrior(nn.Module):
    """Frozen UNet + DDPM scheduler + text encoder (+ VAE); fp16 on CUDA, fp32 on CPU."""

    def __init__(self, unet: UNet2DConditionModel, scheduler: DDPMScheduler, text_encoder: CLIPTextModel,
                 tokenizer, vae: AutoencoderKL | None = None, name: str = ""):
        super().__init__()
        if scheduler.config.prediction_type != "epsilon":
            raise LodsgsError(f"diffusion model {name or 'given'!r} predicts {scheduler.config.prediction_type!r}; "
                              "score distillation here needs an epsilon-prediction model (e.g. "
                              f"{DEFAULT_MODEL}, not the 768 v-prediction stable-diffusion-2-1)")
        self.unet, self.text_encoder, self.vae = unet, text_encoder, vae
        self.scheduler, self.tokenizer, self.name = scheduler, tokenizer, name
        for module in (unet, text_encoder, vae):
            if module is not None:
                module.requires_grad_(False).eval()
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.clone().float(), persistent=False)
        self._text_cache: dict[str, Tensor] = {}
        self.bf16 = False  # UNet calls under bf16 autocast (use_bf16)

    def use_bf16(self, wanted: bool) -> bool:
        """Run every UNet call (CFG pairs, the prior loss and its backward, samples) under bf16 autocast when
        ``wanted`` and this is a CPU with native bf16 (AVX512-BF16, AMX), where oneDNN's bf16 convolutions run
        ~2.6x faster than fp32 ones; attention and group norms stay fp32 (lodsgs/prior/precision.py). Returns the
        choice."""
        native = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
        self.bf16 = bool(wanted and self.device.type == "cpu" and native and self.dtype == torch.float32)
        if self.bf16:
            keep_fp32_islands(self.unet)
        return self.bf16

    @classmethod
    def from_pretrained(cls, model: str, device: torch.device | str = "cpu", revision: str = "") -> DiffusionPrior:
        """Load every component from a hub id or a local diffusers folder; one clear LodsgsError if absent.

        The scheduler config is always read into a ``DDPMScheduler`` (SD-2.1-base ships a PNDM config):
        guidance only needs the training noise schedule ᾱ_t, which every scheduler config describes.
        ``revision`` pins a hub model's commit.
        """
        device = torch.device(device)
        folder = Path(locate(model, revision, fp16=device.type == "cuda"))
        model = str(folder)
        transformers.utils.logging.disable_progress_bar()  # per-load "Loading weights" bars: noise in every run
        if device.type == "cpu":  # denormal floats (e.g. LoRA/VAE activations near zero) slow CPU math ~30x
            torch.set_flush_denormal(True)
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        from huggingface_hub.errors import EntryNotFoundError

        try:
            unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet", torch_dtype=dtype,
                                                        variant=_variant(folder, "unet"), use_safetensors=True)
            scheduler = DDPMScheduler.from_pretrained(model, subfolder="scheduler")
            text_encoder = CLIPTextModel.from_pretrained(model, subfolder="text_encoder", torch_dtype=dtype,
                                                         variant=_variant(folder, "text_encoder"), use_safetensors=True)
            tokenizer = AutoTokenizer.from_pretrained(model, subfolder="tokenizer")
            vae = (AutoencoderKL.from_pretrained(model, subfolder="vae", torch_dtype=dtype,
                                                 variant=_variant(folder, "vae"), use_safetensors=True)
                   if _has_vae(model) else None)
        except (OSError, ValueError, EntryNotFoundError) as e:  # missing files, offline hub, gated or bad repo id
            raise _missing_model_error(model, e) from None
        if device.type == "cpu":  # oneDNN's convolutions are 10-15% faster on NHWC tensors (the UNet's inputs follow)
            unet.to(memory_format=torch.channels_last)
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
        """Side the model sees: UNet sample_size, times the VAE scale factor (8 for SD) for latent models."""
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1
        return self.unet.config.sample_size * factor

    @torch.no_grad()
    def encode_text(self, prompt: str) -> Tensor:
        """Text-encoder hidden states [1, tokens, width] for one prompt, cached by prompt."""
        if prompt not in self._text_cache:
            ids = self.tokenizer([prompt], padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids.to(self.device)
            self._text_cache[prompt] = self.text_encoder(ids)[0]
        return self._text_cache[prompt]

    def view_prompts(self, prompt: str, views: list[str]) -> list[str]:
        """threestudio's view-dependent prompts: ``"{prompt}, {label} view"`` for front/side/back/overhead."""
        unknown = sorted(set(views) - set(VIEWS))
        if unknown:
            raise ValueError(f"view labels must be among {VIEWS}, got {unknown}")
        return [f"{prompt}, {v} view" for v in views]

    def encode_images(self, images: Tensor) -> Tensor:
        """Renders [B,H,W,3] in [0,1] -> x0 [B,C,h,w] with grad: VAE latents × scaling_factor, or pixels in [-1,1].

        Latents are the posterior *mean*, not ``latent_dist.sample()`` (threestudio's choice): SD's encoder
        posterior is narrow, so a sample adds only a little noise to the gradient, while the mean keeps the
        encode deterministic (exact resume, and tests that recompute the gradient independently).
        """
        size = self.image_size
        x = images.permute(0, 3, 1, 2)  # [B,3,H,W]
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, (size, size), mode="bilinear", align_corners=False, antialias=True)
        x = (x * 2 - 1).to(self.dtype)
        if self.vae is None:
            return x
        return self.vae.encode(x).latent_dist.mean * self.vae.config.scaling_factor

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """Forward diffusion x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε (DDPMScheduler.add_noise, per-sample t)."""
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1).to(x0.dtype)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def predict_noise(self, x_t: Tensor, t: Tensor, embeddings: Tensor, lora_scale: float | None = None) -> Tensor:
        """ε_φ(x_t; embeddings, t) in fp32. ``lora_scale`` scales active LoRA adapters (None: adapters at 1).
        With ``use_bf16`` on, the call (and its backward) runs under bf16 autocast when it is big enough to pay."""
        kwargs = {"scale": lora_scale} if lora_scale is not None else None
        x = x_t.to(self.dtype)
        if x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16 and bf16_pays(x)):
            out = self.unet(x, t, encoder_hidden_states=embeddings.to(self.dtype), cross_attention_kwargs=kwargs).sample
        return out.float().contiguous()

    @torch.no_grad()
    def sample(self, prompt: str, n: int = 1, steps: int = 50, guidance_scale: float = 3.0, seed: int = 0,
               negative_prompt: str = "") -> Tensor:
        """n images [n,H,W,3] in [0,1] of ``prompt``: DDIM with classifier-free guidance, VAE-decoded for
        latent models. The prior's own picture of a prompt (sanity checks, the ``sample`` start)."""
        sched = DDIMScheduler.from_config(self.scheduler.config)
        sched.set_timesteps(steps)
        g = torch.Generator().manual_seed(seed)
        size = self.unet.config.sample_size
        x = torch.randn(n, self.unet.config.in_channels, size, size, generator=g).to(self.device)
        cond = self.encode_text(prompt).expand(n, -1, -1)
        uncond = self.encode_text(negative_prompt).expand(n, -1, -1)
        for t in sched.timesteps:
            tt = torch.full((n,), int(t), device=self.device)
            e_c, e_u = self.predict_noise(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([cond, uncond])).chunk(2)
            x = sched.step(e_u + guidance_scale * (e_c - e_u), t, x).prev_sample
        if self.vae is not None:
            x = self.vae.decode((x / self.vae.config.scaling_factor).to(self.dtype)).sample.float()
        return ((x.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1)


def resolve_device(name: str) -> torch.device:
    """run.device as a torch device ("auto": CUDA when there is one); one line for cuda without a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise LodsgsError("--device cuda was requested but no CUDA GPU is available; use --device cpu")
    return torch.device(name)


def load_prior(cfg: Config, device: torch.device) -> DiffusionPrior:
    """The config's prior (``prior.model`` at ``prior.revision``) on ``device``, bf16 as ``prior.bf16`` says."""
    prior = DiffusionPrior.from_pretrained(resolve_model(cfg.prior.model), device=device, revision=cfg.prior.revision)
    prior.use_bf16(cfg.prior.bf16)
    return prior
