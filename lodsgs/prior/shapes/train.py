"""Train the shapes prior: a pixel-space text-conditioned UNet + small CLIP text encoder, from scratch.

``python -m lodsgs.prior.shapes.train --out DIR --steps 7000 [--resume] [--init WEIGHTS]``: seeded, with the
learning-rate schedule by step, so the same arguments give the same weights on the same machine and build;
resumable (checkpoint every few minutes); saved in the diffusers folder layout that ``DiffusionPrior`` loads
exactly like Stable Diffusion (no ``vae/``: the pixel-space path). ``--minutes M`` instead trains for a
wall-clock budget with the schedule by elapsed time: NOT reproducible (the step count follows the machine).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

from lodsgs.files import atomic_path
from lodsgs.prior.shapes import world
from lodsgs.prior.shapes.dataset import DatasetConfig, caption_text, load_or_build
from lodsgs.prior.tiny import word_tokenizer

MAX_TOKENS = 16
WIDTH = 128  # text-encoder width = UNet cross-attention width
CAPTION_DROPOUT = 0.12  # empty prompt, for classifier-free guidance
VIEW_SUFFIX_PROB = 0.5
UNDERSPECIFIED_PROB = 0.15  # per kind: a single object is captioned "a cube" 15%, "a red shape" 15% of the time
V_WEIGHT_CAP = 20.0  # 1/alpha_bar reaches 20 at t ~ 0.85 T; beyond it x0 is guesswork anyway


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the world's vocabulary (+ ','), padded to MAX_TOKENS with BOS/EOS."""
    return word_tokenizer(world.vocabulary(), MAX_TOKENS)


def build_models(vocab_size: int) -> tuple[UNet2DConditionModel, CLIPTextModel]:
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(32, 64, 128), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=WIDTH, attention_head_dim=8, norm_num_groups=16)
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=MAX_TOKENS, pad_token_id=0, bos_token_id=2, eos_token_id=3))
    return unet, text


def scheduler() -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon",
                         clip_sample=False)


def encode(tokenizer, text_model, texts: list[str]) -> torch.Tensor:
    ids = tokenizer(texts, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt")
    return text_model(ids.input_ids).last_hidden_state


def training_caption(caption: str, r: torch.Tensor, underspecified: float) -> str:
    """The caption one training sample gets from uniform draws ``r`` [2]: a single object's full caption, or with
    probability ``underspecified`` each its shape alone ("a cube") or its colour alone ("a red shape")."""
    parts = world.parse(caption)
    if len(parts) != 1 or r[0] >= 2 * underspecified:
        return caption
    color, shape = parts[0]
    return f"a {shape}" if r[1] < 0.5 else f"{world.article(color)} {color} shape"


def learning_rate(base: float, step: int, progress: float) -> float:
    """200 steps of linear warm-up, then a cosine from ``base`` down to 0.1·base as ``progress`` goes 0 -> 1."""
    return base * min(1.0, (step + 1) / 200) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(progress, 1.0))))


def load_weights(init: Path, unet: UNet2DConditionModel, text: CLIPTextModel) -> None:
    """Warm-start from an exported folder; a vocabulary that grew since keeps the old token rows and the fresh
    initialization of the new ones (world.EXTRA_WORDS are appended, so old ids are unchanged)."""
    unet.load_state_dict(UNet2DConditionModel.from_pretrained(init / "unet").float().state_dict())
    old = CLIPTextModel.from_pretrained(init / "text_encoder").float().state_dict()
    new = text.state_dict()
    for key, value in old.items():
        if value.shape != new[key].shape:  # the token embedding: [old vocab, width] into [new vocab, width]
            new[key][: value.shape[0]] = value
            old[key] = new[key]
    text.load_state_dict(old)


def export(out: Path, unet, text, tokenizer, sched) -> None:
    """Write the diffusers layout (fp16 safetensors) plus vocabulary.json and the recommended settings."""
    out.mkdir(parents=True, exist_ok=True)
    unet.to(torch.float16).save_pretrained(out / "unet", safe_serialization=True)
    text.to(torch.float16).save_pretrained(out / "text_encoder", safe_serialization=True)
    unet.float(), text.float()
    tokenizer.save_pretrained(out / "tokenizer")
    sched.save_pretrained(out / "scheduler")
    (out / "model_index.json").write_text(json.dumps({
        "_class_name": "LodsgsShapesPrior", "_diffusers_version": "0.42.1",
        "unet": ["diffusers", "UNet2DConditionModel"], "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
    }, indent=2))
    (out / "vocabulary.json").write_text(json.dumps({"words": world.vocabulary(), "captions": world.captions()},
                                                    indent=1))


