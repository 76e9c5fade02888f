"""2D generation and editing: `lodsgs image`, `lodsgs edit`, DDS's gradient, bad inputs, determinism."""

from __future__ import annotations

import json

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lodsgs.cli import app
from lodsgs.image2d import initial_particles, make_config, optimize
from lodsgs.prior.diffusion import DiffusionPrior
from lodsgs.prior.guidance import Guidance, GuidanceConfig

runner = CliRunner()


def _red_square(path, size: int = 16) -> None:
    img = np.full((size, size, 3), 255, np.uint8)
    img[4:12, 4:12] = (220, 25, 25)
    imageio.imwrite(path, img)


def test_image_on_latent_prior_writes_outputs(tiny_prior_dirs, tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, ["image", "a red cube", "--prior", tiny_prior_dirs["latent"], "--particles", "3",
                              "--steps", "4", "--out", str(out), "--device", "cpu", "--set", "log_every=1"])
    assert res.exit_code == 0, res.output
    image = imageio.imread(out / "image.png")
    assert image.shape[0] >= 16 and image.shape[1] > 3 * image.shape[0]  # three VAE-decoded particles in a row
    assert imageio.imread(out / "progress.png").shape[0] >= 3 * 16  # one row per particle
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    assert all(r["alpha_shift"] is not None for r in records)  # the default method is LODS-embedding
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["config"]["particles"] == 3 and metrics["steps_per_second"] > 0


