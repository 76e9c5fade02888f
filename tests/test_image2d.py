"""2D generation and editing: `lodsgs image`, `lodsgs edit`, their presets on the one config, DDS's gradient,
bad inputs, run folders, determinism."""

from __future__ import annotations

import json
import subprocess
import sys

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lodsgs.cli import app
from lodsgs.config import PRESET_DIR, load_config
from lodsgs.errors import LodsgsError
from lodsgs.image2d import generate_image, initial_particles, load_2d_config, optimize
from lodsgs.prior.diffusion import DiffusionPrior
from lodsgs.prior.guidance import Guidance, GuidanceConfig

runner = CliRunner()


def _red_square(path, size: int = 16) -> None:
    img = np.full((size, size, 3), 255, np.uint8)
    img[4:12, 4:12] = (220, 25, 25)
    imageio.imwrite(path, img)


def test_image_on_latent_prior_writes_outputs(tiny_prior_dirs, tmp_path):
    out = tmp_path / "image-a-red-cube-0"  # --out is the parent folder: OUT/image-<slug>-<seed>
    res = runner.invoke(app, ["image", "a red cube", "--prior", tiny_prior_dirs["latent"], "--particles", "3",
                              "--steps", "4", "--out", str(tmp_path), "--device", "cpu", "--set", "run.log_every=1"])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == f"wrote {out}"  # the progress bar goes to stderr
    image = imageio.imread(out / "image.png")
    assert image.shape[0] >= 16 and image.shape[1] > 3 * image.shape[0]  # three VAE-decoded particles in a row
    assert imageio.imread(out / "progress.png").shape[0] >= 3 * 16  # one row per particle
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    assert all(r["alpha_shift"] is not None for r in records)  # the default method is LODS-embedding
    metrics = json.loads((out / "metrics.json").read_text())
    settings = metrics["config"]  # the effective 2D settings, by section
    assert metrics["steps"] == 4 and settings["canvas"]["particles"] == 3 and metrics["steps_per_second"] > 0
    assert set(settings) == {"run", "prior", "guidance", "canvas"} and settings["run"]["steps"] == 4


