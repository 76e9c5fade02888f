"""bf16 autocast of a diffusers UNet on the CPU, with the two kinds of layer that bf16 makes slower kept in fp32.

On a CPU with native bf16 (AVX512-BF16, AMX), oneDNN runs the UNet's convolutions ~2.6x faster in bf16, forward
and backward. Two other kernels go the other way in bf16, and the loss that trains α / ψ needs their backward:
``scaled_dot_product_attention`` (its bf16 backward took 2.6 ms a call against 0.14 ms in fp32 on the shapes
prior) and group norm (4x slower forward and backward). With them in fp32 and every convolution and linear layer
in bf16, the prior loss's forward and backward at batch 4 went 45.6 -> 34.6 ms and the CFG pair 27.1 -> 24.9 ms
(2 threads, 2026-12-06; docs/benchmarks.md). Autocast alone would leave both of them in bf16: group norm follows
its input's dtype, and attention's inputs come out of bf16 linear layers.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from torch import Tensor, nn


class Fp32Attention(AttnProcessor2_0):
    """diffusers' default attention processor with autocast off and its inputs in fp32: the q, k, v and output
    projections and the attention itself run in fp32 (a small share of the UNet's work, at its coarsest levels)."""

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, *args, **kwargs) -> Tensor:
        with torch.autocast("cpu", enabled=False):
            context = None if encoder_hidden_states is None else encoder_hidden_states.float()
            return super().__call__(attn, hidden_states.float(), context, attention_mask, temb, *args, **kwargs)


# Autocast casts every frozen weight to bf16 again on each call (its cache keeps only weights that require grad),
# a cost that does not shrink with the input. Below this many latent pixels in a call (rows x height x width),
# bf16 lost on the shapes prior: the prior loss of one 32² row 18.9 -> 21.8 ms (so `lodsgs edit`, one row a
# step, ran 9 % longer); two rows 26.7 -> 24.5 ms, the CFG pair of one row (two) 15.4 -> 14.0 ms (2026-12-06).
BF16_MIN_PIXELS = 2 * 32 * 32


def bf16_pays(x: Tensor) -> bool:
    """Whether a UNet call on ``x`` [B,C,H,W] is big enough for bf16 autocast to be faster than fp32."""
    return x.shape[0] * x.shape[-2] * x.shape[-1] >= BF16_MIN_PIXELS


def _fp32_input(module: nn.Module, args: tuple) -> tuple:
    return tuple(a.float() if isinstance(a, Tensor) else a for a in args)


def keep_fp32_islands(unet: nn.Module) -> None:
    """Make an fp32 UNet's attention and group norms run in fp32 under bf16 autocast (once per UNet; a no-op in
    fp32, where both already are)."""
    if getattr(unet, "_lodsgs_fp32_islands", False):
        return
    unet.set_attn_processor(Fp32Attention())
    for module in unet.modules():
        if isinstance(module, nn.GroupNorm):  # fp32 weights and input: group norm runs in fp32
            module.register_forward_pre_hook(_fp32_input)
    unet._lodsgs_fp32_islands = True
