"""The ``sample`` start: silhouette inflation and lifting an image back into the scene it shows."""

import math
import os

import pytest
import torch

from lodsgs.cameras import CameraConfig, eval_cameras
from lodsgs.lift import half_depth, layout, lift
from lodsgs.prior.shapes import world
from lodsgs.splats.model import Splats
from lodsgs.splats.render import render

WHITE = (1.0, 1.0, 1.0)


def test_a_disc_inflates_to_a_sphere_and_each_region_by_its_own_size():
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    big = (xx - 20) ** 2 + (yy - 32) ** 2 < 12**2
    small = (xx - 50) ** 2 + (yy - 32) ** 2 < 5**2
    depth = half_depth(big | small)
    assert depth[32, 20] == pytest.approx(12, abs=1.5)  # the centre of a disc: as deep as it is wide
    assert depth[32, 50] == pytest.approx(5, abs=1.5)  # the small disc is not lifted to the big one's depth
    assert depth[32, 20 + 9] == pytest.approx(math.sqrt(12**2 - 9**2), abs=1.5)  # a sphere's profile
    assert depth[0, 0] == 0 and depth[32, 40] == 0  # background stays flat


def test_lifting_a_render_puts_two_objects_back_apart():
    """Render a "left of" scene from the front camera, lift it: points split into the two objects at their
    true places and colours, and the lifted splats redraw the silhouette they came from."""
    caption = "a red sphere left of a blue cube"
    cam_cfg = CameraConfig(eval_elevation=15.0, eval_radius=2.6, eval_fovy=42.0, width=32, height=32)
    camera = eval_cameras(cam_cfg, 1)
    with torch.no_grad():
        image = render(world.build_object(caption), camera, background=WHITE).rgb[0].clamp(0, 1)
    points, rgb = lift(image, camera, 3000, WHITE, seed=0)
    left, right = points[:, 0] < 0, points[:, 0] > 0
    assert points[left, 0].mean() == pytest.approx(-0.45, abs=0.1)
    assert points[right, 0].mean() == pytest.approx(0.45, abs=0.1)
    assert rgb[left, 0].mean() > rgb[left, 2].mean() and rgb[right, 2].mean() > rgb[right, 0].mean()  # red | blue
    assert (points[:, 0].abs() < 0.08).float().mean() < 0.02  # the gap between them stays empty
    assert points[:, 2].abs().max() < 0.6  # inflated in depth about the origin, not smeared along the ray
    with torch.no_grad():
        alpha = render(Splats.from_points(points, rgb, opacity=0.9), camera, background=WHITE).alpha[0, ..., 0]
    truth = (image - 1).abs().amax(-1) > 0.15
    drawn = alpha > 0.5
    assert (truth & drawn).sum() / truth.sum() > 0.95  # every true pixel is covered again
    assert drawn.sum() < 1.8 * truth.sum()  # a rim of about a Gaussian's footprint, not a blob


def test_the_layout_of_a_render_is_its_objects_places():
    cam_cfg = CameraConfig(eval_elevation=15.0, eval_radius=2.6, eval_fovy=42.0, width=32, height=32)
    camera = eval_cameras(cam_cfg, 1)
    with torch.no_grad():
        pair = render(world.build_object("a yellow cone left of a green sphere"), camera, background=WHITE).rgb[0]
        single = render(world.build_object("a red cube"), camera, background=WHITE).rgb[0]
    centres, shares = layout(pair.clamp(0, 1), camera, WHITE)
    assert len(centres) == 2 and shares.sum() == pytest.approx(1)
    assert sorted(centres[:, 0].tolist()) == pytest.approx([-0.45, 0.45], abs=0.08)
    assert centres[:, 1:].abs().max() < 0.1  # on the x axis, re-centred on the origin
    centres, shares = layout(single.clamp(0, 1), camera, WHITE)
    assert centres.tolist() == [[0.0, 0.0, 0.0]] and shares.tolist() == [1.0]


