"""The shapes world, its dataset, and the shipped offline prior."""

import json

import pytest
import torch

from lodsgs.prior.diffusion import SHAPES_DIR, DiffusionPrior
from lodsgs.prior.shapes import world
from lodsgs.prior.shapes.dataset import DatasetConfig, build_dataset


def test_world_has_the_promised_captions():
    caps = world.captions()
    assert len(world.SHAPES) >= 5 and len(world.COLORS) >= 6
    assert len(caps) == len(world.SHAPES) * len(world.COLORS) + len(world.COMPOSITIONS) == len(set(caps))
    assert "a red cube on a blue cylinder" in caps and "an orange torus" in caps


def test_underspecified_captions_name_their_modes_and_keep_old_token_ids():
    under = world.underspecified_captions()
    assert "a cube" in under and "a red shape" in under and "an orange shape" in under and len(under) == 11
    assert world.modes("a cube") == [f"{world.article(c)} {c} cube" for c in world.COLORS]
    assert world.modes("a red shape") == [f"a red {s}" for s in world.SHAPES]
    assert world.modes("a red cube") == ["a red cube"]
    with pytest.raises(ValueError):
        world.modes("a fluffy corgi")
    vocab = world.vocabulary()
    assert vocab[-len(world.EXTRA_WORDS):] == list(world.EXTRA_WORDS)  # appended: earlier ids keep their rows
    assert vocab[:-len(world.EXTRA_WORDS)] == sorted(vocab[:-len(world.EXTRA_WORDS)])


def test_training_captions_leave_one_attribute_open_at_the_stated_rate():
    from lodsgs.prior.shapes.train import training_caption

    g = torch.Generator().manual_seed(0)
    got = [training_caption("a red cube", torch.rand(2, generator=g), 0.15) for _ in range(4000)]
    share = {c: got.count(c) / len(got) for c in set(got)}
    assert set(share) == {"a red cube", "a cube", "a red shape"}
    assert share["a cube"] == pytest.approx(0.15, abs=0.02) and share["a red shape"] == pytest.approx(0.15, abs=0.02)
    scene = "a red cube on a blue cylinder"
    assert training_caption(scene, torch.zeros(2), 0.15) == scene  # scenes keep their full caption
    assert training_caption("a red cube", torch.zeros(2), 0.0) == "a red cube"


def test_objects_are_deterministic_and_coloured():
    a, b = world.build_object("a green cone"), world.build_object("a green cone")
    for key in a.params:
        assert torch.equal(a.params[key], b.params[key])
    rgb = a.rgb.mean(0)
    assert rgb[1] > rgb[0] + 0.2 and rgb[1] > rgb[2] + 0.2  # green
    pair = world.build_object("a red sphere left of a blue cube")
    left = pair.means[:, 0] < 0
    assert pair.rgb[left].mean(0)[0] > 0.4 and pair.rgb[~left].mean(0)[2] > 0.4  # red at -x, blue at +x


def test_vocabulary_check_names_unknown_words():
    from lodsgs.prompts import unknown_words

    assert unknown_words("a red cube, front view", world.vocabulary()) == []
    assert unknown_words("a fluffy corgi", world.vocabulary()) == ["fluffy", "corgi"]


def test_dataset_has_the_stated_views_and_captions():
    caps = ["a red cube", "a red sphere left of a blue cube"]
    data = build_dataset(DatasetConfig(views=3, size=16, supersample=2), caps)
    assert data["images"].shape == (6, 16, 16, 3) and data["images"].dtype == torch.uint8
    assert data["caption_ids"].tolist() == [0, 0, 0, 1, 1, 1]
    assert set(data["labels"]) <= {"front", "side", "back", "overhead"}
    corner = data["images"][:, 0, 0].float()
    assert (corner > 240).all()  # white background


