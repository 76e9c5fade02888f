"""Prior and guidance on tiny random models loaded through from_pretrained (latent and pixel paths)."""

import pytest
import torch

from lodsgs.errors import LodsgsError
from lodsgs.prior.diffusion import DiffusionPrior, resolve_model
from lodsgs.prior.fused import guidance_grad_reference
from lodsgs.prior.guidance import Guidance, GuidanceConfig


@pytest.fixture(scope="module", params=["latent", "pixel"])
def prior(request, tiny_prior_dirs):
    return DiffusionPrior.from_pretrained(tiny_prior_dirs[request.param])


def renders(seed=0, b=2, size=16):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, size, size, 3, generator=g).requires_grad_(True)


def test_loads_both_paths(tiny_prior_dirs):
    latent = DiffusionPrior.from_pretrained(tiny_prior_dirs["latent"])
    pixel = DiffusionPrior.from_pretrained(tiny_prior_dirs["pixel"])
    assert latent.vae is not None and pixel.vae is None
    assert latent.encode_images(renders()).shape == (2, 4, 8, 8)
    x = pixel.encode_images(renders())
    assert x.shape == (2, 3, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert all(not p.requires_grad for p in latent.parameters())
    assert latent.encode_text("a corgi").shape == (1, 16, 32)


def expected_grad(prior, guidance, images, views, step, method):
    """Recompute the guidance gradient independently with the same t and noise."""
    g = torch.Generator().manual_seed(0)
    g.set_state(guidance.generator.get_state())
    x0 = prior.encode_images(images).detach()
    B = x0.shape[0]
    if method != "sds":  # the prior loss draws first
        torch.randint(0, 1000, (B,), generator=g)
        torch.randn(x0.shape, generator=g)
    lo, hi = guidance.t_range(step)
    t = torch.randint(lo, hi + 1, (B,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    a = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    with torch.no_grad():
        cond = torch.cat([prior.encode_text(f"a corgi, {v} view") for v in views])
        eps_c = prior.unet(x_t, t, cond).sample
        uncond = guidance.embedding.detach() if guidance.embedding is not None else prior.encode_text("")
        eps_u = prior.unet(x_t, t, uncond.expand(B, -1, -1)).sample
    w = (1 - prior.alphas_cumprod[t]).view(-1, 1, 1, 1)
    omega = guidance.cfg.guidance_scale
    grad = w * (eps_u + omega * (eps_c - eps_u) - noise)
    return grad / omega if method != "sds" else grad, x0, eps_c, eps_u, w


@pytest.mark.parametrize("method", ["sds", "lods-embedding"])
def test_gradient_matches_the_formula(prior, method):
    cfg = GuidanceConfig(method=method, guidance_scale=100.0 if method == "sds" else 1000.0)
    guidance = Guidance(prior, cfg, "a corgi", seed=3)
    images = renders()
    views = ["front", "back"]
    grad, *_ = expected_grad(prior, guidance, images, views, step=0, method=method)
    out = guidance(images, views, step=0)
    # d loss / d renders == (grad / B) chained through encode_images (VAE or resize)
    (g_img,) = torch.autograd.grad(out.loss, images)
    (g_ref,) = torch.autograd.grad(prior.encode_images(images), images, grad_outputs=grad / images.shape[0])
    scale = g_ref.abs().max()
    assert scale > 0
    assert (g_img - g_ref).abs().max() <= 1e-4 * scale  # fp32 noise of batched vs separate UNet calls
    assert out.prior_loss.item() == 0.0 if method == "sds" else out.prior_loss.item() > 0


def test_normalized_is_sds_over_omega_and_large_omega_limit():
    g = torch.Generator().manual_seed(0)
    c, u, e = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    w = torch.tensor([0.3, 0.9])
    for omega in (7.5, 100.0, 1000.0):
        sds = guidance_grad_reference(c, u, e, w, omega, normalized=False)
        lods = guidance_grad_reference(c, u, e, w, omega, normalized=True)
        assert torch.allclose(lods, sds / omega, rtol=1e-5, atol=1e-7)
    big = guidance_grad_reference(c, u, e, w, 1e7, normalized=True)
    assert torch.allclose(big, w.view(-1, 1, 1, 1) * (c - u), atol=1e-5)  # CSD limit: w·(ε_c − ε_u)


def test_timestep_schedule_anneals(tiny_prior_dirs):
    prior = DiffusionPrior.from_pretrained(tiny_prior_dirs["pixel"])
    guidance = Guidance(prior, GuidanceConfig(method="sds", anneal_after_step=500), "x")
    assert guidance.t_range(0) == (20, 980) and guidance.t_range(500) == (20, 980)
    assert guidance.t_range(501) == (20, 550)


def test_embedding_init_isolation_and_learning(prior):
    guidance = Guidance(prior, GuidanceConfig(method="lods-embedding", embedding_lr=1e-2), "a corgi", seed=0)
    assert torch.equal(guidance.embedding.detach(), prior.encode_text(""))
    images = renders(b=4)
    opt = torch.optim.Adam(guidance.param_groups())
    before = {n: p.clone() for n, p in prior.named_parameters()}
    losses = []
    for step in range(25):
        out = guidance(images, ["front"] * 4, step)
        (g_img,) = torch.autograd.grad(out.prior_loss, images, retain_graph=True, allow_unused=True)
        assert g_img is None  # the renders get nothing from the prior's loss
        opt.zero_grad()
        out.prior_loss.backward()
        opt.step()
        losses.append(out.prior_loss.item())
    assert all(torch.equal(before[n], p) for n, p in prior.named_parameters())  # UNet, VAE, text frozen
    assert all(p.grad is None for p in prior.parameters())
    assert not torch.equal(guidance.embedding.detach(), prior.encode_text(""))
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first, (first, last)


def test_lora_learns_only_adapters_and_disabled_equals_base(tiny_prior_dirs):
    prior = DiffusionPrior.from_pretrained(tiny_prior_dirs["latent"])
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([10, 500])
    emb = prior.encode_text("").expand(2, -1, -1)
    with torch.no_grad():
        base = prior.predict_noise(x, t, emb)
    guidance = Guidance(prior, GuidanceConfig(method="lods-lora", lora_lr=1e-2), "a corgi", seed=0)
    assert len(guidance.lora) > 0 and all(p.requires_grad for p in guidance.lora)
    opt = torch.optim.Adam(guidance.param_groups())
    images = renders(b=4)
    base_names = {n for n, p in prior.unet.named_parameters() if "lora_" not in n}
    frozen = {n: p.clone() for n, p in prior.unet.named_parameters() if n in base_names}
    losses = []
    for step in range(25):
        out = guidance(images, ["side"] * 4, step)
        opt.zero_grad()
        out.prior_loss.backward()
        opt.step()
        losses.append(out.prior_loss.item())
    assert all(torch.equal(frozen[n], p) for n, p in prior.unet.named_parameters() if n in base_names)
    assert sum(losses[-5:]) < sum(losses[:5])
    with torch.no_grad():
        prior.unet.disable_adapters()
        off = prior.predict_noise(x, t, emb)
        prior.unet.enable_adapters()
        on = prior.predict_noise(x, t, emb, lora_scale=0.5)
    assert torch.allclose(off, base, atol=1e-6)
    assert not torch.allclose(on, base, atol=1e-6)  # the trained LoRA changes the unconditional branch
    Guidance(prior, GuidanceConfig(method="sds"), "a corgi")  # a later run on the shared prior starts clean
    with torch.no_grad():
        assert torch.allclose(prior.predict_noise(x, t, emb), base, atol=1e-6)


def test_state_dict_round_trip(tiny_prior_dirs):
    prior = DiffusionPrior.from_pretrained(tiny_prior_dirs["pixel"])
    a = Guidance(prior, GuidanceConfig(method="lods-embedding"), "x", seed=1)
    a(renders(), ["front", "side"], 0)
    with torch.no_grad():
        a.embedding.add_(0.5)
    b = Guidance(prior, GuidanceConfig(method="lods-embedding"), "x", seed=9)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.embedding, b.embedding)
    assert torch.equal(torch.randn(3, generator=a.generator), torch.randn(3, generator=b.generator))


def test_missing_model_offline_is_one_clear_error(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    with pytest.raises(LodsgsError) as err:
        DiffusionPrior.from_pretrained("lodsgs-test/no-such-model")
    text = str(err.value)
    assert "'lodsgs-test/no-such-model'" in text and "cache" in text and "--set prior.model=" in text
    with pytest.raises(LodsgsError, match="cannot load the diffusion model from folder"):
        DiffusionPrior.from_pretrained(str(tmp_path))
    assert resolve_model("sd21") == "stabilityai/stable-diffusion-2-1-base"
