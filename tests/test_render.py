"""Rendering: the CPU rasterizer against a dense oracle (images and gradients), both against closed-form
images, render()'s outputs and meta, DefaultStrategy on that meta, and gsplat parity on CUDA."""

import math

import pytest
import torch
from gsplat.strategy import DefaultStrategy

from lodsgs.cameras import orbit_cameras
from lodsgs.splats.model import Splats, make_optimizers
from lodsgs.splats.raster_dense import render_dense
from lodsgs.splats.raster_torch import rasterize
from lodsgs.splats.render import render

FOVY = 50.0
DIST = 2.7


def random_scene(n: int, sh_degree: int, seed: int) -> Splats:
    """Gaussians in a ball of radius 0.5, plus a few straddling the image border, behind camera 0 and
    crossing its near plane (camera 0 sits at azimuth 0: +z, DIST from the origin)."""
    g = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    means = d * 0.5 * torch.rand(n, 1, generator=g) ** (1 / 3)
    log_scales = torch.log(0.01 + 0.04 * torch.rand(n, 3, generator=g))
    border = torch.tensor([[1.25, 0.2, 0.0], [-0.3, -1.28, 0.1], [1.2, 1.2, -0.2], [-1.4, 0.0, 0.3]])
    behind = torch.tensor([[0.0, 0.0, DIST + 0.3], [0.1, -0.1, DIST + 1.0], [0.05, 0.0, DIST - 0.005]])
    means = torch.cat([means, border, behind])
    extra = len(border) + len(behind)
    log_scales = torch.cat([log_scales, torch.log(torch.full((extra, 3), 0.15))])
    n = len(means)
    k = (sh_degree + 1) ** 2
    sh = 0.6 * torch.randn(n, k, 3, generator=g)
    sh[:, 1:] *= 0.3
    params = {"means": means, "scales": log_scales, "quats": torch.randn(n, 4, generator=g),
              "opacities": torch.logit(0.1 + 0.8 * torch.rand(n, generator=g)), "sh0": sh[:, :1],
              "shN": sh[:, 1:]}
    return Splats(params, sh_degree=sh_degree)


def cameras(n: int, width: int, height: int):
    return orbit_cameras(torch.linspace(0, 35, n), torch.linspace(0, 250, n), DIST, FOVY, width, height)


def call(fn, splats: Splats, cams, background):
    """(rgb, alpha, depth) from ``rasterize`` or ``render_dense`` on a Splats and Cameras."""
    return fn(splats.means, splats.quats, splats.scales, splats.opacities, splats.sh, cams.viewmats, cams.Ks,
              cams.width, cams.height, splats.sh_degree, background)[:3]


def render_with(fn, splats: Splats, cams, background, weights):
    """Render with ``fn`` (rasterize or render_dense), backprop a fixed random loss; outputs, grads."""
    for p in splats.params.values():
        p.grad = None
    rgb, alpha, depth = call(fn, splats, cams, background)
    loss = (weights[0] * rgb).sum() + (weights[1] * alpha).sum() + (weights[2] * depth * alpha).sum()
    loss.backward()
    grads = {k: p.grad.clone() for k, p in splats.params.items() if p.numel()}
    return rgb.detach(), alpha.detach(), depth.detach(), grads


@pytest.mark.parametrize(("width", "height", "sh_degree", "n_cams"),
                         [(16, 16, 0, 2), (32, 24, 3, 3), (48, 48, 3, 2), (24, 32, 0, 2)])
def test_rasterizer_matches_dense_images_and_gradients(width, height, sh_degree, n_cams):
    splats = random_scene(600, sh_degree, seed=width + height + sh_degree)
    cams = cameras(n_cams, width, height)
    bg = torch.rand(n_cams, 3, generator=torch.Generator().manual_seed(1))
    weights = [torch.rand(n_cams, height, width, c, generator=torch.Generator().manual_seed(i))
               for i, c in enumerate([3, 1, 1])]
    rgb, alpha, depth, grads = render_with(rasterize, splats, cams, bg, weights)
    rgb_d, alpha_d, depth_d, grads_d = render_with(render_dense, splats, cams, bg, weights)

    # the scene must exercise what it claims: border straddlers, culled Gaussians behind the camera
    meta = rasterize(splats.means, splats.quats, splats.scales, splats.opacities, splats.sh, cams.viewmats,
                     cams.Ks, width, height, sh_degree)[3]
    visible = (meta["radii"] > 0).all(-1)
    m2d = meta["means2d"]
    outside = (m2d[..., 0] < 0) | (m2d[..., 0] > width) | (m2d[..., 1] < 0) | (m2d[..., 1] > height)
    assert (visible & outside).any()
    assert (~visible[0] & (meta["depths"][0] < 0.01)).sum() >= 3
    assert alpha.max() > 0.9 and alpha.min() < 1e-3  # opaque centre and empty corners

    # tolerances: images 2e-5 absolute; gradients 1e-4 of the largest gradient of each parameter
    assert (rgb - rgb_d).abs().max() < 2e-5
    assert (alpha - alpha_d).abs().max() < 2e-5
    hit = alpha_d > 0.05
    assert (depth - depth_d)[hit].abs().max() < 1e-4
    assert grads.keys() == grads_d.keys() and len(grads) >= 5
    for key, g in grads_d.items():
        assert g.abs().max() > 0, key
        assert (grads[key] - g).abs().max() <= 1e-4 * g.abs().max() + 1e-7, key