def test_shipped_prior_loads_offline_and_denoises(monkeypatch):
    assert (SHAPES_DIR / "unet" / "diffusion_pytorch_model.safetensors").is_file(), "weights missing from the package"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    prior = DiffusionPrior.from_pretrained(str(SHAPES_DIR))
    assert prior.vae is None and prior.image_size == 32
    img = world.build_object("a blue cube")
    from lodsgs.cameras import eval_cameras
    from lodsgs.splats.render import render
    with torch.no_grad():
        x0 = prior.encode_images(render(img, eval_cameras(world.SHAPES_CAMERAS, 4, 32, 32),
                                        background=world.BACKGROUND).rgb)
        g = torch.Generator().manual_seed(0)
        noise = torch.randn(x0.shape, generator=g)
        t = torch.full((4,), 300)
        pred = prior.predict_noise(prior.add_noise(x0, noise, t), t, prior.encode_text("a blue cube").expand(4, -1, -1))
    # a trained denoiser predicts the noise far better than chance (MSE 1 for predicting zeros)
    assert torch.nn.functional.mse_loss(pred, noise) < 0.3


@pytest.mark.slow
def test_shipped_prior_samples_the_caption_colour():
    from lodsgs.prior.shapes.sanity import dominant_color, nearest_color_name
    prior = DiffusionPrior.from_pretrained(str(SHAPES_DIR))
    images = prior.sample("a red cylinder", n=4, steps=30)
    names = [nearest_color_name(c) for c in dominant_color(images)]
    assert names.count("red") >= 3, names


