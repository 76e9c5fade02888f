"""Densification (gsplat's DefaultStrategy rule on gsplat's public ops): equal to gsplat 1.5.3's DefaultStrategy
step for step, exact clone/split/prune counts on a synthetic meta, growth and pruning with the CPU renderer,
consistent optimizers, the quantile threshold, the opacity reset, the growth cap and the fraction window."""

import dataclasses
import math

import gsplat.strategy.default
import pytest
import torch
from gsplat.strategy import DefaultStrategy
from gsplat.strategy.ops import reset_opa

from lodsgs.cameras import orbit_cameras
from lodsgs.config import at_step
from lodsgs.splats.densify import DefaultDensify, Densifier, DensifyConfig, strategy_for
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
    d = Densifier(DensifyConfig(start=0.01, every=0.02, stop=1.0, grow_scale3d=0.01, scene_scale=1.0), 100)
    synthetic_step(splats, optimizers, d, 1, grad)  # statistics only
    assert splats.num == 10
    synthetic_step(splats, optimizers, d, 2, grad)  # refine: +4 duplicates, +2 from splits, -2 pruned
    assert splats.num == 10 + 4 + 2 - 2
    check_consistent(splats, optimizers)
    assert torch.sigmoid(splats.params["opacities"]).min() > 0.1
    assert splats.scales.max() < 0.1  # the huge one is gone, split children are 1/1.6 of their parent
    assert torch.equal(d.state["grad2d"], torch.zeros(14)) and torch.equal(d.state["count"], torch.zeros(14))
    assert (d.state["grown"], d.state["pruned"]) == (6, 2)  # ints, for the run log
    synthetic_step(splats, optimizers, d, 3, torch.zeros(14))  # optimizers still step the new Parameters
    check_consistent(splats, optimizers)


def test_growth_stops_at_the_cap_but_pruning_goes_on():
    splats, grad = designed_splats()
    optimizers = make_optimizers(splats, LRS)
    cfg = DensifyConfig(start=0.01, every=0.01, stop=1.0, grow_scale3d=0.01, scene_scale=1.0, max_gaussians=10)
    d = Densifier(cfg, 100)
    synthetic_step(splats, optimizers, d, 1, grad)
    synthetic_step(splats, optimizers, d, 2, grad)  # first refine
    assert splats.num == 8  # nothing grew, two pruned
    synthetic_step(splats, optimizers, d, 3, grad)  # under the cap again: high-gradient ones grow
    assert splats.num > 8 and d.state["pruned"] == 2
    check_consistent(splats, optimizers)
    with pytest.raises(dataclasses.FrozenInstanceError):  # no hidden state: a step cannot change the strategy
        d.strategy.grow_grad2d = 0.0


def test_opacity_reset_fires_on_its_period_only():
    splats, _ = designed_splats()
    optimizers = make_optimizers(splats, LRS)
    d = Densifier(DensifyConfig(start=0.5, stop=1.0, reset_every=0.03, scene_scale=1.0), 100)  # reset every 3 steps
    cap = d.cfg.prune_opa * 2
    for step in range(3):
        synthetic_step(splats, optimizers, d, step, torch.zeros(10))
        assert torch.sigmoid(splats.params["opacities"]).max() > 0.4, step  # steps 0-2: no reset
    synthetic_step(splats, optimizers, d, 3, torch.zeros(10))
    opacity = torch.sigmoid(splats.params["opacities"])
    assert opacity.max() <= cap + 1e-6 and opacity.min() < 0.002  # clamped down, never raised
    assert not optimizers["opacities"].state[splats.params["opacities"]]["exp_avg"].any()  # Adam moments reset
    check_consistent(splats, optimizers)
    d_off = Densifier(DensifyConfig(start=0.5, stop=1.0, reset_every=0.0, scene_scale=1.0), 100)
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
    d = Densifier(DensifyConfig(start=0.02, stop=0.2, every=0.04, grow_grad2d=1e-5, scene_scale=1.0), 100)
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
    d = Densifier(DensifyConfig(start=0.5, stop=1.0, scene_scale=2.0), 100)
    synthetic_step(splats, optimizers, d, 0, grad)
    saved = d.state_dict()
    synthetic_step(splats, optimizers, d, 1, grad)  # must not change what was saved
    assert math.isclose(saved["grad2d"][0].item(), 1e-3, rel_tol=1e-4) and saved["count"].sum() == 10
    e = Densifier(DensifyConfig(), 100)
    e.load_state_dict(saved)
    assert torch.equal(e.state["grad2d"], saved["grad2d"]) and e.state["scene_scale"] == 2.0


