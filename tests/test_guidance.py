"""Guidance on tiny random priors: gradient formulas vs an independent computation, isolation of the prior's
own loss, LoRA, schedule, state. Tolerances are stated per assertion."""

import copy

import pytest
import torch

from lodsgs.errors import LodsgsError
from lodsgs.prior.diffusion import DiffusionPrior
from lodsgs.prior.guidance import Guidance, GuidanceConfig

PROMPT = "a corgi"


@pytest.fixture(scope="module", params=["latent", "pixel"])
def prior(request, tiny_prior_dirs):
    return DiffusionPrior.from_pretrained(tiny_prior_dirs[request.param])


@pytest.fixture(scope="module")
def latent(tiny_prior_dirs):
    return DiffusionPrior.from_pretrained(tiny_prior_dirs["latent"])


def renders(seed=0, b=2, size=16):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, size, size, 3, generator=g).requires_grad_(True)


def expected_grad(prior, guidance, images, views, step):
    """The method's gradient on x0, recomputed by calling the UNet directly with the guidance's t and noise."""
    cfg = guidance.cfg
    g = torch.Generator().manual_seed(0)
    g.set_state(guidance.generator.get_state())
    x0 = prior.encode_images(images).detach()
    B = x0.shape[0]
    if cfg.method != "sds":  # the prior loss draws its own t and noise first
        torch.randint(0, 1000, (B,), generator=g)
        torch.randn(x0.shape, generator=g)
    lo, hi = guidance.t_range(step)
    t = torch.randint(lo, hi + 1, (B,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    a = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    cond = torch.cat([prior.encode_text(f"{PROMPT}, {v} view") for v in views])
    negative = prior.encode_text(cfg.negative_prompt).expand(B, -1, -1)
    with torch.no_grad():
        if cfg.method == "lods-lora":
            prior.unet.disable_adapters()
            eps_c = prior.unet(x_t, t, cond).sample
            prior.unet.enable_adapters()
            eps_u = prior.unet(x_t, t, negative, cross_attention_kwargs={"scale": cfg.lora_scale}).sample
        else:
            eps_c = prior.unet(x_t, t, cond).sample
            uncond = guidance.embedding.detach().expand(B, -1, -1) if cfg.method == "lods-embedding" else negative
            eps_u = prior.unet(x_t, t, uncond).sample
    w = (1 - prior.alphas_cumprod[t]).view(-1, 1, 1, 1)
    omega = cfg.guidance_scale
    grad = w * (eps_u + omega * (eps_c - eps_u) - noise)
    return grad if cfg.method == "sds" else grad / omega


@pytest.mark.parametrize("method", ["sds", "lods-embedding", "lods-lora"])
def test_gradient_matches_the_formula(prior, method):
    cfg = GuidanceConfig(method=method, guidance_scale=100.0 if method == "sds" else 1000.0, negative_prompt="a cat")
    guidance = Guidance(prior, cfg, PROMPT, seed=3)
    with torch.no_grad():  # move α / ψ off their init so the unconditional branch really is the learned one
        for p in guidance.param_groups()[0]["params"] if method != "sds" else []:
            p.add_(0.05 * torch.randn_like(p))
    images, views = renders(), ["front", "back"]
    grad = expected_grad(prior, guidance, images, views, step=0)
    out = guidance(images, views, step=0)
    # d loss / d renders == (grad / B) chained through encode_images (VAE or resize)
    (g_img,) = torch.autograd.grad(out.loss, images)
    (g_ref,) = torch.autograd.grad(prior.encode_images(images), images, grad_outputs=grad / images.shape[0])
    scale = g_ref.abs().max()
    assert scale > 0
    assert (g_img - g_ref).abs().max() <= 1e-4 * scale  # fp32 noise of batched vs separate UNet calls
    assert abs(out.logs["grad_norm"] - grad.norm().item()) <= 1e-4 * grad.norm().item()
    if method == "sds":
        assert out.prior_loss.item() == 0.0 and not out.prior_loss.requires_grad
    else:
        assert out.prior_loss.item() > 0 and out.prior_loss.requires_grad


def image_grad(guidance, images, views, skip_prior_draws=False):
    """d loss / d images of one guidance step."""
    if skip_prior_draws:  # make SDS see the t and ε that LODS draws after its prior loss's own draws
        x0_shape = guidance.prior.encode_images(images).shape
        torch.randint(0, 1000, (x0_shape[0],), generator=guidance.generator)
        torch.randn(x0_shape, generator=guidance.generator)
    (grad,) = torch.autograd.grad(guidance(images, views, step=0).loss, images)
    return grad


def test_normalized_is_sds_over_omega(latent):
    """lods-embedding at init (α = negative embedding) is exactly SDS/ω on the same t and noise."""
    images, views = renders(), ["side", "side"]
    sds = image_grad(Guidance(latent, GuidanceConfig(method="sds", guidance_scale=50.0), PROMPT, seed=1),
                     images, views, skip_prior_draws=True)
    lods = image_grad(Guidance(latent, GuidanceConfig(method="lods-embedding", guidance_scale=50.0), PROMPT, seed=1),
                      images, views)
    assert sds.abs().max() > 0
    assert torch.allclose(lods, sds / 50.0, rtol=1e-5, atol=1e-6 * sds.abs().max().item() / 50.0)


def test_large_omega_limit_is_w_times_cond_minus_uncond(latent):
    """ω → ∞: g → w·(ε_c − ε_u) (CSD); at ω = 1e7 the (ε_u − ε)/ω term is ~1e-7 of it."""
    images, views = renders(), ["side", "front"]
    guidance = Guidance(latent, GuidanceConfig(method="lods-embedding", guidance_scale=1e7), PROMPT, seed=1)
    g = torch.Generator().manual_seed(0)
    g.set_state(guidance.generator.get_state())
    x0 = latent.encode_images(images).detach()
    torch.randint(0, 1000, (2,), generator=g)  # the prior loss's draws
    torch.randn(x0.shape, generator=g)
    lo, hi = guidance.t_range(0)
    t = torch.randint(lo, hi + 1, (2,), generator=g)
    x_t = latent.add_noise(x0, torch.randn(x0.shape, generator=g), t)
    cond = torch.cat([latent.encode_text(f"{PROMPT}, {v} view") for v in views])
    with torch.no_grad():
        eps_c = latent.unet(x_t, t, cond).sample
        eps_u = latent.unet(x_t, t, latent.encode_text("").expand(2, -1, -1)).sample
    csd = (1 - latent.alphas_cumprod[t]).view(-1, 1, 1, 1) * (eps_c - eps_u)
    (want,) = torch.autograd.grad(latent.encode_images(images), images, grad_outputs=csd / 2)
    got = image_grad(guidance, images, views)
    assert want.abs().max() > 0
    assert torch.allclose(got, want, atol=1e-3 * want.abs().max().item())


@pytest.mark.parametrize("method", ["lods-embedding", "lods-lora"])
def test_prior_loss_is_plain_eps_mse_over_all_timesteps(latent, method):
    """L = mean ||ε_φ(x'_t; α or (negative, ψ@0.5), t') − ε'||², t' ~ U{0..999}, own ε', x0 detached, no CFG."""
    guidance = Guidance(latent, GuidanceConfig(method=method, negative_prompt="a cat"), PROMPT, seed=5)
    with torch.no_grad():
        for p in guidance.param_groups()[0]["params"]:
            p.add_(0.05 * torch.randn_like(p))
    images = renders(b=4)
    g = torch.Generator().manual_seed(0)
    g.set_state(guidance.generator.get_state())
    x0 = latent.encode_images(images).detach()
    t = torch.randint(0, 1000, (4,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    x_t = latent.add_noise(x0, noise, t)
    with torch.no_grad():
        if method == "lods-embedding":
            pred = latent.unet(x_t, t, guidance.embedding.expand(4, -1, -1)).sample
        else:
            pred = latent.unet(x_t, t, latent.encode_text("a cat").expand(4, -1, -1),
                               cross_attention_kwargs={"scale": 0.5}).sample
    want = (pred - noise).square().mean()
    got = guidance(images, ["front"] * 4, step=0).prior_loss
    assert abs(got.item() - want.item()) <= 1e-5 * want.item()


def test_timestep_schedule_anneals(latent, monkeypatch):
    guidance = Guidance(latent, GuidanceConfig(method="sds", anneal_at=0.2), "x", steps=2500)  # step 500
    assert guidance.t_range(0) == (20, 980) and guidance.t_range(500) == (20, 980)
    assert guidance.t_range(501) == (20, 550)
    real_add_noise, drawn = latent.add_noise, []

    def recording_add_noise(x0, noise, t):
        drawn.append(t.clone())
        return real_add_noise(x0, noise, t)

    monkeypatch.setattr(latent, "add_noise", recording_add_noise)
    for step in (0, 600):  # every t the step draws (not their mean) lies in the range, and they cover it
        drawn.clear()
        means = [guidance(renders(b=8), ["front"] * 8, step).logs["t"] for _ in range(5)]
        t, (lo, hi) = torch.cat(drawn), guidance.t_range(step)
        assert len(t) == 40 and lo <= t.min() and t.max() <= hi, (step, t.min(), t.max())
        assert t.min() < lo + 0.1 * (hi - lo) and t.max() > hi - 0.1 * (hi - lo), (step, t.min(), t.max())
        assert means == pytest.approx([ts.float().mean().item() for ts in drawn])  # the logged t is their mean
    guidance.anneal_step = 0  # never
    assert guidance.t_range(10_000) == (20, 980)


def test_linear_schedule_ramps_t_max_to_its_end_value(latent):
    cfg = GuidanceConfig(method="sds", anneal="linear", anneal_at=0.5, max_step_percent_after=0.2)
    guidance = Guidance(latent, cfg, "x", steps=800)  # reaches its end at step 400
    highs = [guidance.t_range(step)[1] for step in (0, 100, 200, 400, 800)]
    assert highs == [980, 785, 590, 200, 200] and guidance.t_range(0)[0] == 20
    guidance.cfg.max_step_percent_after = 0.0  # never below t_min
    assert guidance.t_range(400) == (20, 20)


@pytest.mark.slow
def test_embedding_init_isolation_and_learning(prior):
    cfg = GuidanceConfig(method="lods-embedding", embedding_lr=1e-2, negative_prompt="a point cloud image")
    guidance = Guidance(prior, cfg, PROMPT, seed=0)
    assert torch.equal(guidance.embedding.detach(), prior.encode_text("a point cloud image"))  # [1, tokens, width]
    (group,) = guidance.param_groups()
    assert group["params"] == [guidance.embedding] and group["lr"] == 1e-2
    assert group["betas"] == (0.9, 0.99) and group["eps"] == 1e-15 and group["weight_decay"] == 0
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
    assert not torch.equal(guidance.embedding.detach(), prior.encode_text("a point cloud image"))
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first, (first, last)


def test_diagnostics_track_where_the_learned_branch_is(latent):
    images, views = renders(b=2), ["front", "side"]
    sds = Guidance(latent, GuidanceConfig(method="sds"), PROMPT, seed=0)(images, views, 0).logs
    assert sds["eps_gap"] > 0 and not {"alpha_shift", "alpha_cos", "lora_b_norm"} & set(sds)
    guidance = Guidance(latent, GuidanceConfig(method="lods-embedding", embedding_lr=1e-2), PROMPT, seed=0)
    first = guidance(images, views, 0).logs
    caption, negative = latent.encode_text(PROMPT).flatten(), latent.encode_text("").flatten()
    assert first["alpha_shift"] == 0.0
    assert first["alpha_cos"] == pytest.approx(torch.nn.functional.cosine_similarity(caption, negative, 0).item())
    opt = torch.optim.Adam(guidance.param_groups())
    for step in range(5):
        out = guidance(images, views, step)
        opt.zero_grad()
        out.prior_loss.backward()
        opt.step()
    moved = (guidance.embedding.detach().flatten() - negative).norm() / negative.norm()
    assert guidance.diagnostics()["alpha_shift"] == pytest.approx(moved.item()) and moved > 0
    lora = Guidance(latent, GuidanceConfig(method="lods-lora", lora_lr=1e-2), PROMPT, seed=0)
    assert lora(images, views, 0).logs["lora_b_norm"] == 0.0  # B starts at zero: the base model
    opt = torch.optim.Adam(lora.param_groups())
    out = lora(images, views, 1)
    out.prior_loss.backward()
    opt.step()
    assert lora.diagnostics()["lora_b_norm"] > 0
    Guidance(latent, GuidanceConfig(method="sds"), PROMPT)  # leave the shared prior without adapters


def test_sds_loss_moves_the_renders_not_the_embedding(latent):
    guidance = Guidance(latent, GuidanceConfig(method="lods-embedding"), PROMPT, seed=0)
    out = guidance(renders(), ["front", "side"], 0)
    out.loss.backward()
    assert guidance.embedding.grad is None  # α learns only from prior_loss (UNet under no_grad)
    assert Guidance(latent, GuidanceConfig(method="sds"), PROMPT).param_groups() == []


@pytest.mark.slow
def test_lora_learns_only_adapters_and_disabled_equals_base(latent):
    prior = latent
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([10, 500])
    emb = prior.encode_text("").expand(2, -1, -1)
    with torch.no_grad():
        base = prior.predict_noise(x, t, emb)
    guidance = Guidance(prior, GuidanceConfig(method="lods-lora", lora_lr=1e-2), PROMPT, seed=0)
    assert len(guidance.lora) > 0 and all(p.requires_grad and p.dtype == torch.float32 for p in guidance.lora)
    names = {n for n, _ in prior.unet.named_parameters() if "lora_" in n}
    assert any("attn1.to_q" in n for n in names) and any("attn2.to_out.0" in n for n in names)
    with torch.no_grad():
        assert torch.equal(prior.predict_noise(x, t, emb, lora_scale=0.5), base)  # B = 0: starts at base
    opt = torch.optim.Adam(guidance.param_groups())
    images = renders(b=4)
    frozen = {n: p.clone() for n, p in prior.named_parameters() if "lora_" not in n}
    losses = []
    for step in range(25):
        out = guidance(images, ["side"] * 4, step)
        (g_img,) = torch.autograd.grad(out.prior_loss, images, retain_graph=True, allow_unused=True)
        assert g_img is None
        opt.zero_grad()
        out.prior_loss.backward()
        opt.step()
        losses.append(out.prior_loss.item())
    assert all(torch.equal(frozen[n], p) for n, p in prior.named_parameters() if "lora_" not in n)
    assert sum(losses[-5:]) < sum(losses[:5])
    with torch.no_grad():
        prior.unet.disable_adapters()
        off = prior.predict_noise(x, t, emb)
        prior.unet.enable_adapters()
        half, full = prior.predict_noise(x, t, emb, lora_scale=0.5), prior.predict_noise(x, t, emb, lora_scale=1.0)
    assert torch.allclose(off, base, atol=1e-6)  # adapters disabled == the base UNet
    assert not torch.allclose(half, base, atol=1e-4)  # the trained LoRA changes the unconditional branch
    assert not torch.allclose(half, full, atol=1e-4)  # and its scale is honoured
    Guidance(prior, GuidanceConfig(method="lods-lora"), PROMPT)  # a later run on the shared prior starts clean
    with torch.no_grad():
        assert torch.allclose(prior.predict_noise(x, t, emb, lora_scale=0.5), base, atol=1e-6)
    Guidance(prior, GuidanceConfig(method="sds"), PROMPT)
    assert not getattr(prior.unet, "peft_config", None)


@pytest.mark.parametrize("method", ["lods-embedding", "lods-lora"])
def test_resumed_guidance_continues_identically(latent, method):
    images, views = renders(), ["front", "back"]

    def step(guidance, opt, k):
        out = guidance(images, views, k)
        opt.zero_grad()
        out.prior_loss.backward()
        opt.step()
        return out.loss.item()

    a = Guidance(latent, GuidanceConfig(method=method, lora_lr=1e-3), PROMPT, seed=1)
    opt_a = torch.optim.Adam(a.param_groups())
    step(a, opt_a, 0)
    saved, saved_opt = a.state_dict(), copy.deepcopy(opt_a.state_dict())  # Adam's state_dict is live
    want = [step(a, opt_a, k) for k in (1, 2)]
    b = Guidance(latent, GuidanceConfig(method=method, lora_lr=1e-3), PROMPT, seed=9)  # resets the shared LoRA
    opt_b = torch.optim.Adam(b.param_groups())
    b.load_state_dict(saved)
    opt_b.load_state_dict(saved_opt)
    assert [step(b, opt_b, k) for k in (1, 2)] == want  # same t, noise, α / ψ: bit-identical
    with pytest.raises(LodsgsError, match="checkpoint was made with guidance"):
        Guidance(latent, GuidanceConfig(method="sds"), PROMPT).load_state_dict(saved)


def test_bad_method_is_a_clear_error(latent):
    with pytest.raises(LodsgsError, match="valid: sds, lods-embedding, lods-lora"):
        Guidance(latent, GuidanceConfig(method="vsd"), PROMPT)


def test_fp16_prior_loss_is_scaled_so_alpha_gets_gradients(tiny_prior_dirs):
    """ε-MSE over an SD-sized batch hands each element ~1e-5; in an fp16 UNet that underflows. With the loss
    weight lowered 1e4× (the tiny prior's few elements are otherwise safe), the naive fp16 path gives α exactly
    zero gradient; the scaled one matches fp32."""
    from lodsgs.prior.diffusion import DiffusionPrior
    from lodsgs.prior.guidance import Guidance, GuidanceConfig

    images = torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(0))

    def alpha_grad(half: bool, scaled: bool) -> torch.Tensor:
        prior = DiffusionPrior.from_pretrained(tiny_prior_dirs["pixel"])
        if half:
            prior.unet.half()
            prior.text_encoder.half()
        g = Guidance(prior, GuidanceConfig(method="lods-embedding", prior_loss_weight=1e-4), "a red cube", seed=0)
        assert g.grad_scale == (4096.0 if half else 1.0)
        if not scaled:
            g.grad_scale = 1.0
        g._prior_loss(prior.encode_images(images).detach()).backward()
        return g.embedding.grad.float().flatten()

    reference = alpha_grad(half=False, scaled=True)
    assert reference.abs().max() > 0
    # underflow: α would not train. Exactly zero on most CPUs; where fp16 keeps subnormals, a few ±6e-8 values
    # that point nowhere near fp32's gradient
    naive = alpha_grad(half=True, scaled=False)
    assert (naive == 0).all() or torch.nn.functional.cosine_similarity(naive, reference, dim=0) < 0.5
    scaled = alpha_grad(half=True, scaled=True)
    assert torch.nn.functional.cosine_similarity(scaled, reference, dim=0) > 0.999


@pytest.mark.parametrize("method", ["lods-embedding", "lods-lora"])
def test_bf16_keeps_the_direction_of_both_gradients(method):
    """prior.bf16 on a CPU with native bf16: every UNet call runs under bf16 autocast, attention and group norms in
    fp32 (lodsgs/prior/precision.py). On the shipped prior, with renders of a truth object, against fp32 on the
    same t and ε: the gradient on the renders keeps its direction (cosine 0.992-0.998 per view), and so does the
    prior loss's on α / ψ (0.9994 / 0.9992); the prior loss itself moves by 0.4-0.7 % (measured 2026-12-06)."""
    from lodsgs.cameras import CameraConfig, sample_cameras
    from lodsgs.names import SHAPES_DIR
    from lodsgs.prior.shapes.world import build_object
    from lodsgs.splats.render import render

    prior = DiffusionPrior.from_pretrained(str(SHAPES_DIR))
    if not prior.use_bf16(True):
        pytest.skip("this CPU has no native bf16 (AVX512-BF16)")
    cams = sample_cameras(CameraConfig(radius=(2.3, 2.8), fovy=(38.0, 46.0)), 4, torch.Generator().manual_seed(0))
    with torch.no_grad():
        shots = render(build_object("a red cube"), cams, background=torch.ones(3)).rgb
    cfg = GuidanceConfig(method=method, guidance_scale=3.0, negative_prompt="")
    results = {}
    for bf16 in (False, True):
        prior.bf16 = bf16
        torch.manual_seed(0)  # LoRA's A matrices
        guidance = Guidance(prior, cfg, "a red cube", seed=5)
        if method == "lods-lora":  # B = 0 at the start, where B's gradient is all there is: move it off zero
            with torch.no_grad():
                for p in guidance.lora_b:
                    p.normal_(0, 0.01, generator=torch.Generator().manual_seed(1))
        images = shots.clone().requires_grad_(True)
        out = guidance(images, ["front", "side", "back", "side"], step=0)
        (grad,) = torch.autograd.grad(out.loss, images)
        learned = torch.cat([g.flatten() for g in torch.autograd.grad(out.prior_loss, guidance.trainable())])
        results[bf16] = grad.flatten(1), learned, out.prior_loss.item()
    cosine = torch.nn.functional.cosine_similarity(results[True][0], results[False][0], dim=1)
    assert cosine.min() >= 0.985 and cosine.mean() >= 0.99, cosine
    learned_cosine = torch.nn.functional.cosine_similarity(results[True][1], results[False][1], dim=0)
    assert learned_cosine >= 0.995, learned_cosine
    assert results[True][2] == pytest.approx(results[False][2], rel=0.02)
    assert not torch.equal(results[True][1], results[False][1])  # bf16 did run: the numbers moved


def test_bf16_is_used_only_where_it_pays():
    """Autocast recasts every frozen weight on each call, so a call of under 2·32² latent pixels (the shapes prior's
    prior loss in a one-image edit) stays fp32 and gives fp32's numbers; a bigger one runs in bf16."""
    from lodsgs.names import SHAPES_DIR

    prior = DiffusionPrior.from_pretrained(str(SHAPES_DIR))
    if not prior.use_bf16(True):
        pytest.skip("this CPU has no native bf16 (AVX512-BF16)")
    emb = prior.encode_text("a red cube")
    for rows, same in ((1, True), (2, False)):
        x = torch.randn(rows, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        t = torch.full((rows,), 500)
        outs = []
        for bf16 in (False, True):
            prior.bf16 = bf16
            outs.append(prior.predict_noise(x, t, emb.expand(rows, -1, -1)))
        assert torch.equal(outs[0], outs[1]) == same