@pytest.mark.parametrize("method", ["sds", "dds", "lods"])
def test_edit_on_latent_prior_writes_outputs(tiny_prior_dirs, tmp_path, method):
    src, out = tmp_path / "src.png", tmp_path / "edit"
    _red_square(src)
    res = runner.invoke(app, ["edit", str(src), "--source", "a red cube", "--target", "a blue cube", "--method",
                              method, "--prior", tiny_prior_dirs["latent"], "--steps", "3", "--out", str(out),
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output
    edited, strip = imageio.imread(out / "edited.png"), imageio.imread(out / "before_after.png")
    assert strip.shape[1] == 2 * edited.shape[1] + 2 and strip.shape[0] == edited.shape[0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["source"] == "a red cube" and metrics["config"]["method"] == method


@pytest.mark.parametrize("args, needle", [
    (["image", "a red dragon", "--prior", "shapes"], "dragon"),
    (["edit", "{missing}", "--source", "a red cube", "--target", "a blue cube", "--prior", "shapes"], "does not exist"),
    (["edit", "{garbage}", "--source", "a red cube", "--target", "a blue cube", "--prior", "shapes"],
     "cannot read image"),
    (["edit", "{image}", "--source", "a red cube", "--target", "a red cube", "--prior", "shapes"], "the same"),
    (["edit", "{image}", "--source", "a red cube", "--target", "a red dragon", "--prior", "shapes"], "dragon"),
    (["image", "a red cube", "--prior", "shapes", "--method", "dds"], "unknown method"),
    (["image", "a red cube", "--prior", "shapes", "--set", "colour=red"], "--set expects"),
])
def test_bad_inputs_one_line_nothing_written(tmp_path, args, needle):
    image, garbage = tmp_path / "in.png", tmp_path / "garbage.png"
    _red_square(image)
    garbage.write_text("not an image")
    paths = {"{missing}": str(tmp_path / "nope.png"), "{garbage}": str(garbage), "{image}": str(image)}
    out = tmp_path / "out"
    res = runner.invoke(app, [paths.get(a, a) for a in args] + ["--out", str(out)])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], res.output
    assert not out.exists()


def test_same_seed_same_images_other_seed_other(tiny_prior_dirs):
    prior = DiffusionPrior.from_pretrained(tiny_prior_dirs["pixel"])

    def run(seed: int) -> torch.Tensor:
        cfg = make_config("default", steps=3, particles=2, seed=seed)
        start = initial_particles(prior, 2, torch.Generator().manual_seed(seed))
        return optimize(prior, "a red cube", cfg, start).images

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_dds_gradient_matches_independent_formula(tiny_prior_dirs):
    """g = w(t)·(ε_cfg(x_t; y_tgt) − ε_cfg(x̂_t; y_src)) with the same ε and t, handed to x0 as g/B."""
    prior = DiffusionPrior.from_pretrained(tiny_prior_dirs["pixel"])
    omega = 5.0
    guidance = Guidance(prior, GuidanceConfig(method="sds", guidance_scale=omega, view_dependent=False), "a blue cube",
                        seed=3)
    g = torch.Generator().manual_seed(0)
    x0 = (torch.rand(2, 3, 16, 16, generator=g) * 2 - 1).requires_grad_(True)
    src = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    src_cond = prior.encode_text("a red cube").expand(2, -1, -1)
    state = guidance.generator.get_state()
    guidance.distill(x0, ["front", "front"], step=0, source=(src, src_cond)).loss.backward()

    gen = torch.Generator().manual_seed(0)
    gen.set_state(state)
    lo, hi = guidance.t_range(0)
    t = torch.randint(lo, hi + 1, (2,), generator=gen)
    eps = torch.randn(x0.shape, generator=gen)
    a = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    null, tgt = prior.encode_text("").expand(2, -1, -1), prior.encode_text("a blue cube").expand(2, -1, -1)

    def cfg_eps(x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x_t = a.sqrt() * x + (1 - a).sqrt() * eps
        with torch.no_grad():
            e_c, e_u = prior.predict_noise(x_t, t, cond), prior.predict_noise(x_t, t, null)
        return e_u + omega * (e_c - e_u)

    expected = (1 - a) * (cfg_eps(x0.detach(), tgt) - cfg_eps(src, src_cond)) / 2
    assert torch.allclose(x0.grad, expected, atol=1e-5)
    assert expected.abs().max() > 1e-3  # a real gradient, not zeros on both sides


def test_dds_on_its_source_has_zero_gradient(tiny_prior_dirs):
    """At the start of an edit with source == target caption DDS's two branches coincide: no update."""
    prior = DiffusionPrior.from_pretrained(tiny_prior_dirs["pixel"])
    guidance = Guidance(prior, GuidanceConfig(method="sds", guidance_scale=7.5, view_dependent=False), "a red cube")
    x0 = (torch.rand(1, 3, 16, 16) * 2 - 1).requires_grad_(True)
    cond = prior.encode_text("a red cube")
    guidance.distill(x0, ["front"], 0, source=(x0.detach().clone(), cond)).loss.backward()
    assert x0.grad.abs().max() < 1e-5


def test_lods_edit_alpha_starts_at_source_or_null(tiny_prior_dirs):
    prior = DiffusionPrior.from_pretrained(tiny_prior_dirs["pixel"])
    image = torch.rand(16, 16, 3)
    from lodsgs.image2d import edit
    for from_source, start in ((True, "a red cube"), (False, "")):
        cfg = make_config("edit", method="lods", steps=1, embedding_lr=1e-12, alpha_from_source=from_source)
        run = edit(prior, image, "a red cube", "a blue cube", cfg)
        a0 = prior.encode_text(start).flatten()
        cos = torch.nn.functional.cosine_similarity(a0, prior.encode_text("a blue cube").flatten(), dim=0).item()
        assert run.logs[-1]["alpha_cos"] == pytest.approx(cos, abs=1e-4)  # α still at its start: cos(start, target)


def test_edit_eval_variants_run_the_method_they_name():
    """The default `lodsgs eval --2d` edit rows: `sds` is SDS and `dds` DDS, not the `edit` preset's LODS."""
    from lodsgs.eval2d import EDIT_VARIANTS
    methods = {name: make_config(preset, sets).method for name, (preset, sets) in EDIT_VARIANTS.items()}
    assert {k: methods[k] for k in ("sds", "dds", "lods", "lods-null")} == {
        "sds": "sds", "dds": "dds", "lods": "lods", "lods-null": "lods"}


@pytest.mark.slow
def test_image_on_shapes_prior_moves_toward_truth(tmp_path):
    """40 steps on the shapes prior: the particles get closer to the caption's truth than their noise start."""
    from lodsgs.eval2d import generation_scores
    from lodsgs.image2d import to_images
    from lodsgs.prior.diffusion import resolve_model
    prior = DiffusionPrior.from_pretrained(resolve_model("shapes"))
    cfg = make_config("shapes", steps=40, particles=2)  # what `lodsgs image --prior shapes` runs
    start = initial_particles(prior, 2, torch.Generator().manual_seed(0))
    run = optimize(prior, "a red cube", cfg, start)
    before = generation_scores(to_images(prior, start), "a red cube")["nearest_view_mse"]
    after = generation_scores(run.images, "a red cube")["nearest_view_mse"]
    print(f"nearest-view MSE {before:.4f} -> {after:.4f}")
    assert after < 0.7 * before


def test_eval_2d_writes_its_table_keeps_rows_and_reruns_a_redefined_variant(tmp_path):
    from typer.testing import CliRunner

    from lodsgs.cli import app

    def run(*variants):
        args = ["eval", "--2d", "--task", "colour", "--caption", "a red sphere", "--steps", "2", "--out", str(tmp_path)]
        result = CliRunner().invoke(app, [*args, *(x for v in variants for x in ("--variant", v))])
        assert result.exit_code == 0, result.output
        return result.output

    first = run("source=", "sds=method=sds")
    assert "[2d colour] sds 'a red sphere' -> 'a green sphere' seed 0" in first
    assert "| sds | 1 |" in (tmp_path / "eval2d-colour.md").read_text()
    assert "[2d" not in run("source=", "sds=method=sds")  # kept rows with the same settings are not run again
    again = run("sds=method=sds,guidance_scale=7.5")  # the same name, another run
    assert "sds 'a red sphere' -> 'a green sphere' seed 0 (settings changed: running again)" in again
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert [r["variant"] for r in rows] == ["source", "sds"]  # replaced in place, not appended
    assert "| source |" not in (tmp_path / "eval2d-colour.md").read_text()  # the table holds what was asked for