def test_grow_quantile_is_free_of_the_gradient_scale():
    """LODS divides the gradient by ω: a quantile threshold grows the same Gaussians at any loss scale."""
    counts = []
    for scale in (1.0, 1e-3):
        splats, _ = designed_splats()
        grad = scale * 1e-6 * torch.arange(1.0, 11.0)  # all below grow_grad2d (2e-4)
        optimizers = make_optimizers(splats, LRS)
        d = Densifier(DensifyConfig(start=0.01, every=0.02, stop=1.0, grow_scale3d=0.01, scene_scale=1.0,
                                    grow_quantile=0.5), 100)
        synthetic_step(splats, optimizers, d, 1, grad)
        synthetic_step(splats, optimizers, d, 2, grad)  # refine: the upper half of the gradients grows
        check_consistent(splats, optimizers)
        counts.append(splats.num)
    fixed, _ = designed_splats()
    optimizers = make_optimizers(fixed, LRS)
    d = Densifier(DensifyConfig(start=0.01, every=0.02, stop=1.0, grow_scale3d=0.01, scene_scale=1.0), 100)
    synthetic_step(fixed, optimizers, d, 1, 1e-6 * torch.arange(1.0, 11.0))
    synthetic_step(fixed, optimizers, d, 2, 1e-6 * torch.arange(1.0, 11.0))
    assert fixed.num == 8  # the fixed threshold grows nothing: only the two prunes
    assert counts[0] == counts[1] > 8


def test_strategy_none_leaves_the_splats_alone():
    splats, grad = designed_splats()
    optimizers = make_optimizers(splats, LRS)
    d = Densifier(DensifyConfig(strategy="none", start=0.01, every=0.01, reset_every=0.01, scene_scale=1.0), 100)
    for step in range(4):
        synthetic_step(splats, optimizers, d, step, grad)
    assert splats.num == 10 and d.state["grown"] == d.state["pruned"] == 0 and d.state["grad2d"] is None
    assert torch.sigmoid(splats.params["opacities"]).max() > 0.4  # no reset either


# --- the same result as gsplat 1.5.3's DefaultStrategy (what lodsgs ran on before) ------------------------------

def random_splats(n: int, seed: int) -> Splats:
    """Scales across grow_scale3d 0.01 and prune_scale3d 0.1, opacities across prune_opa 0.005 (scene_scale 1)."""
    g = torch.Generator().manual_seed(seed)
    return Splats({"means": torch.randn(n, 3, generator=g), "scales": torch.rand(n, 3, generator=g) * 5.5 - 7.5,
                   "quats": torch.randn(n, 4, generator=g), "opacities": torch.rand(n, generator=g) * 10 - 7,
                   "sh0": torch.randn(n, 1, 3, generator=g)})


class GsplatReference:
    """lodsgs's densification as it was: gsplat's DefaultStrategy with refine_stop_iter=stop+1 and reset_every=
    max(start, 1) without a reset, the threshold set to inf at the cap, and lodsgs's own reset_opa."""

    def __init__(self, start: int, stop: int, every: int, reset: int, cap: int):
        self.strategy = DefaultStrategy(prune_opa=0.005, grow_grad2d=2e-4, grow_scale3d=0.01, prune_scale3d=0.1,
                                        refine_start_iter=start, refine_stop_iter=stop + 1, refine_every=every,
                                        reset_every=reset or max(start, 1))
        self.state, self.stop, self.reset, self.cap = self.strategy.initialize_state(scene_scale=1.0), stop, reset, cap

    def step_post_backward(self, params, optimizers, state, step, info) -> None:
        if step > self.stop:
            return
        self.strategy.grow_grad2d = math.inf if len(params["means"]) >= self.cap else 2e-4
        self.strategy.step_post_backward(params, optimizers, self.state, step, info, packed=False)
        if self.reset and step > 0 and step % self.reset == 0:
            reset_opa(params, optimizers, self.state, value=0.01)


def random_step(splats: Splats, optimizers: dict, step: int, cameras: int = 2) -> dict:
    """Random parameter gradients and an Adam step, then a meta with random means2d gradients and footprints;
    the same for the same step and number of Gaussians."""
    g, n = torch.Generator().manual_seed(step), splats.num
    for key, p in splats.params.items():
        p.grad = torch.randn(p.shape, generator=g) * 0.01
        optimizers[key].step()
    means2d = torch.zeros(cameras, n, 2, requires_grad=True)
    means2d.grad = torch.randn(cameras, n, 2, generator=g) * 2e-6 * torch.rand(1, n, 1, generator=g) * 2
    radii = torch.randint(0, 3, (cameras, n, 2), generator=g, dtype=torch.int32)
    return {"means2d": means2d, "radii": radii, "gaussian_ids": None, "width": 64, "height": 48,
            "n_cameras": cameras}


