"""Every start of a run in one place: a random ball or sphere shell, a .ply (splats or a point cloud), the
prior's own sample lifted (``sample``) or split into one ball per object (``layout``), and the reference image
lifted (``image``, image-to-3D)."""

from __future__ import annotations

from pathlib import Path

import torch

from lodsgs.cameras import eval_cameras
from lodsgs.config import Config
from lodsgs.errors import LodsgsError
from lodsgs.lift import layout, lift
from lodsgs.prior.diffusion import DiffusionPrior
from lodsgs.reference import load_reference, reference_camera
from lodsgs.splats.io import read_ply
from lodsgs.splats.model import Splats, rgb_to_sh0


def init_splats(cfg: Config, prompt: str = "", prior: DiffusionPrior | None = None) -> Splats:
    """The starting splats; the ``sample`` and ``layout`` starts need the prompt and the prior."""
    c = cfg.init
    if c.kind == "ply":
        if not c.path:
            raise LodsgsError("init.kind is 'ply' but no path was given; use --init path.ply")
        splats = read_ply(Path(c.path))
        return splats
    if c.kind in ("sample", "layout"):
        return prior_start(cfg, prompt, prior)
    if c.kind == "image":
        return image_start(cfg)
    return ball_start(cfg)


def image_start(cfg: Config) -> Splats:
    """The reference image lifted through the reference camera (each silhouette inflated, coloured by the image)."""
    ref = load_reference(cfg.image, cfg.camera.width, cfg.render.background)
    points, rgb = lift(ref.rgb, reference_camera(cfg), cfg.init.num, cfg.render.background, cfg.run.seed)
    return Splats.from_points(points, rgb, sh_degree=cfg.init.sh_degree, opacity=cfg.init.opacity)


def ball_start(cfg: Config) -> Splats:
    """A random ball (the ``layout`` start's too) or sphere shell, in one colour when init.color is set."""
    c = cfg.init
    make = Splats.sphere_shell if c.kind == "shell" else Splats.random_ball
    splats = make(c.num, radius=c.radius, seed=cfg.run.seed, sh_degree=c.sh_degree, opacity=c.opacity)
    if c.color is not None:  # a flat start: what no view supervises keeps a neutral colour, not random specks
        splats.params["sh0"].data[:] = rgb_to_sh0(torch.tensor(c.color))
    return splats


def prior_start(cfg: Config, prompt: str, prior: DiffusionPrior) -> Splats:
    """The ``sample`` start (one sample lifted whole) or the ``layout`` start (the ball split where the sample
    puts its objects); a sample with no foreground is one line naming the fix."""
    try:
        if cfg.init.kind == "sample":
            image = front_samples(cfg, prompt, prior, 1)[0]
            points, rgb = lift(image, eval_cameras(cfg.camera, 1), cfg.init.num, cfg.render.background, cfg.run.seed)
            return Splats.from_points(points, rgb, sh_degree=cfg.init.sh_degree, opacity=cfg.init.opacity)
        centres, shares = most_objects(cfg, prompt, prior)
    except ValueError as e:
        raise LodsgsError(f"init.kind {cfg.init.kind!r}: {e} for {prompt!r}; try another --seed or "
                          "init.kind=ball") from None
    return split_ball(ball_start(cfg), centres, shares)


def front_samples(cfg: Config, prompt: str, prior: DiffusionPrior, n: int) -> torch.Tensor:
    """``n`` of the prior's DDIM samples [n,H,W,3] of the prompt's front view, seeded by run.seed."""
    text = prior.view_prompts(prompt, ["front"])[0] if cfg.guidance.view_dependent else prompt
    return prior.sample(text, n=n, guidance_scale=cfg.init.sample_scale, seed=cfg.run.seed,
                        negative_prompt=cfg.guidance.negative_prompt).float().cpu()


def most_objects(cfg: Config, prompt: str, prior: DiffusionPrior) -> tuple[torch.Tensor, torch.Tensor]:
    """The layout of the first of ``init.samples`` samples that shows the most separate objects: a sample
    whose objects overlap or touch carries no layout, one that shows them apart does."""
    camera, found = eval_cameras(cfg.camera, 1), []
    for image in front_samples(cfg, prompt, prior, cfg.init.samples):
        try:
            found.append(layout(image, camera, cfg.render.background))
        except ValueError:  # a blank sample: the others may still show something
            continue
    if not found:
        raise ValueError("no sample has a foreground: every pixel is the background colour")
    return max(found, key=lambda centres_shares: len(centres_shares[0]))  # the first of the most


def split_ball(ball: Splats, centres: torch.Tensor, shares: torch.Tensor) -> Splats:
    """The ball's Gaussians dealt out to one smaller ball per centre, each as wide as its region's share of the
    sample's foreground area (radius and scales × √share); one centre at the origin leaves the ball as it was."""
    params = ball.detached()
    ends = (shares.cumsum(0) * ball.num).round().long().tolist()
    start = 0
    for centre, share, end in zip(centres, shares, ends, strict=True):
        params["means"][start:end] = params["means"][start:end] * share.sqrt() + centre
        params["scales"][start:end] += 0.5 * share.log()
        start = end
    return Splats(params, sh_degree=ball.sh_degree)