def test_unknown_words_are_refused_with_the_vocabulary(tmp_path):
    from typer.testing import CliRunner

    from lodsgs.cli import app
    result = CliRunner().invoke(app, ["generate", "a fluffy corgi", "--prior", "shapes", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "does not know the word(s) fluffy, corgi" in result.output and "cube" in result.output


@pytest.mark.slow
def test_short_generation_matches_the_caption(tmp_path):
    """The default method (LODS-embedding) with the shapes prior's own budget: green, and cone-shaped."""
    from lodsgs import api
    from lodsgs.config import load_config
    from lodsgs.eval import EvalViews, score, view_cameras
    from lodsgs.prior.shapes.compare import side_by_side
    from lodsgs.prior.shapes.sanity import dominant_color, nearest_color_name
    from lodsgs.splats.io import read_ply
    from lodsgs.splats.render import render
    from lodsgs.starts import init_splats
    from lodsgs.trainer import load_prior

    cfg = load_config(None, ["prior.model=shapes", "run.turntable_frames=4"])
    prior = load_prior(cfg, "cpu")
    run = api.run("a green cone", cfg, tmp_path, quiet=True, prior=prior).run_dir
    splats, truth, views = read_ply(run / "splats.ply"), world.build_object("a green cone"), EvalViews(n=4)
    s = score(splats, truth, views, world.BACKGROUND)
    start = score(init_splats(cfg, "a green cone", prior), truth, views, world.BACKGROUND)
    with torch.no_grad():
        images = render(splats, view_cameras(views), background=world.BACKGROUND).rgb
    assert nearest_color_name(dominant_color(images).mean(0)) == "green"
    assert s["iou"] > IOU_THRESHOLD > start["iou"] + 0.2, (s, start)
    assert s["psnr"] > PSNR_THRESHOLD > start["psnr"] + 5, (s, start)
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    counts = [r["gaussians"] for r in records]
    assert records[-1]["grown"] > 0 and records[-1]["pruned"] > 0 and len(set(counts)) > 1  # inside the budget
    frames = side_by_side(run, frames=2, size=32)
    assert frames.shape == (2, 32, 64, 3) and frames[:, :, 32:].min() < 100  # the truth is drawn on the right


# The random-ball start already overlaps a cone's silhouette (IoU 0.48 on these views). With the shapes profile
# (ω 3) the default method reaches, on the 4 views used here, IoU 0.971 / 30.3 dB at seed 0 and 0.945 / 25.8 dB
# at seed 1 (the README's 16-view eval over seeds 0-2: 0.945-0.971 / 25.8-30.2 dB; all six cone colours at
# seed 0: 0.89-0.97 / 24.1-30.2 dB). The test runs seed 0; 0.92 / 25 dB sits under all three seeds measured,
# a margin for other builds' numerics, and still asks for a clean cone: a blob of the right colour does not
# reach it (SDS at CFG 100 fattens this cone to 21.9 dB / 0.90).
IOU_THRESHOLD = 0.92
PSNR_THRESHOLD = 25.0


@pytest.mark.slow
def test_prior_sanity_command_reports_each_caption(tmp_path):
    import json

    from typer.testing import CliRunner

    from lodsgs.cli import app
    out = tmp_path / "sanity.json"
    result = CliRunner().invoke(app, ["prior", "sanity", "--caption", "a red cube", "--caption", "a blue torus",
                                      "--caption", "a cube", "--samples", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "| a red cube |" in result.output and "| a blue torus |" in result.output
    rows = json.loads(out.read_text())["rows"]
    assert [r["caption"] for r in rows] == ["a red cube", "a blue torus", "a cube"]
    assert all(0 <= r["color_match"] <= 1 and r["nearest_view_mse"] > 0 for r in rows)
    assert "colors" not in rows[0] and rows[2]["shapes"] == {"cube": 2} and sum(rows[2]["colors"].values()) == 2
    bad = CliRunner().invoke(app, ["prior", "sanity", "--caption", "a corgi"])
    assert bad.exit_code == 2 and "not shapes-world captions" in bad.output and "Traceback" not in bad.output


@pytest.mark.slow
def test_training_by_steps_is_reproducible_exports_and_resumes(tmp_path):
    from lodsgs.prior.shapes import train

    def run(folder, steps: int, *extra: str) -> dict:
        train.main(["--out", str(folder / "prior"), "--work", str(folder / "work"), "--views", "1", "--batch", "2",
                    "--steps", str(steps), *extra])
        return torch.load(folder / "work" / "checkpoint.pt", weights_only=True)

    a, b = run(tmp_path / "a", 3), run(tmp_path / "b", 3)
    assert a["step"] == b["step"] == 3
    assert a["opt"]["param_groups"][0]["lr"] == train.learning_rate(4e-4, 2, 2 / 3)  # the last step's, by step
    assert all(torch.equal(a["unet"][k], b["unet"][k]) for k in a["unet"])  # same arguments, same weights
    assert not all(torch.equal(a["unet"][k], a["ema_unet"][k]) for k in a["unet"])  # it did train
    prior = DiffusionPrior.from_pretrained(str(tmp_path / "a" / "prior"))
    assert prior.vae is None and prior.unet.config.sample_size == 32
    assert run(tmp_path / "a", 5, "--resume")["step"] == 5  # a resume continues to the new total


def test_learning_rate_schedule_is_by_step():
    from lodsgs.prior.shapes.train import learning_rate

    assert learning_rate(1.0, 0, 0.0) == pytest.approx(1 / 200)  # warm-up
    assert learning_rate(1.0, 199, 0.0) == pytest.approx(1.0)
    assert learning_rate(1.0, 1000, 0.5) == pytest.approx(0.55)  # half-way down the cosine
    assert learning_rate(1.0, 7000, 1.0) == pytest.approx(0.1)


def test_train_shapes_refuses_bad_budgets_in_one_line():
    from typer.testing import CliRunner

    from lodsgs.cli import app
    for bad in (["--steps", "0"], ["--minutes", "-1"]):
        result = CliRunner().invoke(app, ["prior", "train-shapes", *bad])
        assert result.exit_code == 2 and "--steps and --batch must be >= 1" in result.output, result.output


def test_warm_start_keeps_the_old_token_rows_when_the_vocabulary_grew(tmp_path):
    from lodsgs.prior.shapes import train

    tok = train.build_tokenizer()
    unet, text = train.build_models(len(tok))
    old_unet, old_text = train.build_models(len(tok) - len(world.EXTRA_WORDS))  # a prior from before "shape"
    old_unet.save_pretrained(tmp_path / "unet")
    old_text.save_pretrained(tmp_path / "text_encoder")
    fresh = text.get_input_embeddings().weight.detach().clone()
    train.load_weights(tmp_path, unet, text)
    rows, old_rows = text.get_input_embeddings().weight, old_text.get_input_embeddings().weight
    assert torch.equal(rows[: len(old_rows)], old_rows)
    assert torch.equal(rows[len(old_rows):], fresh[len(old_rows):])  # the new word keeps its fresh init
    assert all(torch.equal(a, b) for a, b in zip(unet.state_dict().values(), old_unet.state_dict().values()))