def assert_same(a: Splats, oa: dict, sa: dict, b: Splats, ob: dict, sb: dict, step: int) -> None:
    """Equal parameters, Adam moments and statistics, bit for bit."""
    for key in a.params:
        assert torch.equal(a.params[key], b.params[key]), (step, key)
        ma, mb = oa[key].state[a.params[key]], ob[key].state[b.params[key]]
        assert torch.equal(ma["exp_avg"], mb["exp_avg"]) and torch.equal(ma["exp_avg_sq"], mb["exp_avg_sq"]), step
    for key in ("grad2d", "count"):
        assert (sa[key] is None and sb[key] is None) or torch.equal(sa[key], sb[key]), (step, key)


@pytest.mark.parametrize("start, stop, every, reset, cap", [
    (5, 30, 4, 0, 10**6),  # no reset: too-large pruning from the first refine on
    (3, 30, 3, 10, 330),  # resets at 10, 20, 30; too-large pruning after step 10; the cap reached mid-run
    (0, 8, 1, 0, 400),  # start 0: a refine at step 1 (no too-large pruning there: gsplat's step > reset_every)
])
def test_equals_gsplat_default_strategy(monkeypatch, start, stop, every, reset, cap):
    """Step for step (refines, the cap, the reset and after the stop) the same splats as gsplat's DefaultStrategy.
    gsplat 1.5.0-1.5.2 reset opacity themselves (1.5.3's never fires, gsplat PR #776): silenced in the reference."""
    monkeypatch.setattr(gsplat.strategy.default, "reset_opa", lambda **kw: None)
    ours, theirs = random_splats(200, 0), random_splats(200, 0)
    o_ours, o_theirs = make_optimizers(ours, LRS), make_optimizers(theirs, LRS)
    strategy = DefaultDensify(refine_start=start, refine_stop=stop, refine_every=every, reset_every=reset,
                              max_gaussians=cap)
    state, reference = strategy.initialize_state(scene_scale=1.0), GsplatReference(start, stop, every, reset, cap)
    sizes = []
    for step in range(stop + 4):
        for s, o, run, st in ((ours, o_ours, strategy, state), (theirs, o_theirs, reference, reference.state)):
            info = random_step(s, o, step)
            torch.manual_seed(step)  # split draws its samples from the global generator
            run.step_post_backward(s.params, o, st, step, info)
        assert_same(ours, o_ours, state, theirs, o_theirs, reference.state, step)
        sizes.append(ours.num)
    assert state["grown"] > 0 and state["pruned"] > 0 and state["grown"] - state["pruned"] == ours.num - 200
    assert len(set(sizes)) > 2 and sizes[-1] == sizes[stop]  # it changed, and nothing after the stop


# --- the quantile threshold, the cap, the reset ------------------------------------------------------------------

def test_quantile_threshold_is_over_the_gaussians_seen_since_the_last_refine():
    strategy = DefaultDensify(refine_start=0, refine_stop=10, refine_every=1, grow_quantile=0.75)
    grad2d, count = torch.arange(1.0, 21.0), torch.full((20,), 2.0)
    count[:4] = 0  # never seen: not part of the quantile
    threshold = strategy.grow_threshold({"grad2d": grad2d, "count": count})
    assert threshold == pytest.approx(torch.quantile(torch.arange(5.0, 21.0) / 2, 0.75).item())
    assert strategy.grow_threshold({"grad2d": grad2d, "count": torch.zeros(20)}) == strategy.grow_grad2d
    assert dataclasses.replace(strategy, grow_quantile=0.0).grow_threshold({"grad2d": grad2d, "count": count}) == 2e-4


def test_quantile_grows_the_top_share_at_any_gradient_scale():
    """20 small opaque Gaussians with distinct gradients: q = 0.75 duplicates exactly the top 5, at any scale."""
    for scale in (1.0, 1e-3, 1e3):
        splats = Splats({"means": torch.randn(20, 3), "scales": torch.full((20, 3), -6.0),
                         "quats": torch.tensor([[1.0, 0, 0, 0]]).repeat(20, 1), "opacities": torch.zeros(20),
                         "sh0": torch.zeros(20, 1, 3)})
        optimizers = make_optimizers(splats, LRS)
        d = Densifier(DensifyConfig(start=0.01, every=0.02, stop=1.0, scene_scale=1.0, grow_quantile=0.75), 100)
        grad = scale * 1e-6 * torch.randperm(20, generator=torch.Generator().manual_seed(0)).float()
        synthetic_step(splats, optimizers, d, 1, grad)
        synthetic_step(splats, optimizers, d, 2, grad)  # refine: the statistics of steps 1 and 2
        assert splats.num == 25 and d.state["grown"] == 5 and d.state["pruned"] == 0, scale
        check_consistent(splats, optimizers)