@dataclass
class TrainOptions:
    """What ``lodsgs prior train-shapes`` (and ``python -m lodsgs.prior.shapes.train``) takes."""

    out: Path
    work: Path | None = None
    steps: int = 7000
    minutes: float | None = None
    batch: int = 32
    lr: float = 4e-4
    seed: int = 0
    views: int = 96
    resume: bool = False
    weighting: str = "v"
    underspecified: float = UNDERSPECIFIED_PROB
    init: Path | None = None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True, help="final diffusers folder")
    ap.add_argument("--work", type=Path, default=None, help="checkpoints and dataset cache (default: OUT/.work)")
    ap.add_argument("--steps", type=int, default=7000,
                    help="optimizer steps in all (a resume continues to this total); the learning-rate schedule "
                         "follows the step, so a run is reproducible")
    ap.add_argument("--minutes", type=float, default=None,
                    help="NOT reproducible: train for this wall-clock budget instead of --steps, the schedule "
                         "following elapsed time (the step count depends on the machine's speed)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--views", type=int, default=96)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--weighting", choices=["v", "eps"], default="v",
                    help=f"per-sample loss weight: 'v' = min(1/alpha_bar, {V_WEIGHT_CAP:g}), the v-prediction loss "
                         "written for an epsilon model (it trains the image mean at high noise, where plain "
                         "epsilon-MSE gives almost no signal and samples come out tinted); 'eps' = 1")
    ap.add_argument("--underspecified", type=float, default=UNDERSPECIFIED_PROB,
                    help="share of single-object samples captioned by shape alone ('a cube'), and the same share by "
                         "colour alone ('a red shape'); 0 trains full captions only")
    ap.add_argument("--init", type=Path, default=None,
                    help="warm-start from an exported weights folder (fresh optimizer), e.g. the shipped prior")
    train(TrainOptions(**vars(ap.parse_args(argv))))


def train(args: TrainOptions) -> None:
    """Train (or resume) the shapes prior and export it to ``args.out`` in the diffusers layout."""
    from rich.progress import Progress

    torch.manual_seed(args.seed)
    work = args.work or args.out / ".work"
    work.mkdir(parents=True, exist_ok=True)
    data = load_or_build(work / "dataset.pt", DatasetConfig(views=args.views, seed=args.seed))
    images = data["images"].permute(0, 3, 1, 2).float() / 127.5 - 1.0
    tokenizer = build_tokenizer()
    unet, text = build_models(len(tokenizer))
    if args.init is not None:
        load_weights(args.init, unet, text)
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    ema = [copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text).requires_grad_(False)]
    sched = scheduler()
    alphas = sched.alphas_cumprod
    g = torch.Generator().manual_seed(args.seed)
    step, elapsed = 0, 0.0
    ckpt = work / "checkpoint.pt"
    if args.resume and ckpt.exists():
        ck = torch.load(ckpt, weights_only=True)
        unet.load_state_dict(ck["unet"]), text.load_state_dict(ck["text"]), opt.load_state_dict(ck["opt"])
        ema[0].load_state_dict(ck["ema_unet"]), ema[1].load_state_dict(ck["ema_text"])
        g.set_state(ck["rng"]), torch.set_rng_state(ck["torch_rng"])
        step, elapsed = ck["step"], ck["elapsed"]
    budget = args.minutes * 60 if args.minutes is not None else None
    start, last_save, loss_avg = time.time() - elapsed, time.time(), None

    def progress() -> float:
        return (time.time() - start) / budget if budget is not None else step / args.steps

    with Progress() as bar:
        task = bar.add_task("shapes prior", total=1.0, completed=progress())
        while progress() < 1.0:
            lr = learning_rate(args.lr, step, progress())
            for group in opt.param_groups:
                group["lr"] = lr
            loss = train_step(unet, text, tokenizer, opt, params, images, data, alphas, g, args)
            step += 1
            decay = min(0.999, (1 + step) / (10 + step))
            with torch.no_grad():
                for live, avg in zip((unet, text), ema):
                    for p, q in zip(live.parameters(), avg.parameters()):
                        q.lerp_(p, 1 - decay)
            loss_avg = loss if loss_avg is None else 0.98 * loss_avg + 0.02 * loss
            bar.update(task, completed=progress(),
                       description=f"shapes prior step {step} loss {loss_avg:.4f} lr {lr:.1e}")
            if time.time() - last_save > 180:
                save(ckpt, unet, text, ema, opt, g, step, time.time() - start)
                last_save = time.time()
    save(ckpt, unet, text, ema, opt, g, step, time.time() - start)
    export(args.out, ema[0], ema[1], tokenizer, sched)
    loss_text = f"loss {loss_avg:.4f}" if loss_avg is not None else "no step taken"
    print(f"trained {step} steps in {(time.time() - start) / 60:.1f} min, {loss_text}; wrote {args.out}")


def train_step(unet, text, tokenizer, opt, params, images, data, alphas, g, args) -> float:
    """One AdamW step on a batch of the dataset's images and (dropped-out, view-suffixed) captions; the loss."""
    idx = torch.randint(0, len(images), (args.batch,), generator=g)
    x0 = images[idx]
    texts = []
    for i in idx.tolist():
        r = torch.rand(4, generator=g)
        caption = training_caption(data["captions"][int(data["caption_ids"][i])], r[2:], args.underspecified)
        texts.append("" if r[0] < CAPTION_DROPOUT else caption_text(caption, data["labels"][i],
                                                                       bool(r[1] < VIEW_SUFFIX_PROB)))
    t = torch.randint(0, 1000, (args.batch,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    a = alphas[t].view(-1, 1, 1, 1)
    pred = unet(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, encode(tokenizer, text, texts)).sample
    err = (pred - noise).pow(2).mean((1, 2, 3))
    if args.weighting == "v":
        err = err * (1 / a.view(-1)).clamp(max=V_WEIGHT_CAP)
    loss = err.mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return loss.item()


def save(path: Path, unet, text, ema, opt, g, step: int, elapsed: float) -> None:
    with atomic_path(path) as tmp:
        torch.save({"unet": unet.state_dict(), "text": text.state_dict(), "ema_unet": ema[0].state_dict(),
                    "ema_text": ema[1].state_dict(), "opt": opt.state_dict(), "rng": g.get_state(),
                    "torch_rng": torch.get_rng_state(), "step": step, "elapsed": elapsed}, tmp)


if __name__ == "__main__":
    main()
