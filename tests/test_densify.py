"""Densification through gsplat's DefaultStrategy on the CPU renderer: grows, prunes, stays consistent."""

import torch

from lodsgs.cameras import orbit_cameras
from lodsgs.splats.densify import DensifyConfig, Densifier
from lodsgs.splats.model import Splats, make_optimizers
from lodsgs.splats.render import render

LRS = {"means": 1e-3, "scales": 1e-3, "quats": 1e-3, "opacities": 1e-2, "sh0": 1e-2, "shN": 1e-3}


def run(cfg: DensifyConfig, steps: int, splats: Splats):
    optimizers = make_optimizers(splats, LRS)
    d = Densifier(cfg)
    cams = orbit_cameras(torch.tensor([10.0, 10.0]), torch.tensor([0.0, 120.0]), 2.5, 50.0, 32, 32)
    target = torch.zeros(2, 32, 32, 3)
    target[:, 8:24, 8:24, 0] = 1.0
    counts = []
    for step in range(steps):
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
    return counts, optimizers, d


def check_consistent(splats: Splats, optimizers: dict):
    for key, p in splats.params.items():
        opt = optimizers[key]
        assert opt.param_groups[0]["params"][0] is p, key
        state = opt.state[p]
        if state:
            assert state["exp_avg"].shape == p.shape and state["exp_avg_sq"].shape == p.shape, key


def test_grows_prunes_and_keeps_optimizers_consistent():
    splats = Splats.random_ball(400, radius=0.4, seed=0, opacity=0.5)
    with torch.no_grad():
        splats.params["opacities"][:50] = -8.0  # nearly transparent: must be pruned
    cfg = DensifyConfig(refine_start=2, refine_stop=20, refine_every=4, grow_grad2d=1e-5, scene_scale=1.0)
    counts, optimizers, d = run(cfg, 12, splats)
    assert max(counts) > 400, counts  # grew
    assert torch.sigmoid(splats.params["opacities"]).min() >= cfg.prune_opa * 0.5  # transparent ones gone
    check_consistent(splats, optimizers)
    assert d.state["grad2d"] is not None and len(d.state["grad2d"]) == splats.num


def test_opacity_reset_fires():
    splats = Splats.random_ball(200, radius=0.4, seed=1, opacity=0.9)
    cfg = DensifyConfig(refine_start=100, refine_stop=10, reset_every=3, scene_scale=1.0)  # no growth, reset only
    run(cfg, 4, splats)  # step 3 resets
    assert torch.sigmoid(splats.params["opacities"]).max() <= cfg.prune_opa * 2 + 1e-4


def test_state_dict_round_trip():
    splats = Splats.random_ball(100, seed=2)
    _, _, d = run(DensifyConfig(refine_start=100, refine_stop=200), 2, splats)
    e = Densifier(DensifyConfig())
    e.load_state_dict(d.state_dict())
    assert torch.equal(e.state["grad2d"], d.state["grad2d"]) and torch.equal(e.state["count"], d.state["count"])