def test_at_the_cap_growth_stops_and_pruning_goes_on():
    strategy = DefaultDensify(refine_start=0, refine_stop=10, refine_every=1, max_gaussians=10)
    splats, grad = designed_splats()
    optimizers = make_optimizers(splats, LRS)
    state = strategy.initialize_state(scene_scale=1.0)
    state["grad2d"], state["count"] = grad.clone(), torch.ones(10)
    strategy.step_post_backward(splats.params, optimizers, state, 2, synthetic_meta(10))
    assert splats.num == 8 and state["grown"] == 0 and state["pruned"] == 2


def synthetic_meta(n: int) -> dict:
    """A meta whose means2d has a zero gradient: the step adds views but no gradient to the statistics."""
    means2d = torch.zeros(1, n, 2, requires_grad=True)
    means2d.grad = torch.zeros(1, n, 2)
    return {"means2d": means2d, "radii": torch.ones(1, n, 2, dtype=torch.int32), "gaussian_ids": None,
            "width": W, "height": H, "n_cameras": 1}


def test_reset_fires_on_its_period_inside_the_window_and_unlocks_large_pruning():
    strategy = DefaultDensify(refine_start=0, refine_stop=12, refine_every=100, reset_every=4)
    assert [s for s in range(30) if strategy.is_reset(s)] == [4, 8, 12]  # never at step 0, never after the stop
    refines = DefaultDensify(refine_start=1, refine_stop=12, refine_every=2, reset_every=5)
    splats, _ = designed_splats()
    optimizers = make_optimizers(splats, LRS)
    state = refines.initialize_state(scene_scale=1.0)
    for step in (2, 4):  # refines before the first reset: only the transparent one goes
        refines.step_post_backward(splats.params, optimizers, state, step, synthetic_meta(splats.num))
    assert splats.num == 9
    refines.step_post_backward(splats.params, optimizers, state, 5, synthetic_meta(9))  # the reset
    assert torch.sigmoid(splats.params["opacities"]).max() <= 0.01 + 1e-6 and splats.num == 9
    refines.step_post_backward(splats.params, optimizers, state, 6, synthetic_meta(9))  # past it: the huge one too
    assert splats.num == 8  # reset opacities (2 × prune_opa) stay


# --- the window as fractions of the run --------------------------------------------------------------------------

@pytest.mark.parametrize("steps", [60, 300, 2500])
def test_fraction_window_refines_inside_the_run(steps):
    cfg = DensifyConfig()  # start 0.12, stop 0.36, every 0.04
    strategy = strategy_for(cfg, steps)
    refines = [s for s in range(steps) if strategy.is_refine(s)]
    assert refines and refines[-1] <= at_step(cfg.stop, steps) < steps and refines[0] > at_step(cfg.start, steps)
    expected = {60: range(8, 23, 2), 300: range(48, 109, 12),  # start 7, every 2, stop 22; 36, 12, 108
                2500: range(400, 901, 100)}  # LODS-3DGS's (gsplat refine_start 300, refine_stop 1000, every 100)
    assert refines == list(expected[steps])
    if steps == 60:  # a whole run: the splats change on the refine steps and on no other
        splats, _ = designed_splats()
        optimizers = make_optimizers(splats, LRS)
        d = Densifier(dataclasses.replace(cfg, grow_scale3d=0.01, scene_scale=1.0), steps)
        changed = []
        for step in range(steps):
            n = splats.num
            synthetic_step(splats, optimizers, d, step, torch.full((n,), 1e-3))
            if splats.num != n:
                changed.append(step)
        assert changed == refines, changed


def test_short_runs_refine_at_least_every_step():
    assert strategy_for(DensifyConfig(), 5).refine_every == 1  # 0.04 × 5 rounds to 0
    tiny = strategy_for(DensifyConfig(start=0.34, every=0.34, stop=0.84), 6)  # tests/conftest.py's TINY run
    assert [s for s in range(6) if tiny.is_refine(s)] == [4]
    assert strategy_for(DensifyConfig(reset_every=0.001), 60).reset_every == 0  # rounds to 0 steps: no reset