def single_gaussian_image(z: float, scale: float, opacity: float, size: int) -> tuple[torch.Tensor, float]:
    """Closed form: an isotropic Gaussian on the optical axis at depth z: 2D variance (f·s/z)² + 0.3."""
    f = 0.5 * size / math.tan(math.radians(FOVY) / 2)
    var = (f * scale / z) ** 2 + 0.3
    c = torch.arange(size) + 0.5 - size / 2
    r2 = c[None, :] ** 2 + c[:, None] ** 2
    alpha = (opacity * torch.exp(-0.5 * r2 / var)).clamp(max=0.999)
    return torch.where(alpha >= 1 / 255, alpha, 0.0), var


def axis_splats(depths: list[float], scales: list[float], opacities: list[float], colors: list[list[float]]):
    n = len(depths)
    means = torch.zeros(n, 3)
    means[:, 2] = DIST - torch.tensor(depths)  # camera at azimuth 0 looks down -z from +z
    params = {"means": means, "scales": torch.log(torch.tensor(scales))[:, None].repeat(1, 3),
              "quats": torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
              "opacities": torch.logit(torch.tensor(opacities)),
              "sh0": ((torch.tensor(colors) - 0.5) / 0.28209479177387814)[:, None]}
    return Splats(params)


@pytest.mark.parametrize("fn", [render_dense, rasterize])
def test_two_gaussians_on_the_axis_match_closed_form(fn):
    """Front-to-back compositing, background, alpha threshold and expected depth, without any oracle."""
    size = 20
    splats = axis_splats([2.2, 3.0], [0.08, 0.2], [0.7, 0.9], [[1.0, 0.2, 0.1], [0.1, 0.3, 1.0]])
    cams = cameras(1, size, size)
    bg = torch.tensor([[0.2, 0.9, 0.4]])
    with torch.no_grad():
        rgb, alpha, depth = call(fn, splats, cams, bg)
    a1, _ = single_gaussian_image(2.2, 0.08, 0.7, size)
    a2, _ = single_gaussian_image(3.0, 0.2, 0.9, size)
    w1, w2 = a1, (1 - a1) * a2
    c1, c2 = torch.tensor([1.0, 0.2, 0.1]), torch.tensor([0.1, 0.3, 1.0])
    expected = w1[..., None] * c1 + w2[..., None] * c2 + ((1 - a1) * (1 - a2))[..., None] * bg[0]
    assert (a1 == 0).any() and (a1 > 0.5).any()  # the threshold cuts the front one inside the image
    assert torch.allclose(rgb[0], expected, atol=1e-5)
    assert torch.allclose(alpha[0, ..., 0], w1 + w2, atol=1e-5)
    hit = (w1 + w2) > 0.01
    exp_depth = (2.2 * w1 + 3.0 * w2)[hit] / (w1 + w2)[hit]
    assert torch.allclose(depth[0, ..., 0][hit], exp_depth, atol=1e-4)