@pytest.mark.slow
def test_the_layout_start_splits_the_ball_only_where_the_sample_has_several_objects():
    """init.kind=layout with the shipped prior: "left of" gets two balls apart; a single object keeps the
    ball start exactly (every parameter equal), so single-object results do not move."""
    from lodsgs.config import load_config
    from lodsgs.starts import init_splats
    from lodsgs.trainer import load_prior

    cfg = load_config(None, ["prior.model=shapes", "init.kind=layout"])
    prior = load_prior(cfg, "cpu")
    pair = init_splats(cfg, "a red sphere left of a blue cube", prior)
    x = pair.means[:, 0]
    assert (x < -0.2).float().mean() > 0.3 and (x > 0.2).float().mean() > 0.3 and (x.abs() < 0.05).float().mean() < 0.02
    ball = init_splats(load_config(None, ["prior.model=shapes", "init.kind=ball"]))
    single = init_splats(cfg, "a red cube", prior)
    for key in ball.params:
        assert torch.equal(single.params[key], ball.params[key]), key


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_the_layout_start_is_the_ball_for_single_object_captions_at_seeds_0_to_2():
    """The claim the shapes profile's layout start rests on: for a single-object caption at seeds 0, 1 and 2,
    none of the prior's 4 samples shows two objects apart, so the start is the ball, bit for bit. The suite
    checks one caption per colour (every shape among them); ``make test-claims`` (LODSGS_EXHAUSTIVE=1) checks
    all 30 (about 6 minutes). Every (caption, seed) that differs is named."""
    from lodsgs.config import load_config
    from lodsgs.starts import init_splats
    from lodsgs.trainer import load_prior

    singles = [c for c in world.captions() if len(world.parse(c)) == 1]
    assert len(singles) == 30
    if os.environ.get("LODSGS_EXHAUSTIVE") != "1":
        singles = singles[::5]  # the captions run colour-major within shape: one per colour, each shape once
    prior = load_prior(load_config(None, ["prior.model=shapes"]), "cpu")
    differ = []
    for seed in (0, 1, 2):
        ball = init_splats(load_config(None, ["prior.model=shapes", "init.kind=ball", f"run.seed={seed}"]))
        cfg = load_config(None, ["prior.model=shapes", "init.kind=layout", f"run.seed={seed}"])
        for caption in singles:
            start = init_splats(cfg, caption, prior)
            if not all(torch.equal(start.params[k], ball.params[k]) for k in ball.params):
                differ.append(f"{caption!r} seed {seed}")
    assert not differ, f"the layout start is not the ball for {len(differ)} of {3 * len(singles)}: {', '.join(differ)}"


def test_a_blank_sample_is_refused():
    camera = eval_cameras(CameraConfig(width=16, height=16), 1)
    with pytest.raises(ValueError, match="no foreground"):
        lift(torch.ones(16, 16, 3), camera, 100, WHITE)


@pytest.mark.slow
def test_the_sample_start_lifts_the_prior_s_own_picture_of_the_caption():
    """init.kind=sample with the shipped prior: a red start where the prior draws the red sphere, left of a
    blue one, with no points in the gap."""
    from lodsgs.config import load_config
    from lodsgs.starts import init_splats
    from lodsgs.trainer import load_prior

    cfg = load_config(None, ["prior.model=shapes", "init.kind=sample", "init.num=500"])
    splats = init_splats(cfg, "a red sphere left of a blue cube", load_prior(cfg, "cpu"))
    rgb, x = splats.rgb, splats.means[:, 0]
    assert splats.num == 500
    reds, blues = rgb[:, 0] > rgb[:, 2] + 0.3, rgb[:, 2] > rgb[:, 0] + 0.3
    assert reds.sum() > 100 and blues.sum() > 100
    assert abs(x[reds].mean() - x[blues].mean()) > 0.5  # two objects apart, whichever side the prior chose


def test_a_start_that_cannot_be_lifted_is_one_clear_error():
    from lodsgs.config import load_config
    from lodsgs.errors import LodsgsError
    from lodsgs.starts import init_splats

    class BlankPrior:  # a prior whose sample is all background
        def view_prompts(self, prompt, views):
            return [f"{prompt}, {v} view" for v in views]

        def sample(self, prompt, **kw):
            return torch.ones(1, 32, 32, 3)

    cfg = load_config(None, ["prior.model=shapes", "init.kind=sample", "render.background=[1,1,1]"])
    for kind in ("sample", "layout"):
        cfg.init.kind = kind
        with pytest.raises(LodsgsError, match="foreground.*init.kind=ball"):
            init_splats(cfg, "a red cube", BlankPrior())
