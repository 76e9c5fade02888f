"""Score-distillation guidance: SDS, LODS with a learnable unconditional embedding, LODS with LoRA.

One interface: ``guidance(images, views, step)`` returns ``loss``, whose gradient w.r.t. the images is the
method's gradient chained through ``encode_images``, and ``prior_loss``, the denoising loss that trains
only the prior's learnable parameters (α or ψ). The caller adds them, calls backward once and steps every
optimizer once: the official LODS code's single joint step (yangxiaofeng/LODS, threestudio/systems/lods_gs.py).

CFG convention (threestudio's): ε_cfg = ε_u + ω(ε_c − ε_u), so ω = 1 is the plain conditional model.
  sds             g = w(t)·(ε_cfg − ε),              ε_u from the fixed negative-prompt embedding
  lods-embedding  g = w(t)·(ε_cfg − ε)/ω,            ε_u from a learned embedding α (init: negative prompt)
  lods-lora       g = w(t)·(ε_cfg − ε)/ω,            ε_u from the UNet + LoRA ψ at scale 0.5, negative prompt
with w(t) = 1 − ᾱ_t and t ~ U{t_min..t_max} per sample. α / ψ learn by the plain ε-MSE on the detached
x0 with their own t ~ U{0..T−1} and noise, no CFG (lods_embedding_guidance.py, train_embedding). The
guidance scale is not chosen per method here: the presets set it (sds.yaml ω = 100; lods_*.yaml ω = 1000,
the paper's text-to-3D value).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lodsgs.config import GuidanceConfig, at_step
from lodsgs.errors import LodsgsError
from lodsgs.prior.diffusion import DiffusionPrior
from lodsgs.prior.fused import guidance_loss

METHODS = ("sds", "lods-embedding", "lods-lora")
PRIOR_LOSS_SCALE = 2.0**12  # fp16 UNets only: lifts ~1e-5 per-element gradients into fp16's normal range
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # every attention projection, self- and cross-attention
ADAPTER = "lods"
ADAM = {"betas": (0.9, 0.99), "eps": 1e-15, "weight_decay": 0.0}  # LODS-3DGS's Adam for α (lods_gs.py)


@dataclass
class GuidanceOutput:
    loss: Tensor  # scalar 0.5·||g||²/B; d loss / d images = g/B chained through encode_images
    prior_loss: Tensor  # scalar; trains only α / ψ (a 0-tensor for sds)
    logs: dict[str, float] = field(default_factory=dict)  # t, t_max, grad_norm, sds, prior_loss + diagnostics()


class Guidance(nn.Module):
    """The guidance of one prompt: its learnable α or ψ and its own seeded noise generator.

    ``parameters()`` also lists the frozen prior's; optimize ``param_groups()`` instead, and checkpoint with
    ``state_dict()``, which holds only α / ψ and the generator state (so a resumed run draws the same t, ε).
    """

    def __init__(self, prior: DiffusionPrior, cfg: GuidanceConfig, prompt: str, seed: int = 0, steps: int = 0):
        super().__init__()
        if cfg.method not in METHODS:
            raise LodsgsError(f"unknown guidance method {cfg.method!r}; valid: {', '.join(METHODS)}")
        if cfg.guidance_scale <= 0:
            raise LodsgsError(f"guidance_scale must be > 0, got {cfg.guidance_scale}")
        self.prior, self.cfg, self.prompt = prior, cfg, prompt
        self.generator = torch.Generator(device=prior.device).manual_seed(seed)
        self.anneal_step = at_step(cfg.anneal_at, steps)  # the run's length turns the fraction into a step (0: none)
        self.negative = prior.encode_text(cfg.negative_prompt)  # [1, tokens, width]
        self.register_parameter("embedding", None)
        self.lora: list[nn.Parameter] = []
        _remove_adapters(prior)  # a prior shared across runs (batch, eval) must start clean
        if cfg.method == "lods-embedding":  # α: text-encoder OUTPUT of the negative prompt, one for all views
            self.embedding = nn.Parameter(self.negative.detach().float().clone())
            self.caption_embedding = prior.encode_text(prompt).detach().float()  # for the diagnostics only
        elif cfg.method == "lods-lora":
            self.lora = _add_lora(prior, cfg.lora_rank)
            self.lora_b = [p for n, p in prior.unet.named_parameters() if "lora_B" in n]  # zero at the start
        # an fp16 UNet (CUDA) gets the prior loss's gradient scaled up before it enters the network and scaled
        # back down on α / ψ (fp32): ε-MSE over B·4·64·64 elements hands each one ~1e-5, where fp16 underflows
        self.grad_scale = PRIOR_LOSS_SCALE if prior.dtype == torch.float16 else 1.0
        if self.grad_scale != 1.0:  # no per-step hook work on fp32 priors
            for p in self.trainable():
                p.register_hook(lambda g: g / self.grad_scale)

    # --- what the caller optimizes and checkpoints ---------------------------------------------------
    def trainable(self) -> list[nn.Parameter]:
        """α (lods-embedding), ψ (lods-lora) or nothing (sds)."""
        return [self.embedding] if self.embedding is not None else list(self.lora)

    def param_groups(self) -> list[dict]:
        """Adam groups for α or ψ (lr, betas (0.9, 0.99), eps 1e-15, no weight decay); [] for sds."""
        if self.embedding is not None:
            return [{"params": [self.embedding], "lr": self.cfg.embedding_lr, **ADAM}]
        if self.lora:
            return [{"params": self.lora, "lr": self.cfg.lora_lr, **ADAM}]
        return []

    def state_dict(self) -> dict:  # type: ignore[override]
        return {"method": self.cfg.method,
                "embedding": None if self.embedding is None else self.embedding.detach().clone(),
                "lora": [p.detach().clone() for p in self.lora], "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:  # type: ignore[override]
        if state.get("method", self.cfg.method) != self.cfg.method:
            raise LodsgsError(f"checkpoint was made with guidance {state['method']!r}, not {self.cfg.method!r}")
        with torch.no_grad():
            if self.embedding is not None:
                self.embedding.copy_(state["embedding"])
            for p, saved in zip(self.lora, state["lora"], strict=True):
                p.copy_(saved)
        self.generator.set_state(state["generator"].cpu())  # CPU and CUDA generators both take a CPU state

    # --- one step ------------------------------------------------------------------------------------
    def t_range(self, step: int) -> tuple[int, int]:
        """[t_min, t_max] (inclusive) at this step. ``step``: t_max drops after ``anneal_at`` of the run;
        ``linear``: t_max moves linearly from max_step_percent at step 0 to max_step_percent_after there."""
        c, T, at = self.cfg, self.prior.num_timesteps, self.anneal_step
        if c.anneal == "linear" and at > 0:
            frac = min(step / at, 1.0)
            hi = c.max_step_percent + frac * (c.max_step_percent_after - c.max_step_percent)
        else:
            late = 0 < at < step
            hi = c.max_step_percent_after if late else c.max_step_percent
        return round(c.min_step_percent * T), max(round(hi * T), round(c.min_step_percent * T))

    def text_embeddings(self, views: list[str]) -> Tensor:
        """Conditional embeddings [B, tokens, width], view-dependent when configured."""
        prompts = self.prior.view_prompts(self.prompt, views) if self.cfg.view_dependent else [self.prompt] * len(views)
        return torch.cat([self.prior.encode_text(p) for p in prompts])

    def forward(self, images: Tensor, views: list[str], step: int) -> GuidanceOutput:
        """images [B,H,W,3] in [0,1] (with grad), one view label per image, the optimization step."""
        return self.distill(self.prior.encode_images(images), views, step)  # [B,C,h,w], grad flows to the renders

    def distill(self, x0: Tensor, views: list[str], step: int, source: tuple[Tensor, Tensor] | None = None
                ) -> GuidanceOutput:
        """forward() from the diffusion model's x0 [B,C,h,w] (with grad): 2D particles enter here directly.

        ``source`` = (x0_src [B,C,h,w], text embeddings [B,tokens,width]) makes it Delta Denoising Score
        (Hertz et al. 2023): the ε in the gradient is replaced by the source branch's CFG prediction on x0_src
        noised with the same ε and t, so g = w(t)·(ε_cfg(x_t; y) − ε_cfg(x̂_t; ŷ)).
        """
        prior, cfg, gen = self.prior, self.cfg, self.generator
        lods = cfg.method != "sds"
        B, dev = x0.shape[0], x0.device
        cond = self.text_embeddings(views)
        # the prior loss first, like the official code; same α / ψ as the SDS branch below
        prior_loss = self._prior_loss(x0.detach()) if lods else torch.zeros((), device=dev)
        t_lo, t_hi = self.t_range(step)
        t = torch.randint(t_lo, t_hi + 1, (B,), generator=gen, device=dev)
        noise = torch.randn(x0.shape, generator=gen, device=dev, dtype=torch.float32)
        with torch.no_grad():
            eps_c, eps_u = self._noise_predictions(prior.add_noise(x0.detach().float(), noise, t), t, cond)
            reference = noise if source is None else self._cfg_prediction(*source, noise, t)
        w = 1.0 - prior.alphas_cumprod[t]  # [B]
        loss = guidance_loss(x0, eps_c, eps_u, reference, w, cfg.guidance_scale, normalized=lods)
        gap = (eps_c.float() - eps_u.float()).pow(2).mean().sqrt()
        extra = self._diagnostics()
        values = torch.stack([loss.detach(), prior_loss.detach().float(), t.float().mean(), gap,
                              *extra.values()]).tolist()  # one device sync for every logged number
        sds, p_loss, t_mean, gap = values[:4]
        logs = {"t": t_mean, "t_max": float(t_hi), "grad_norm": (2 * B * sds) ** 0.5, "sds": sds, "prior_loss": p_loss,
                "eps_gap": gap, **dict(zip(extra, values[4:]))}
        return GuidanceOutput(loss, prior_loss, logs)

    def diagnostics(self) -> dict[str, float]:
        """Where the learned branch is: α's relative distance from its start (the negative prompt) and its cosine
        to the caption's own embedding; LoRA's lora_B norm (zero at the start). Empty for SDS."""
        return {k: v.item() for k, v in self._diagnostics().items()}

    @torch.no_grad()
    def _diagnostics(self) -> dict[str, Tensor]:
        """diagnostics() as 0-d tensors on the prior's device (forward batches them into its one .tolist())."""
        if self.embedding is not None:
            a, a0, c = self.embedding.flatten(), self.negative.float().flatten(), self.caption_embedding.flatten()
            return {"alpha_shift": (a - a0).norm() / a0.norm(), "alpha_cos": F.cosine_similarity(a, c, dim=0)}
        if self.lora:
            return {"lora_b_norm": torch.stack([p.norm() for p in self.lora_b]).norm()}
        return {}

    def _noise_predictions(self, x_t: Tensor, t: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        """(ε_c, ε_u): one batched UNet call, or for LoRA the pristine model then the LoRA-carrying one."""
        B, unet = x_t.shape[0], self.prior.unet
        if self.lora:
            unet.disable_adapters()
            try:
                eps_c = self.prior.predict_noise(x_t, t, cond)
            finally:
                unet.enable_adapters()
            eps_u = self.prior.predict_noise(x_t, t, self.negative.expand(B, -1, -1), lora_scale=self.cfg.lora_scale)
            return eps_c, eps_u
        uncond = (self.embedding.detach() if self.embedding is not None else self.negative).expand(B, -1, -1)
        both = self.prior.predict_noise(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, uncond.to(cond)]))
        return both.chunk(2)

    def _cfg_prediction(self, x0: Tensor, cond: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """ε_u + ω(ε_c − ε_u) on x0 noised with the given ε and t (DDS's source branch)."""
        eps_c, eps_u = self._noise_predictions(self.prior.add_noise(x0.float(), noise, t), t, cond)
        return eps_u + self.cfg.guidance_scale * (eps_c - eps_u)

    def _prior_loss(self, x0: Tensor) -> Tensor:
        """Plain ε-MSE on the detached x0, t ~ U{0..T−1}, its own noise, no CFG: grads reach α / ψ only."""
        B, dev = x0.shape[0], x0.device
        t = torch.randint(0, self.prior.num_timesteps, (B,), generator=self.generator, device=dev)
        noise = torch.randn(x0.shape, generator=self.generator, device=dev, dtype=torch.float32)
        x_t = self.prior.add_noise(x0.float(), noise, t)
        if self.embedding is not None:
            pred = self.prior.predict_noise(x_t, t, self.embedding.expand(B, -1, -1))
        else:
            pred = self.prior.predict_noise(x_t, t, self.negative.expand(B, -1, -1), lora_scale=self.cfg.lora_scale)
        if self.grad_scale != 1.0:
            pred = _ScaleGrad.apply(pred, self.grad_scale)
        return self.cfg.prior_loss_weight * F.mse_loss(pred, noise)


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``scale`` (static loss scaling for fp16)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.scale, None


def _remove_adapters(prior: DiffusionPrior) -> None:
    if getattr(prior.unet, "peft_config", None):
        prior.unet.delete_adapters(list(prior.unet.peft_config))


def _add_lora(prior: DiffusionPrior, rank: int) -> list[nn.Parameter]:
    """Fresh rank-r LoRA on every attention projection: A ~ N(0, (1/r)²), B = 0, so it starts at the base model."""
    from peft import LoraConfig

    prior.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                      target_modules=LORA_TARGETS), adapter_name=ADAPTER)
    params = [p for n, p in prior.unet.named_parameters() if "lora_" in n]
    for p in params:
        p.data = p.data.float()  # train in fp32 even when the UNet runs in fp16 (peft casts the input)
        p.requires_grad_(True)
    return params
