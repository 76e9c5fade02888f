"""Densification through gsplat's DefaultStrategy: exact clone/split/prune counts on a synthetic meta,
growth and pruning with the CPU renderer, consistent optimizers, the opacity reset, the growth cap."""

import math

import pytest
import torch

from lodsgs.cameras import orbit_cameras
from lodsgs.splats.densify import Densifier, DensifyConfig
from lodsgs.splats.model import Splats, make_optimizers
from lodsgs.splats.render import render

LRS = {"means": 1e-3, "scales": 1e-3, "quats": 1e-3, "opacities": 1e-2, "sh0": 1e-2, "shN": 1e-3}
W = H = 64


def check_consistent(splats: Splats, optimizers: dict) -> None:
    """Every optimizer holds exactly the current Parameter, with Adam moments of its shape."""
    for key, p in splats.params.items():
        opt = optimizers[key]
        assert opt.param_groups[0]["params"] == [p] and opt.param_groups[0]["params"][0] is p, key
        assert len(opt.state) == 1 and next(iter(opt.state)) is p, key
        state = opt.state[p]
        assert state["exp_avg"].shape == p.shape and state["exp_avg_sq"].shape == p.shape, key


def designed_splats() -> tuple[Splats, torch.Tensor]:
    """10 Gaussians with known fates at scene_scale 1 (grow_scale3d 0.01, prune_scale3d 0.1, prune_opa 0.005):
    0-3 high gradient & small -> duplicated; 4-5 high & large -> split; 6-7 untouched;
    8 transparent -> pruned; 9 larger than prune_scale3d -> pruned. Returns splats and the 2D grad norms."""
    n = 10
    scale = torch.full((n,), 0.005)
    scale[4:6], scale[9] = 0.05, 0.5
    opacity = torch.full((n,), 0.5)
    opacity[8] = 0.001
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1
    s = Splats({"means": torch.randn(n, 3, generator=torch.Generator().manual_seed(0)),
                "scales": scale.log()[:, None].repeat(1, 3), "quats": quats,
                "opacities": torch.logit(opacity), "sh0": torch.zeros(n, 1, 3)})
    grad = torch.zeros(n)
    grad[:6] = 1e-3  # > grow_grad2d 2e-4
    return s, grad


def synthetic_step(splats: Splats, optimizers: dict, d: Densifier, step: int, grad2d: torch.Tensor) -> None:
    """A step with a fake meta like render()'s: means2d [1,N,2] whose gradient norm is grad2d (screen units)."""
    n = splats.num
    means2d = torch.zeros(1, n, 2, requires_grad=True)
    meta = {"means2d": means2d, "radii": torch.full((1, n, 2), 3, dtype=torch.int32), "gaussian_ids": None,
            "width": W, "height": H, "n_cameras": 1}
    d.step_pre_backward(splats, optimizers, meta, step)
    # gsplat scales the x gradient by W/2 · n_cameras before taking norms
    loss = (means2d[0, :, 0] * grad2d[:n] / (W / 2)).sum() + sum(p.sum() for p in splats.params.values())
    for o in optimizers.values():
        o.zero_grad()
    loss.backward()
    for o in optimizers.values():
        o.step()
    d.step_post_backward(splats, optimizers, meta, step)


def test_refine_clones_splits_and_prunes_exactly():
    splats, grad = designed_splats()
    optimizers = make_optimizers(splats, LRS)
    d = Densifier(DensifyConfig(refine_start=1, refine_every=2, refine_stop=100, grow_scale3d=0.01, scene_scale=1.0))
    synthetic_step(splats, optimizers, d, 1, grad)  # statistics only
    assert splats.num == 10
    synthetic_step(splats, optimizers, d, 2, grad)  # refine: +4 duplicates, +2 from splits, -2 pruned
    assert splats.num == 10 + 4 + 2 - 2
    check_consistent(splats, optimizers)
    assert torch.sigmoid(splats.params["opacities"]).min() > 0.1
    assert splats.scales.max() < 0.1  # the huge one is gone, split children are 1/1.6 of their parent
    assert torch.equal(d.state["grad2d"], torch.zeros(14)) and torch.equal(d.state["count"], torch.zeros(14))
    synthetic_step(splats, optimizers, d, 3, torch.zeros(14))  # optimizers still step the new Parameters
    check_consistent(splats, optimizers)


def test_growth_stops_at_the_cap_but_pruning_goes_on():
    splats, grad = designed_splats()
    optimizers = make_optimizers(splats, LRS)
    cfg = DensifyConfig(refine_start=1, refine_every=1, refine_stop=100, grow_scale3d=0.01, scene_scale=1.0,
                        max_gaussians=10)
    d = Densifier(cfg)
    synthetic_step(splats, optimizers, d, 1, grad)
    synthetic_step(splats, optimizers, d, 2, grad)  # first refine
    assert splats.num == 8  # nothing grew, two pruned
    synthetic_step(splats, optimizers, d, 3, grad)  # under the cap again: high-gradient ones grow
    assert splats.num > 8 and d.strategy.grow_grad2d == cfg.grow_grad2d
    check_consistent(splats, optimizers)