@pytest.mark.parametrize("method, stored", [("sds", "sds"), ("dds", "dds"), ("lods", "lods-embedding")])
def test_edit_on_latent_prior_writes_outputs(tiny_prior_dirs, tmp_path, method, stored):
    src, out = tmp_path / "src.png", tmp_path / "runs" / "edit-a-blue-cube-0"
    _red_square(src)
    res = runner.invoke(app, ["edit", str(src), "--source", "a red cube", "--target", "a blue cube", "--method",
                              method, "--prior", tiny_prior_dirs["latent"], "--steps", "3", "--out",
                              str(tmp_path / "runs"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    edited, strip = imageio.imread(out / "edited.png"), imageio.imread(out / "before_after.png")
    assert strip.shape[1] == 2 * edited.shape[1] + 2 and strip.shape[0] == edited.shape[0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["source"] == "a red cube" and metrics["config"]["guidance"]["method"] == stored


@pytest.mark.parametrize("args, needle", [
    (["image", "a red dragon", "--prior", "shapes"], "dragon"),
    (["edit", "{missing}", "--source", "a red cube", "--target", "a blue cube", "--prior", "shapes"], "not found"),
    (["edit", "{garbage}", "--source", "a red cube", "--target", "a blue cube", "--prior", "shapes"],
     "cannot read image"),
    (["edit", "{image}", "--source", "a red cube", "--target", "a red cube", "--prior", "shapes"], "the same"),
    (["edit", "{image}", "--source", "a red cube", "--target", "a red dragon", "--prior", "shapes"], "dragon"),
    (["image", "a red cube", "--prior", "shapes", "--method", "dds"], "guidance.method 'dds' is not for"),
    (["image", "a red cube", "--prior", "shapes", "--set", "colour=red"], "unknown config key 'colour'"),
    (["image", "a red cube", "--prior", "shapes", "--set", "canvas.colour=red"], "unknown config key 'canvas.colour'"),
    (["image", "a red cube", "--prior", "shapes", "--set", "guidance.min_step_percent=1.5"],
     "'guidance.min_step_percent': must be >= 0 and <= 1"),
    (["image", "a red cube", "--prior", "shapes", "--set", "canvas.lr=-1"], "'canvas.lr': must be > 0"),
    (["image", "a red cube", "--prior", "shapes", "--set", "canvas.alpha_from_source=maybe"],
     "'canvas.alpha_from_source' (--set): expected true or false"),
    (["image", "a red cube", "--prior", "shapes", "--particles", "0"], "'canvas.particles': must be >= 1"),
    (["image", "a red cube", "--prior", "shapes", "--config", "nope"], "unknown preset 'nope'"),
    (["edit", "{image}", "--source", "a red cube", "--target", "a blue cube", "--prior", "shapes", "--method",
      "lods-nerf"], "'guidance.method'"),
])
def test_bad_inputs_one_line_nothing_written(tmp_path, monkeypatch, args, needle):
    image, garbage = tmp_path / "in.png", tmp_path / "garbage.png"
    _red_square(image)
    garbage.write_text("not an image")
    paths = {"{missing}": str(tmp_path / "nope.png"), "{garbage}": str(garbage), "{image}": str(image)}
    cwd, out = tmp_path / "cwd", tmp_path / "out"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    for extra in ([], ["--out", str(out)]):  # the default --out (runs, in the working folder) and a given one
        res = runner.invoke(app, [paths.get(a, a) for a in args] + extra)
        assert res.exit_code == 2, res.output
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("lodsgs: error:") and needle in lines[0], res.output
        assert not out.exists() and list(cwd.iterdir()) == []


def test_an_existing_run_folder_is_refused_without_overwrite(tiny_prior_dirs, tmp_path):
    args = ["image", "a red cube", "--prior", tiny_prior_dirs["pixel"], "--particles", "1", "--steps", "2",
            "--out", str(tmp_path), "--device", "cpu"]
    run_dir = tmp_path / "image-a-red-cube-0"
    assert runner.invoke(app, args).exit_code == 0
    (run_dir / "notes.txt").write_text("mine")
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and res.output.strip().splitlines() == [
        f"lodsgs: error: run folder {str(run_dir)!r} already exists; pass --overwrite to start again"], res.output
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == before  # untouched
    res = runner.invoke(app, [*args, "--overwrite"])
    assert res.exit_code == 0, res.output
    assert (run_dir / "notes.txt").read_text() == "mine"  # only the run's own outputs are replaced
    assert (run_dir / "metrics.json").stat().st_mtime_ns > before["metrics.json"]


def test_generate_image_without_out_writes_nothing(tiny_prior_dirs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_2d_config("image", None, ["run.steps=2", "canvas.particles=2", "run.device=cpu"],
                         tiny_prior_dirs["pixel"])
    result = generate_image("a red cube", cfg)
    assert list(tmp_path.iterdir()) == []
    assert result.run_dir is None and result.steps == 2 and [r["step"] for r in result.log] == [0, 1]
    assert result.images.shape == (2, 16, 16, 3) and 0 <= result.images.min() <= result.images.max() <= 1
    assert len(result.strip) == 3  # the snapshots at steps 0 and 1, then the final pictures


def test_a_2d_run_reads_no_3d_setting(tiny_prior_dirs):
    """The 2D loop reads run.steps/seed/log_every/device and the prior, guidance and canvas sections only:
    changing the 3D sections (and run.batch) leaves the images bit for bit the same."""
    prior = DiffusionPrior.from_pretrained(tiny_prior_dirs["pixel"])

    def images(*extra: str) -> torch.Tensor:
        cfg = load_2d_config("image", None, ["run.steps=3", "canvas.particles=2", *extra], None)
        return optimize(prior, "a red cube", cfg, initial_particles(prior, 2, torch.Generator().manual_seed(0))).images

    other = ["run.batch=3", "camera.width=128", "optim.means=0.5", "densify.max_gaussians=7", "init.num=7",
             "render.background=[1,1,1]", "image.rgb_weight=0", "mesh.faces=0"]
    assert torch.equal(images(), images(*other))


def test_loading_a_2d_config_imports_no_torch():
    """The CLI checks a 2D command's settings (every error path) before torch loads."""
    code = ("import sys; from lodsgs.image2d import load_2d_config; "
            "load_2d_config('edit', None, ['guidance.method=dds'], 'shapes'); "
            "loaded = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'diffusers', 'transformers'}); "
            "assert not loaded, loaded")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_dds_is_for_2d_edits_only():
    assert load_2d_config("edit", None, ["guidance.method=dds"], None).guidance.method == "dds"
    for refuse in (lambda: load_config(None, ["guidance.method=dds"]),
                   lambda: load_2d_config("image", None, ["guidance.method=dds"], None)):
        with pytest.raises(LodsgsError, match="dds"):
            refuse()


# The retired Image2DConfig presets (lodsgs/image2d.py PRESETS over the Image2DConfig defaults), literally.
OLD_FIELDS = ("method", "particles", "batch", "steps", "lr", "guidance_scale", "embedding_lr", "lora_lr",
              "negative_prompt", "alpha_from_source", "t_min", "t_max", "t_max_end", "seed", "log_every", "snapshots")
OLD = {  # name: (new preset, its overrides), the old values in OLD_FIELDS order
    "default": (("image2d", []),
                ("lods-embedding", 4, 4, 200, 3e-2, 100.0, 1e-2, 1e-5, "", True, 0.02, 0.98, 0.2, 0, 10, 8)),
    "shapes": (("image2d_shapes", []),
               ("lods-embedding", 4, 4, 200, 0.3, 3.0, 1e-2, 1e-5, "", True, 0.02, 0.98, 0.5, 0, 10, 8)),
    "paper-embedding": (("image2d_paper_embedding", []),
                        ("lods-embedding", 4, 4, 200, 3e-2, 100.0, 1e-4, 1e-5, "", True, 0.02, 0.98, 0.2, 0, 10, 8)),
    "paper-lora": (("image2d_paper_lora", []),
                   ("lods-lora", 4, 4, 200, 3e-2, 1e6, 1e-2, 1e-5, "", True, 0.02, 0.98, 0.2, 0, 10, 8)),
    # the old edit method "lods" is lods-embedding with α from the source caption (alpha_from_source true)
    "edit": (("edit2d", []),
             ("lods", 1, 1, 200, 3e-2, 3.0, 1e-2, 1e-5, "", True, 0.05, 0.5, 0.5, 0, 10, 8)),
    "sds-7.5": (("image2d", ["guidance.method=sds", "guidance.guidance_scale=7.5"]),
                ("sds", 4, 4, 200, 3e-2, 7.5, 1e-2, 1e-5, "", True, 0.02, 0.98, 0.2, 0, 10, 8)),
    "sds-100": (("image2d", ["guidance.method=sds", "guidance.guidance_scale=100"]),
                ("sds", 4, 4, 200, 3e-2, 100.0, 1e-2, 1e-5, "", True, 0.02, 0.98, 0.2, 0, 10, 8)),
}


def as_old(cfg) -> dict:
    """A Config's 2D settings under the old Image2DConfig names."""
    g, c, r = cfg.guidance, cfg.canvas, cfg.run
    return {"method": g.method, "particles": c.particles, "batch": c.batch, "steps": r.steps, "lr": c.lr,
            "guidance_scale": g.guidance_scale, "embedding_lr": g.embedding_lr, "lora_lr": g.lora_lr,
            "negative_prompt": g.negative_prompt, "alpha_from_source": c.alpha_from_source,
            "t_min": g.min_step_percent, "t_max": g.max_step_percent, "t_max_end": g.max_step_percent_after,
            "seed": r.seed, "log_every": r.log_every, "snapshots": c.snapshots}


@pytest.mark.parametrize("old", list(OLD))
def test_each_preset_keeps_the_old_settings(old):
    (preset, sets), values = OLD[old]
    kind = "edit" if old == "edit" else "image"
    cfg = load_2d_config(kind, preset, sets, None)
    expected = dict(zip(OLD_FIELDS, values, strict=True))
    expected["method"] = "lods-embedding" if expected["method"] == "lods" else expected["method"]
    assert as_old(cfg) == expected
    g = cfg.guidance  # what the old code handed Guidance beside those: no view suffix, t_max linear over the run
    assert (g.view_dependent, g.anneal, g.anneal_at) == (False, "linear", 1.0)
    assert (g.lora_rank, g.lora_scale, g.prior_loss_weight) == (4, 0.5, 1.0)


def test_eval2d_variants_are_the_old_presets():
    from lodsgs.eval2d import GENERATE_VARIANTS
    for name, old in (("sds-7.5", "sds-7.5"), ("sds-100", "sds-100"), ("lods-emb", "shapes"),
                      ("lods-emb-paper", "paper-embedding"), ("lods-lora-paper", "paper-lora")):
        preset, sets = GENERATE_VARIANTS[name]
        assert as_old(load_2d_config("image", preset, sets, None)) == as_old(load_2d_config("image", *OLD[old][0],
                                                                                            None))


@pytest.mark.parametrize("preset", ["image2d", "image2d_shapes", "image2d_paper_embedding", "image2d_paper_lora",
                                    "edit2d"])
def test_2d_presets_set_everything_a_2d_run_reads(preset):
    """No dataclass default (3D's, which may change) reaches a 2D run: its presets name every key it reads."""
    import dataclasses

    import yaml

    from lodsgs.config import Config
    from lodsgs.image2d import RUN_KEYS, SECTIONS
    data = yaml.safe_load((PRESET_DIR / f"{preset}.yaml").read_text())
    assert set(data) == {"run", *SECTIONS}
    assert set(data["run"]) == set(RUN_KEYS)
    for section in SECTIONS:
        assert set(data[section]) == {f.name for f in dataclasses.fields(getattr(Config(), section))}, section


def test_same_seed_same_images_other_seed_other(tiny_prior_dirs):
    prior = DiffusionPrior.from_pretrained(tiny_prior_dirs["pixel"])

    def run(seed: int) -> torch.Tensor:
        cfg = load_2d_config("image", None, ["run.steps=3", "canvas.particles=2", f"run.seed={seed}"], None)
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
        cfg = load_2d_config("edit", None, ["guidance.method=lods-embedding", "run.steps=1",
                                            "guidance.embedding_lr=1e-12",
                                            f"canvas.alpha_from_source={str(from_source).lower()}"], None)
        run = edit(prior, image, "a red cube", "a blue cube", cfg)
        a0 = prior.encode_text(start).flatten()
        cos = torch.nn.functional.cosine_similarity(a0, prior.encode_text("a blue cube").flatten(), dim=0).item()
        assert run.log[-1]["alpha_cos"] == pytest.approx(cos, abs=1e-4)  # α still at its start: cos(start, target)


def test_edit_eval_variants_run_the_method_they_name():
    """The default `lodsgs eval --2d` edit rows: `sds` is SDS and `dds` DDS, not the `edit` preset's LODS."""
    from lodsgs.eval2d import EDIT_VARIANTS
    cfgs = {name: load_2d_config("edit", preset, sets, None) for name, (preset, sets) in EDIT_VARIANTS.items()}
    assert {k: (cfgs[k].guidance.method, cfgs[k].canvas.alpha_from_source) for k in ("sds", "dds", "lods", "lods-null")
            } == {"sds": ("sds", True), "dds": ("dds", True), "lods": ("lods-embedding", True),
                  "lods-null": ("lods-embedding", False)}


@pytest.mark.slow
def test_image_on_shapes_prior_moves_toward_truth(tmp_path):
    """40 steps on the shapes prior: the particles get closer to the caption's truth than their noise start."""
    from lodsgs.eval2d import generation_scores
    from lodsgs.image2d import to_images
    from lodsgs.prior.diffusion import resolve_model
    prior = DiffusionPrior.from_pretrained(resolve_model("shapes"))
    cfg = load_2d_config("image", None, ["run.steps=40", "canvas.particles=2"], "shapes")  # lodsgs image's
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

    first = run("source=", "sds=guidance.method=sds")
    assert "[2d colour] sds 'a red sphere' -> 'a green sphere' seed 0" in first
    assert "| sds | 1 |" in (tmp_path / "eval2d-colour.md").read_text()
    assert "[2d" not in run("source=", "sds=guidance.method=sds")  # kept rows with the same settings: not run again
    again = run("sds=guidance.method=sds,guidance.guidance_scale=7.5")  # the same name, another run
    assert "sds 'a red sphere' -> 'a green sphere' seed 0 (settings changed: running again)" in again
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert [r["variant"] for r in rows] == ["source", "sds"]  # replaced in place, not appended
    assert "| source |" not in (tmp_path / "eval2d-colour.md").read_text()  # the table holds what was asked for


def test_eval_2d_bad_variant_is_one_line_before_any_run(tmp_path):
    result = runner.invoke(app, ["eval", "--2d", "--task", "colour", "--caption", "a red sphere", "--out",
                                 str(tmp_path / "e"), "--variant", "sds=method=sds"])  # the old flat key
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "variant 'sds': unknown config key 'method'" in lines[0], result.output
    assert not (tmp_path / "e").exists()
