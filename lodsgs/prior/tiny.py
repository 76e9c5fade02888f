"""Tiny random diffusion models saved in the diffusers layout, for tests and benchmarks.

They load through exactly the ``from_pretrained`` path users hit with Stable Diffusion (``latent``: a VAE
and a CLIP BPE tokenizer) or with the shapes prior (``pixel``: no VAE, a word-level fast tokenizer). A
guidance step on either takes a few tens of milliseconds on one CPU core.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, PreTrainedTokenizerFast

WIDTH = 32  # text-encoder width = UNet cross-attention width
TOKENS = {"latent": 32, "pixel": 16}  # CLIP letters need more positions than whole words
WORDS = ("a an the of and on with red green blue yellow white black small big cube sphere torus cone corgi cat dog "
         "chair car tree house point cloud image front side back overhead view").split()


def _clip_tokenizer(folder: Path, max_length: int) -> CLIPTokenizer:
    """A letter-level CLIP BPE tokenizer (vocab.json + empty merges.txt): every word becomes its letters."""
    folder.mkdir(parents=True, exist_ok=True)
    tokens = ["<|startoftext|>", "<|endoftext|>"] + list(string.ascii_lowercase + ",")
    tokens += [c + "</w>" for c in string.ascii_lowercase + ","]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length,
                         pad_token="<|endoftext|>")


def word_tokenizer(words: list[str], max_length: int) -> PreTrainedTokenizerFast:
    """A word-level ``tokenizers`` model over ``words`` and ',' (lower-cased, unknown words -> [UNK], BOS/EOS
    added) wrapped as a fast tokenizer: the shapes prior's and the tiny pixel prior's."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[BOS]", "[EOS]", ",", *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", vocab["[BOS]"]), ("[EOS]", vocab["[EOS]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]",
                                   unk_token="[UNK]", model_max_length=max_length)


def build_tiny_prior(path: Path | str, kind: str = "latent", seed: int = 0) -> Path:
    """Save a random tiny model: ``latent`` (UNet 4ch 8² + VAE ×2 = 16² renders) or ``pixel`` (UNet 3ch 16²)."""
    if kind not in TOKENS:
        raise ValueError(f"kind must be 'latent' or 'pixel', got {kind!r}")
    path = Path(path)
    torch.manual_seed(seed)
    channels = 4 if kind == "latent" else 3
    unet = UNet2DConditionModel(
        sample_size=8 if kind == "latent" else 16, in_channels=channels, out_channels=channels,
        block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, cross_attention_dim=WIDTH,
        attention_head_dim=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    tokenizer = (_clip_tokenizer(path / "tokenizer", TOKENS[kind]) if kind == "latent"
                 else word_tokenizer(list(WORDS), TOKENS[kind]))
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=WIDTH, intermediate_size=64,
                                        num_hidden_layers=1, num_attention_heads=2,
                                        max_position_embeddings=TOKENS[kind], pad_token_id=tokenizer.pad_token_id,
                                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    unet.save_pretrained(path / "unet")
    text.save_pretrained(path / "text_encoder")
    tokenizer.save_pretrained(path / "tokenizer")
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                  beta_end=0.012).save_pretrained(path / "scheduler")  # SD's noise schedule
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