@pytest.mark.parametrize("fn", [render_dense, rasterize])
def test_opaque_pixels_stop_before_transmittance_drops_below_1e_4(fn):
    """gsplat's early stop: after alpha 0.999 (T = 1e-3) another 0.999 would make T = 1e-6: it is skipped."""
    splats = axis_splats([2.5, 2.8], [0.1, 0.1], [0.99999, 0.99999], [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    cams = cameras(1, 9, 9)
    with torch.no_grad():
        rgb, alpha, _ = call(fn, splats, cams, torch.ones(1, 3))
    centre = rgb[0, 4, 4]
    assert torch.allclose(centre, torch.tensor([0.999 + 0.001, 0.001, 0.001]), atol=1e-6)
    assert abs(alpha[0, 4, 4, 0].item() - 0.999) < 1e-6


@pytest.mark.parametrize("fn", [render_dense, rasterize])
def test_sh_view_direction_is_means_minus_camera(fn):
    """Degree 1, only the y band (basis -0.4886·y): seen from above, dir = mean - campos points down."""
    sh = torch.zeros(1, 4, 3)
    sh[0, 1] = 1.0
    params = {"means": torch.zeros(1, 3), "scales": torch.full((1, 3), math.log(0.1)),
              "quats": torch.tensor([[1.0, 0, 0, 0]]), "opacities": torch.logit(torch.tensor([0.99999])),
              "sh0": sh[:, :1], "shN": sh[:, 1:]}
    splats = Splats(params, sh_degree=1)
    cams = orbit_cameras(torch.tensor([30.0, -30.0]), torch.tensor([0.0, 0.0]), DIST, FOVY, 9, 9)
    with torch.no_grad():
        rgb = call(fn, splats, cams, None)[0][:, 4, 4, 0]
    expected = 0.999 * (0.5 + 0.4886025119029199 * torch.tensor([0.5, -0.5]))
    assert torch.allclose(rgb, expected, atol=1e-5)


def test_render_outputs_meta_and_background():
    splats = Splats.random_ball(400, radius=0.5, seed=3, scale=0.03, opacity=0.5)
    cams = cameras(3, 32, 24)
    black = render(splats, cams)
    white = render(splats, cams, background=(1.0, 1.0, 1.0))
    assert black.rgb.shape == (3, 24, 32, 3) and black.alpha.shape == black.depth.shape == (3, 24, 32, 1)
    assert torch.allclose(white.rgb - black.rgb, (1 - black.alpha).expand(-1, -1, -1, 3), atol=1e-6)
    hit = black.alpha[..., 0] > 0.5
    assert hit.any()
    assert ((black.depth[..., 0][hit] - DIST).abs() < 0.6).all()  # the ball is DIST away, radius 0.5
    meta = black.meta
    assert meta["means2d"].shape == (3, 400, 2) and meta["means2d"].requires_grad
    assert meta["radii"].shape == (3, 400, 2) and meta["radii"].dtype == torch.int32
    assert meta["gaussian_ids"] is None and meta["packed"] is False
    assert (meta["width"], meta["height"], meta["n_cameras"]) == (32, 24, 3)
    with pytest.raises(ValueError, match="background"):
        render(splats, cams, background=(1.0, 1.0))
    with pytest.raises(ValueError, match="sh_degree"):
        render(splats, cams, sh_degree=1)


def test_sh_degree_changes_colour_with_view_direction():
    splats = Splats.random_ball(200, seed=4, scale=0.04, opacity=0.6, sh_degree=1)
    with torch.no_grad():
        splats.params["shN"].normal_(0, 0.5)
    cams = cameras(2, 16, 16)
    full, dc = render(splats, cams).rgb, render(splats, cams, sh_degree=0).rgb
    assert (full - dc).abs().max() > 0.05


def test_nothing_visible_renders_background_and_backprops_zeros():
    splats = Splats.random_ball(50, radius=0.1, seed=6)
    with torch.no_grad():
        splats.params["means"] += torch.tensor([0.0, 0.0, DIST + 1.0])  # behind camera 0
    out = render(splats, cameras(1, 16, 16), background=(0.2, 0.4, 0.6))
    out.meta["means2d"].retain_grad()
    out.rgb.sum().backward()
    assert torch.allclose(out.rgb, torch.tensor([0.2, 0.4, 0.6]).expand(1, 16, 16, 3))
    assert out.meta["n_pairs"] == 0 and (out.meta["radii"] == 0).all()
    assert out.meta["means2d"].grad.abs().sum() == 0 and splats.params["means"].grad.abs().sum() == 0


def test_default_strategy_densifies_with_cpu_meta():
    splats = Splats.random_ball(300, seed=5, scale=0.08, opacity=0.5)
    lrs = {"means": 1e-3, "scales": 1e-3, "quats": 1e-3, "opacities": 1e-2, "sh0": 1e-2, "shN": 1e-3}
    optimizers = make_optimizers(splats, lrs)
    strategy = DefaultStrategy(refine_start_iter=0, refine_every=2, grow_grad2d=1e-6, grow_scale3d=0.05,
                               prune_opa=0.0)
    strategy.check_sanity(splats.params, optimizers)
    state = strategy.initialize_state(scene_scale=1.0)
    target = torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(0))
    for step in range(3):
        out = render(splats, cameras(2, 16, 16), background=(1.0, 1.0, 1.0))
        strategy.step_pre_backward(splats.params, optimizers, state, step, out.meta)
        ((out.rgb - target) ** 2).mean().backward()
        assert out.meta["means2d"].grad is not None and out.meta["means2d"].grad.abs().sum() > 0
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        strategy.step_post_backward(splats.params, optimizers, state, step, out.meta, packed=False)
        if step == 0:
            visible = (out.meta["radii"] > 0).all(-1).any(0)
            assert (state["count"] > 0).eq(visible).all() and (state["grad2d"][visible] > 0).any()
    assert splats.num > 300  # step 2 grew the set (duplicate / split)
    assert all(p.shape[0] == splats.num for p in splats.params.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="gsplat parity needs a CUDA GPU; none here")
def test_gsplat_cuda_matches_cpu_rasterizer():
    splats = random_scene(2000, 3, seed=7)
    cams = cameras(3, 64, 48)
    bg = (0.3, 0.6, 0.9)
    cpu = render(splats, cams, background=bg)
    (cpu.rgb.sum() + cpu.alpha.sum()).backward()
    grads_cpu = {k: p.grad.clone() for k, p in splats.params.items()}
    splats_gpu = Splats({k: p.detach() for k, p in splats.params.items()}, sh_degree=3).cuda()
    gpu = render(splats_gpu, cams.to("cuda"), background=bg)
    (gpu.rgb.sum() + gpu.alpha.sum()).backward()
    # float32 summation order and T products differ: 1e-4 on images, 1e-3 relative on gradients
    assert (gpu.rgb.cpu() - cpu.rgb).abs().max() < 1e-4
    assert (gpu.alpha.cpu() - cpu.alpha).abs().max() < 1e-4
    assert (gpu.meta["radii"].cpu() == cpu.meta["radii"]).float().mean() > 0.999
    for key, g in grads_cpu.items():
        g_gpu = splats_gpu.params[key].grad.cpu()
        assert (g_gpu - g).abs().max() <= 1e-3 * g.abs().max() + 1e-6, key


def test_pairs_behind_the_transmittance_cut_are_dropped_and_gradients_still_match(monkeypatch):
    """An opaque front layer hides a second layer: the pre-pass keeps only the pairs in front of each pixel's
    cut (most pairs here), and images and gradients still match the dense oracle, which has no such pass."""
    import lodsgs.splats.raster_torch as rt

    g = torch.Generator().manual_seed(3)
    n = 200
    xy = (torch.rand(n, 2, generator=g) - 0.5) * 0.8
    # half in front, half behind (the camera sits at +z); distinct depths, so both renderers sort them alike
    depth = torch.where(torch.arange(n) < n // 2, 0.3, -0.3)[:, None] + 0.05 * torch.rand(n, 1, generator=g)
    scales = torch.log(0.06 + 0.1 * torch.rand(n, 3, generator=g))  # anisotropic: the rotations matter
    splats = Splats({"means": torch.cat([xy, depth], 1), "scales": scales,
                     "quats": torch.randn(n, 4, generator=g), "opacities": torch.full((n,), 6.0),
                     "sh0": torch.randn(n, 1, 3, generator=g)})
    cams, bg = cameras(1, 24, 24), torch.rand(1, 3, generator=g)
    weights = [torch.randn(1, 24, 24, k, generator=g) for k in (3, 1, 1)]
    seen, visible = [], rt._visible_pairs

    def counting(pix, *args):  # the pairs before and after the pre-pass
        out = visible(pix, *args)
        seen.extend([len(pix), len(out[0])])
        return out

    monkeypatch.setattr(rt, "_visible_pairs", counting)
    rgb, alpha, depth_img, grads = render_with(rasterize, splats, cams, bg, weights)
    assert len(seen) == 2 and seen[1] < 0.5 * seen[0]  # most pairs lie behind the cut
    rgb_d, alpha_d, depth_d, grads_d = render_with(render_dense, splats, cams, bg, weights)
    assert (rgb - rgb_d).abs().max() <= 2e-5 and (alpha - alpha_d).abs().max() <= 2e-5
    for key, gd in grads_d.items():
        assert (grads[key] - gd).abs().max() <= 1e-4 * gd.abs().max() + 1e-7, key
