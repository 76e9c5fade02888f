"""Every start of a run in one place: a random ball or sphere shell, a .ply (splats or a point cloud), the
prior's own sample lifted (``sample``) or split into one ball per object (``layout``), the reference image
lifted (``image``, image-to-3D), a Shap-E mesh of the prompt (``shap-e``, the official LODS 3DGS start) and a
mesh file's surface (``mesh``); docs/starts.md."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lodsgs.cameras import eval_cameras
from lodsgs.config import Config
from lodsgs.errors import LodsgsError
from lodsgs.lift import layout, lift
from lodsgs.prior.diffusion import DiffusionPrior
from lodsgs.reference import load_reference, reference_camera
from lodsgs.splats.io import read_ply
from lodsgs.splats.model import Splats, rgb_to_sh0

SHAP_E_SCALE = 0.4  # × the camera's radius: the Shap-E mesh's size in the scene (GaussianDreamer's 0.4 × 4)


def init_splats(cfg: Config, prompt: str = "", prior: DiffusionPrior | None = None) -> Splats:
    """The starting splats; the ``sample`` and ``layout`` starts need the prompt and the prior, ``shap-e`` the
    prompt."""
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
    if c.kind == "mesh":
        return mesh_start(cfg)
    if c.kind == "shap-e":
        return shap_e_start(cfg, prompt)
    return ball_start(cfg)


def mesh_start(cfg: Config) -> Splats:
    """``init.num`` points uniform over a mesh file's surface by area (seeded by run.seed), in its colours
    (lodsgs/splats/surface.py); with init.mesh_fit centred and scaled so its bounding sphere has radius
    init.radius, the ball start's; init.mesh_up=z turns a z-up file y-up first."""
    from lodsgs.splats.surface import fit_sphere, read_surface, sample_surface, z_up_to_y_up

    c = cfg.init
    mesh = read_surface(Path(c.path))
    points, rgb = sample_surface(mesh, c.num, cfg.run.seed)
    vertices = np.asarray(mesh.vertices, np.float64)
    if c.mesh_up == "z":
        points, vertices = z_up_to_y_up(points), z_up_to_y_up(vertices)
    if c.mesh_fit:
        points = fit_sphere(points, vertices, c.radius)
    return Splats.from_points(torch.tensor(points, dtype=torch.float32), torch.tensor(rgb, dtype=torch.float32),
                              sh_degree=c.sh_degree, opacity=c.opacity)


def shap_e_start(cfg: Config, prompt: str) -> Splats:
    """GaussianDreamer's start (hustvl/GaussianDreamer, kept by yangxiaofeng/LODS threestudio/systems/lods_gs.py):
    a Shap-E mesh of the prompt, turned y-up; its vertices[::4] and up to init.num points drawn uniformly in
    their bounding box that lie within 0.01 of one (Shap-E units), coloured by the nearest vertex plus 0.2·U[0,1)
    noise; all scaled by camera.eval_radius × 0.4 (the official radius is data.eval_camera_distance, 4)."""
    from lodsgs.prior.shap_e import near_vertex_points, shap_e_mesh
    from lodsgs.splats.surface import z_up_to_y_up

    c = cfg.init
    verts, rgb = shap_e_mesh(c.shap_e_model, prompt, c.shap_e_guidance, c.shap_e_steps, cfg.run.seed,
                             cfg.run.device)
    verts, rgb = verts[::4], rgb[::4]
    extra, extra_rgb = near_vertex_points(verts, rgb, c.num, cfg.run.seed)
    points = z_up_to_y_up(np.concatenate([extra, verts]).astype(np.float64)) * (cfg.camera.eval_radius * SHAP_E_SCALE)
    colours = np.concatenate([extra_rgb, rgb])
    return Splats.from_points(torch.tensor(points, dtype=torch.float32), torch.tensor(colours, dtype=torch.float32),
                              sh_degree=c.sh_degree, opacity=c.opacity)


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
    return prior.sample(text, n=n, steps=cfg.init.sample_steps, guidance_scale=cfg.init.sample_scale, seed=cfg.run.seed,
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
