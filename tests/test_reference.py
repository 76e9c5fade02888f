"""Image-to-3D: reading and checking the reference, recentring, the reference loss, the --image run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lodsgs.batch import split_entry
from lodsgs.cli import app
from lodsgs.config import ImageConfig, load_config
from lodsgs.errors import LodsgsError
from lodsgs.media import save_png
from lodsgs.reference import load_reference, reference_camera, reference_loss

WHITE = (1.0, 1.0, 1.0)
RED = np.array([230, 30, 20], dtype=np.uint8)


def picture(path: Path, box: tuple[int, int, int, int], size: int = 200, rgba: bool = True) -> Path:
    """A red box (y0, y1, x0, x1) on a transparent (RGBA) or white (RGB) size² picture."""
    image = np.zeros((size, size, 4), dtype=np.uint8) if rgba else np.full((size, size, 3), 255, dtype=np.uint8)
    y0, y1, x0, x1 = box
    image[y0:y1, x0:x1, :3] = RED
    if rgba:
        image[y0:y1, x0:x1, 3] = 255
    save_png(image, path)
    return path


def test_recenter_is_exact_on_a_constructed_image(tmp_path):
    # an 80×40 box off-centre; border 0.375 at 64² makes its longer side 40 px: a 40×20 box, centred
    path = picture(tmp_path / "box.png", (30, 110, 120, 160))
    ref = load_reference(ImageConfig(path=str(path), border=0.375), 64, WHITE)
    want = torch.zeros(64, 64)
    want[12:52, 22:42] = 1.0
    assert torch.equal(ref.mask, want)
    assert torch.allclose(ref.rgb[want.bool()], torch.tensor(RED / 255.0, dtype=torch.float32))
    assert torch.equal(ref.rgb[~want.bool()], torch.ones(64 * 64 - 800, 3))


def test_rgba_and_keyed_rgb_give_the_same_mask(tmp_path):
    box = (50, 120, 60, 150)
    for recenter in (True, False):
        c = ImageConfig(recenter=recenter)
        a = load_reference(ImageConfig(**{**vars(c), "path": str(picture(tmp_path / "a.png", box))}), 64, WHITE)
        b = load_reference(ImageConfig(**{**vars(c), "path": str(picture(tmp_path / "b.png", box, rgba=False))}),
                           64, WHITE)
        assert a.mask.sum() > 100
        assert torch.equal(a.mask, b.mask)
        assert torch.allclose(a.rgb, b.rgb, atol=1e-6)


@pytest.mark.parametrize("case, words", [
    ("missing", "not found"),
    ("not-an-image", "cannot read reference image"),
    ("no-object", "no object"),
    ("touching", "touches the image border"),
    ("busy-rgb", "give an RGBA PNG"),
])
def test_bad_reference_is_one_line(tmp_path, case, words):
    path = tmp_path / f"{case}.png"
    if case == "not-an-image":
        path.write_text("hello")
    elif case == "no-object":
        save_png(np.zeros((40, 40, 4), dtype=np.uint8), path)
    elif case == "touching":
        picture(path, (0, 20, 10, 30), size=40)
    elif case == "busy-rgb":
        save_png(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8), path)
    with pytest.raises(LodsgsError) as e:
        load_reference(ImageConfig(path=str(path)), 32, WHITE)
    assert words in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("case", ["missing", "unknown-word"])
def test_cli_refuses_bad_input_writing_nothing(tmp_path, case):
    out = tmp_path / "runs"
    image = tmp_path / "missing.png"
    prompt = "a red cube"
    if case == "unknown-word":
        image = picture(tmp_path / "ok.png", (50, 120, 60, 150))
        prompt = "a red corgi"
    r = CliRunner().invoke(app, ["generate", prompt, "--prior", "shapes", "--image", str(image), "--out", str(out)])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.slow
def test_reference_loss_alone_reproduces_the_reference_view(tmp_path):
    """Fitting only the reference loss (no prior) from the lifted reference: ≥ 30 dB at the reference view."""
    from lodsgs.eval import reference_input
    from lodsgs.fit import psnr_db
    from lodsgs.splats.model import make_optimizers
    from lodsgs.splats.render import render
    from lodsgs.starts import image_start
    from lodsgs.trainer import lrs

    cfg = load_config(None, ["prior.model=shapes", "image.recenter=false"])
    cfg.image.path = str(reference_input("a red cube", cfg, tmp_path))
    ref = load_reference(cfg.image, cfg.camera.width, cfg.render.background)
    splats = image_start(cfg)
    optimizers = make_optimizers(splats, lrs(cfg, 0))
    cam, bg = reference_camera(cfg), torch.tensor(cfg.render.background)
    for step in range(300):
        out = render(splats, cam, background=bg)
        loss, _ = reference_loss(cfg.image, out.rgb[0], out.alpha[0, ..., 0], ref, step, 300)
        for o in optimizers.values():
            o.zero_grad()
        loss.backward()
        for o in optimizers.values():
            o.step()
    with torch.no_grad():
        out = render(splats, cam, background=bg)
    assert psnr_db((out.rgb[0] - ref.rgb).pow(2).mean().item()) >= 30.0


@pytest.mark.slow
@pytest.mark.parametrize("prior_weight", ["1", "0"])
def test_two_step_image_run_on_the_tiny_latent_prior(tmp_path, tiny_sets, prior_weight):
    """Stable Diffusion's path (a latent prior, the reference loss in pixels); prior weight 0: the reference alone."""
    image = picture(tmp_path / "ref.png", (50, 120, 60, 150))
    out = tmp_path / "runs"
    r = CliRunner().invoke(app, ["generate", "a red cube", "--image", str(image), "--out", str(out), "-q",
                                 "--steps", "2", *tiny_sets("latent", f"image.prior_weight={prior_weight}")])
    assert r.exit_code == 0, r.output
    run_dir = next(out.iterdir())
    for name in ("reference.png", "turntable.gif", "splats.ply", "metrics.json"):
        assert (run_dir / name).is_file(), name
    final = json.loads((run_dir / "metrics.json").read_text())["final"]
    assert final["ref_rgb_mse"] > 0 and final["ref_mask_mse"] > 0
    assert ("sds" in final) == (prior_weight == "1")
    import imageio.v3 as iio
    assert iio.imread(run_dir / "reference.png").shape == (32, 32, 3)