def test_opacity_reset_fires_on_its_period_only():
    splats, _ = designed_splats()
    optimizers = make_optimizers(splats, LRS)
    d = Densifier(DensifyConfig(refine_start=100, refine_stop=200, reset_every=3, scene_scale=1.0))
    cap = d.cfg.prune_opa * 2
    for step in range(3):
        synthetic_step(splats, optimizers, d, step, torch.zeros(10))
        assert torch.sigmoid(splats.params["opacities"]).max() > 0.4, step  # steps 0-2: no reset
    synthetic_step(splats, optimizers, d, 3, torch.zeros(10))
    opacity = torch.sigmoid(splats.params["opacities"])
    assert opacity.max() <= cap + 1e-6 and opacity.min() < 0.002  # clamped down, never raised
    assert not optimizers["opacities"].state[splats.params["opacities"]]["exp_avg"].any()  # Adam moments reset
    check_consistent(splats, optimizers)
    d_off = Densifier(DensifyConfig(refine_start=100, refine_stop=200, reset_every=0, scene_scale=1.0))
    splats, _ = designed_splats()
    optimizers = make_optimizers(splats, LRS)
    for step in range(4):
        synthetic_step(splats, optimizers, d_off, step, torch.zeros(10))
    assert torch.sigmoid(splats.params["opacities"]).max() > 0.4  # reset_every=0: off


def test_grows_and_prunes_with_the_cpu_renderer():
    splats = Splats.random_ball(300, radius=0.4, seed=0, opacity=0.5)
    with torch.no_grad():
        splats.params["opacities"][:50] = -8.0  # nearly transparent: must be pruned
    optimizers = make_optimizers(splats, LRS)
    d = Densifier(DensifyConfig(refine_start=2, refine_stop=20, refine_every=4, grow_grad2d=1e-5, scene_scale=1.0))
    cams = orbit_cameras(torch.tensor([10.0, 10.0]), torch.tensor([0.0, 120.0]), 2.5, 50.0, 32, 32)
    target = torch.zeros(2, 32, 32, 3)
    target[:, 8:24, 8:24, 0] = 1.0
    counts = []
    for step in range(9):
        out = render(splats, cams)
        d.step_pre_backward(splats, optimizers, out.meta, step)
        loss = (out.rgb - target).abs().mean()
        for o in optimizers.values():
            o.zero_grad()
        loss.backward()
        for o in optimizers.values():
            o.step()
        d.step_post_backward(splats, optimizers, out.meta, step)
        counts.append(splats.num)
    assert counts[3] == 300 and max(counts) > 300 + 50, counts  # refines at steps 4 and 8 only
    assert torch.sigmoid(splats.params["opacities"]).min() >= d.cfg.prune_opa  # the transparent ones are gone
    check_consistent(splats, optimizers)
    assert len(d.state["grad2d"]) == splats.num


def test_state_dict_round_trip():
    splats, grad = designed_splats()
    optimizers = make_optimizers(splats, LRS)
    d = Densifier(DensifyConfig(refine_start=100, refine_stop=200, scene_scale=2.0))
    synthetic_step(splats, optimizers, d, 0, grad)
    saved = d.state_dict()
    synthetic_step(splats, optimizers, d, 1, grad)  # must not change what was saved
    assert math.isclose(saved["grad2d"][0].item(), 1e-3, rel_tol=1e-4) and saved["count"].sum() == 10
    e = Densifier(DensifyConfig())
    e.load_state_dict(saved)
    assert torch.equal(e.state["grad2d"], saved["grad2d"]) and e.state["scene_scale"] == 2.0


def test_grow_quantile_is_free_of_the_gradient_scale():
    """LODS divides the gradient by ω: a quantile threshold grows the same Gaussians at any loss scale."""
    counts = []
    for scale in (1.0, 1e-3):
        splats, _ = designed_splats()
        grad = scale * 1e-6 * torch.arange(1.0, 11.0)  # all below grow_grad2d (2e-4)
        optimizers = make_optimizers(splats, LRS)
        d = Densifier(DensifyConfig(refine_start=1, refine_every=2, refine_stop=100, grow_scale3d=0.01,
                                    scene_scale=1.0, grow_quantile=0.5))
        synthetic_step(splats, optimizers, d, 1, grad)
        synthetic_step(splats, optimizers, d, 2, grad)  # refine: the upper half of the gradients grows
        check_consistent(splats, optimizers)
        counts.append(splats.num)
    fixed, _ = designed_splats()
    optimizers = make_optimizers(fixed, LRS)
    d = Densifier(DensifyConfig(refine_start=1, refine_every=2, refine_stop=100, grow_scale3d=0.01, scene_scale=1.0))
    synthetic_step(fixed, optimizers, d, 1, 1e-6 * torch.arange(1.0, 11.0))
    synthetic_step(fixed, optimizers, d, 2, 1e-6 * torch.arange(1.0, 11.0))
    assert fixed.num == 8  # the fixed threshold grows nothing: only the two prunes
    assert counts[0] == counts[1] > 8


def test_another_gsplat_version_fails_loudly(monkeypatch):
    import gsplat

    from lodsgs.errors import LodsgsError

    monkeypatch.setattr(gsplat, "__version__", "1.6.0")
    with pytest.raises(LodsgsError, match="written for gsplat 1.5.3"):
        Densifier(DensifyConfig())
    Densifier(DensifyConfig(enabled=False))  # without densification the version does not matter
