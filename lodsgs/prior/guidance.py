"""Score-distillation guidance: SDS, LODS with a learnable unconditional embedding, LODS with LoRA.

One interface: ``guidance(images, views, step)`` returns a loss whose gradient w.r.t. the images is the
method's gradient, and ``prior_loss``, the denoising loss that trains the prior's learnable parameters.
The caller adds them, calls backward once and steps every optimizer once (the official LODS code's
single joint step; see shared/reference/lods.md §3 and §10).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lodsgs.prior.diffusion import DiffusionPrior
from lodsgs.prior.fused import guidance_loss

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
ADAPTER = "lods"


@dataclass
class GuidanceConfig:
    """Guidance settings; presets hold the paper's values (ω 1000 for LODS, 100 for SDS)."""

    method: Literal["sds", "lods-embedding", "lods-lora"] = "lods-embedding"
    guidance_scale: float = 1000.0  # ω; LODS divides the CFG gradient by it
    negative_prompt: str = ""  # also the learnable embedding's initial value and LoRA's condition
    view_dependent: bool = True  # append ", front view" etc. to the prompt from the camera
    min_step_percent: float = 0.02
    max_step_percent: float = 0.98
    anneal_after_step: int = 500  # after this step t_max drops (LODS-3DGS: 0.98 -> 0.55); 0 = never
    max_step_percent_after: float = 0.55
    embedding_lr: float = 1e-4  # LODS-3DGS (Adam, no weight decay)
    lora_lr: float = 5e-7  # LODS-NeRF's LoRA lr
    lora_rank: int = 4
    lora_scale: float = 0.5  # LoRA weight on the unconditional branch
    prior_loss_weight: float = 1.0


@dataclass
class GuidanceOutput:
    loss: Tensor  # scalar; d loss / d images = the method's gradient
    prior_loss: Tensor  # scalar; trains only the learnable embedding / LoRA
    logs: dict[str, float] = field(default_factory=dict)


class Guidance:
    """The guidance of one prompt, with its learnable parameters and its own seeded noise generator."""

    def __init__(self, prior: DiffusionPrior, cfg: GuidanceConfig, prompt: str, seed: int = 0):
        self.prior, self.cfg, self.prompt = prior, cfg, prompt
        self.generator = torch.Generator(device=prior.device).manual_seed(seed)
        self.negative = prior.encode_text(cfg.negative_prompt)
        self.embedding: Tensor | None = None
        self.lora: list[Tensor] = []
        _remove_adapters(prior)  # a prior shared across runs must start clean
        if cfg.method == "lods-embedding":
            # α: the text-encoder output of the negative prompt, shared by every view, trained in fp32
            self.embedding = torch.nn.Parameter(self.negative.detach().float().clone())
        elif cfg.method == "lods-lora":
            self.lora = _add_lora(prior, cfg.lora_rank)

    # --- what the caller optimizes and checkpoints ---------------------------------------------------
    def param_groups(self) -> list[dict]:
        if self.embedding is not None:
            return [{"params": [self.embedding], "lr": self.cfg.embedding_lr, "weight_decay": 0.0}]
        if self.lora:
            return [{"params": self.lora, "lr": self.cfg.lora_lr, "weight_decay": 0.0}]
        return []

    def state_dict(self) -> dict:
        return {"embedding": None if self.embedding is None else self.embedding.detach().clone(),
                "lora": [p.detach().clone() for p in self.lora], "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            if self.embedding is not None:
                self.embedding.copy_(state["embedding"])
            for p, saved in zip(self.lora, state["lora"], strict=True):
                p.copy_(saved)
        self.generator.set_state(state["generator"].cpu() if self.generator.device.type == "cpu"
                                 else state["generator"])

    # --- one step ------------------------------------------------------------------------------------
    def t_range(self, step: int) -> tuple[int, int]:
        c, T = self.cfg, self.prior.num_timesteps
        late = 0 < c.anneal_after_step < step
        hi = c.max_step_percent_after if late else c.max_step_percent
        return int(c.min_step_percent * T), int(hi * T)

    def text_embeddings(self, views: list[str]) -> Tensor:
        prompts = [f"{self.prompt}, {v} view" if self.cfg.view_dependent else self.prompt for v in views]
        return torch.cat([self.prior.encode_text(p) for p in prompts])

    def __call__(self, images: Tensor, views: list[str], step: int) -> GuidanceOutput:
        prior, cfg, g = self.prior, self.cfg, self.generator
        lods = cfg.method != "sds"
        x0 = prior.encode_images(images)
        B, dev = x0.shape[0], x0.device
        prior_loss = self._prior_loss(x0.detach()) if lods else torch.zeros((), device=dev)
        t_lo, t_hi = self.t_range(step)
        t = torch.randint(t_lo, t_hi + 1, (B,), generator=g, device=dev)
        noise = torch.randn(x0.shape, generator=g, device=dev, dtype=torch.float32)
        with torch.no_grad():
            x_t = prior.add_noise(x0.detach().float(), noise, t)
            cond = self.text_embeddings(views)
            uncond = (self.embedding.detach() if self.embedding is not None else self.negative).expand(B, -1, -1)
            if self.lora:  # conditional branch on the pristine model, unconditional with LoRA
                prior.unet.disable_adapters()
                eps_c = prior.predict_noise(x_t, t, cond)
                prior.unet.enable_adapters()
                eps_u = prior.predict_noise(x_t, t, uncond, lora_scale=cfg.lora_scale)
            else:
                eps_c, eps_u = prior.predict_noise(torch.cat([x_t, x_t]), torch.cat([t, t]),
                                                   torch.cat([cond, uncond.to(cond.dtype)])).chunk(2)
        w = 1.0 - prior.alphas_cumprod[t]
        loss = guidance_loss(x0, eps_c, eps_u, noise, w, cfg.guidance_scale, normalized=lods)
        logs = {"t": float(t.float().mean()), "sds": float(loss.detach()), "prior_loss": float(prior_loss.detach())}
        return GuidanceOutput(loss, prior_loss, logs)

    def _prior_loss(self, x0: Tensor) -> Tensor:
        """Plain ε-prediction loss on detached renders, t ~ U{0..T-1}, its own noise, no CFG."""
        B, dev = x0.shape[0], x0.device
        t = torch.randint(0, self.prior.num_timesteps, (B,), generator=self.generator, device=dev)
        noise = torch.randn(x0.shape, generator=self.generator, device=dev, dtype=torch.float32)
        x_t = self.prior.add_noise(x0.float(), noise, t)
        if self.embedding is not None:
            pred = self.prior.predict_noise(x_t, t, self.embedding.expand(B, -1, -1))
        else:
            pred = self.prior.predict_noise(x_t, t, self.negative.expand(B, -1, -1), lora_scale=self.cfg.lora_scale)
        return self.cfg.prior_loss_weight * F.mse_loss(pred, noise)


def _remove_adapters(prior: DiffusionPrior) -> None:
    if getattr(prior.unet, "peft_config", None):
        prior.unet.delete_adapters(list(prior.unet.peft_config))


def _add_lora(prior: DiffusionPrior, rank: int) -> list[Tensor]:
    """Fresh rank-r LoRA on every attention projection (A Gaussian, B zero: starts at the base model)."""
    from peft import LoraConfig

    prior.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                      target_modules=LORA_TARGETS), adapter_name=ADAPTER)
    params = [p for n, p in prior.unet.named_parameters() if "lora_" in n]
    for p in params:
        p.data = p.data.float()  # train in fp32 even when the UNet runs in fp16
        p.requires_grad_(True)
    return params