def test_batch_line_with_a_tab_is_an_image_run():
    cfg = load_config(None, ["prior.model=shapes"])
    prompt, own = split_entry("refs/cube.png\ta red cube", cfg)
    assert (prompt, own.image.path, own.init.kind) == ("a red cube", "refs/cube.png", "image")
    assert split_entry("a red cube", cfg) == ("a red cube", cfg) and cfg.image.path == ""


def test_batch_image_lines_start_as_generate_image_would():
    """The CLI resolves the image lines' settings as `generate --image` does: the lifted reference is the start
    unless the user chose one (--set init.kind=...), which the lines then keep."""
    from lodsgs.cli import build_config

    for sets, kind in (([], "image"), (["init.kind=ball"], "ball")):
        cfg = build_config(None, sets, prior="shapes")
        image_cfg = build_config(None, sets, prior="shapes", image="ref.png")
        _, own = split_entry("refs/cube.png\ta red cube", cfg, image_cfg)
        assert (own.image.path, own.init.kind) == ("refs/cube.png", kind)
        assert split_entry("a red cube", cfg, image_cfg)[1] is cfg


def test_back_half_is_the_views_90_degrees_or_more_from_the_reference():
    from lodsgs.eval import EvalViews, back_half
    views = EvalViews()
    rgb = torch.rand(16, 64, 64, 3)
    mask = rgb[..., 0] > 0.5
    s = back_half((rgb, mask), (rgb, mask), views, 0.0)
    assert s["back_views"] == 10 and s["back_iou"] == 1.0 and s["back_psnr"] == 120.0
    wrong = rgb.clone()
    wrong[4] = 0  # azimuth 180 at elevation 0: a back view
    assert back_half((wrong, mask), (rgb, mask), views, 0.0)["back_psnr"] < 120.0
    wrong = rgb.clone()
    wrong[0] = 0  # the front view: not in the back half
    assert back_half((wrong, mask), (rgb, mask), views, 0.0)["back_psnr"] == 120.0
