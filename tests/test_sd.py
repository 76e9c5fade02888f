"""Stable Diffusion 2.1-base's architecture with random weights, through the real loading path: one LODS step
of each learnable kind moves the 77×1024 embedding and the LoRA weights (slow: a 1.3 B-parameter model)."""

import pytest
import torch

from lodsgs.prior.diffusion import DiffusionPrior
from lodsgs.prior.guidance import Guidance, GuidanceConfig
from lodsgs.prior.sd_random import build_sd21_random, parameter_counts


@pytest.fixture(scope="module")
def sd_prior(tmp_path_factory):
    import shutil

    folder = build_sd21_random(tmp_path_factory.mktemp("sd") / "sd21-random")
    prior = DiffusionPrior.from_pretrained(str(folder))
    shutil.rmtree(folder)  # 2.6 GB: pytest keeps its last three temporary folders
    yield prior


@pytest.mark.slow
def test_sd_sized_prior_loads_with_sd_shapes(sd_prior):
    counts = parameter_counts(sd_prior)
    assert 860e6 < counts["unet"] < 870e6 and 80e6 < counts["vae"] < 90e6 and 330e6 < counts["text_encoder"] < 360e6
    assert sd_prior.encode_text("a corgi").shape == (1, 77, 1024)
    assert sd_prior.image_size == 512 and sd_prior.num_timesteps == 1000


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lods-embedding", "lods-lora"])
def test_one_lods_step_moves_the_learned_branch(sd_prior, method):
    images = torch.rand(1, 64, 64, 3, requires_grad=True)  # resized to 512² inside, as any render is
    guidance = Guidance(sd_prior, GuidanceConfig(method=method), "a corgi")
    before = [p.detach().clone() for p in guidance.trainable()]
    if method == "lods-embedding":
        assert before[0].shape == (1, 77, 1024)
    opt = torch.optim.Adam(guidance.param_groups())
    out = guidance(images, ["front"], step=0)
    (out.loss + out.prior_loss).backward()
    opt.step()
    assert images.grad is not None and images.grad.abs().sum() > 0  # through the VAE encoder to the renders
    moved = [(p.detach() - b).abs().max().item() for p, b in zip(guidance.trainable(), before, strict=True)]
    assert max(moved) > 0, f"{method}: the learned branch did not move"
