"""Stable Diffusion 2.1-base's and 1.5's architectures with random weights, through the real loading path (from a
temporary Hugging Face cache, under the withdrawn legacy ids): one LODS step of each learnable kind moves the
embedding α (77×1024 for 2.1, 77×768 for 1.5) and the LoRA weights. Slow: 1.1-1.3 B-parameter models."""

import shutil
import time

import pytest
import torch
from huggingface_hub import constants

from lodsgs.prior import hub
from lodsgs.prior.diffusion import DiffusionPrior, locate, resolve_model
from lodsgs.prior.guidance import Guidance, GuidanceConfig
from lodsgs.prior.sd_random import build_sd15_random, build_sd21_random, parameter_counts

COMMIT = "0123456789abcdef0123456789abcdef01234567"
ARCHS = {  # legacy id, builder, text width, parameter ranges (UNet, VAE, text encoder) of the real models
    "sd21": ("stabilityai/stable-diffusion-2-1-base", build_sd21_random, 1024, (860e6, 870e6), (330e6, 360e6)),
    "sd15": ("runwayml/stable-diffusion-v1-5", build_sd15_random, 768, (855e6, 865e6), (120e6, 125e6)),
}


def place(cache, repo_id: str, folder) -> str:
    """``folder`` as ``repo_id``'s snapshot in a hub cache (a symlink: the folder is GBs)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "snapshots").mkdir(parents=True)
    (repo / "snapshots" / COMMIT).symlink_to(folder, target_is_directory=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return str(repo / "snapshots" / COMMIT)


@pytest.fixture(scope="module", params=list(ARCHS))
def arch(request):
    return request.param


@pytest.fixture(scope="module")
def sd(arch, tmp_path_factory):
    """(prior, cache, folder): the random model built once per architecture, placed in an offline temporary
    Hugging Face cache under its legacy id and loaded from there by that id.

    One at a time across pytest-xdist's workers (a lock file in their shared temporary root): a loaded model
    and one of its steps take ~11-12 GB, and two of them at once passed the 24 GB of a CI machine."""
    from filelock import FileLock

    legacy, build, *_ = ARCHS[arch]
    with FileLock(str(tmp_path_factory.getbasetemp().parent / "sd-sized-model.lock")):
        yield from _sd(legacy, build, tmp_path_factory.mktemp(arch))


def _sd(legacy: str, build, root):
    folder = build(root / "random")
    cache = root / "hf-cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(constants, "HF_HUB_CACHE", str(cache))
        mp.setattr(constants, "HF_HUB_OFFLINE", True)
        place(cache, legacy, folder)
        prior = DiffusionPrior.from_pretrained(legacy)
        yield prior, cache, folder
    del prior
    shutil.rmtree(folder)  # GBs: pytest keeps its last three temporary folders


@pytest.mark.slow
def test_sd_sized_prior_loads_from_the_cache_with_sd_shapes(sd, arch):
    prior, cache, folder = sd
    legacy, _, width, unet_range, text_range = ARCHS[arch]
    assert prior.name == str(cache / f"models--{legacy.replace('/', '--')}" / "snapshots" / COMMIT)
    counts = parameter_counts(prior)
    assert unet_range[0] < counts["unet"] < unet_range[1] and 80e6 < counts["vae"] < 90e6
    assert text_range[0] < counts["text_encoder"] < text_range[1]
    assert prior.encode_text("a corgi").shape == (1, 77, width)
    assert prior.image_size == 512 and prior.num_timesteps == 1000


@pytest.mark.slow
def test_the_mirror_id_and_the_short_name_resolve_to_the_cached_mirror(sd, arch):
    prior, cache, folder = sd
    mirror = place(cache, hub.LEGACY[ARCHS[arch][0]], folder)
    assert locate(resolve_model(arch)) == mirror  # --prior sd21 / sd15, offline


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lods-embedding", "lods-lora"])
def test_one_lods_step_moves_the_learned_branch(sd, arch, method):
    prior = sd[0]
    images = torch.rand(1, 64, 64, 3, requires_grad=True)  # resized to 512² inside, as any render is
    guidance = Guidance(prior, GuidanceConfig(method=method), "a corgi")
    before = [p.detach().clone() for p in guidance.trainable()]
    if method == "lods-embedding":
        assert before[0].shape == (1, 77, ARCHS[arch][2])  # α: 77×1024 (2.1), 77×768 (1.5)
    opt = torch.optim.Adam(guidance.param_groups())
    start = time.perf_counter()
    out = guidance(images, ["front"], step=0)
    (out.loss + out.prior_loss).backward()
    opt.step()
    print(f"{arch} {method}: one step, one 512² view, {time.perf_counter() - start:.1f} s on this CPU")
    assert images.grad is not None and images.grad.abs().sum() > 0  # through the VAE encoder to the renders
    moved = [(p.detach() - b).abs().max().item() for p, b in zip(guidance.trainable(), before, strict=True)]
    assert max(moved) > 0, f"{method}: the learned branch did not move"


@pytest.mark.slow
def test_two_step_image_to_3d_run_on_stable_diffusion(sd, arch, tmp_path):
    """`generate --image` with the image_lods preset on SD's architecture: the prior's loss through the VAE on
    the random views, the reference loss in pixels at the reference camera, both in the run's final metrics."""
    import json

    import numpy as np
    from PIL import Image

    from lodsgs import api
    from lodsgs.config import load_config
    if arch != "sd21":
        pytest.skip("the image path is the same for every architecture: SD 2.1 checks it")
    prior, _, folder = sd
    picture = np.zeros((128, 128, 4), dtype=np.uint8)
    picture[40:90, 30:100] = (200, 30, 30, 255)
    Image.fromarray(picture).save(tmp_path / "ref.png")
    cfg = load_config("image_lods", [f"prior.model={folder}", f"image.path={tmp_path / 'ref.png'}", "run.steps=2",
                                     "run.batch=1", "camera.width=64", "camera.height=64", "init.num=300",
                                     "run.turntable_frames=2", "run.turntable_size=32", "run.device=cpu"])
    run_dir = api.run("a red cube", cfg, tmp_path / "runs", quiet=True, prior=prior).run_dir
    final = json.loads((run_dir / "metrics.json").read_text())["final"]
    assert final["ref_rgb_mse"] > 0 and final["ref_mask_mse"] > 0 and "sds" in final, final
    assert (run_dir / "reference.png").is_file() and (run_dir / "splats.ply").is_file()


@pytest.mark.slow
def test_two_step_image_and_edit_on_stable_diffusion(sd, arch, tmp_path):
    """`lodsgs image` and `lodsgs edit` on SD's architecture, loaded from its folder as `--prior PATH`: the
    particle is the 4×64×64 latent, VAE-decoded to 512² at the end; the edit encodes its source first."""
    import json

    import numpy as np
    from PIL import Image
    from typer.testing import CliRunner

    from lodsgs.cli import app
    if arch != "sd21":
        pytest.skip("the 2D latent path is the same for every architecture: SD 2.1 checks it")
    _, _, folder = sd
    common = ["--prior", str(folder), "--steps", "2", "--device", "cpu"]
    made = CliRunner().invoke(app, ["image", "a red cube", "--particles", "1", "--out", str(tmp_path / "image"),
                                    *common])
    assert made.exit_code == 0, made.output
    assert Image.open(tmp_path / "image" / "image-a-red-cube-0" / "image.png").size == (512, 512)
    picture = np.full((256, 256, 3), 255, np.uint8)
    picture[64:192, 64:192] = (200, 30, 30)
    Image.fromarray(picture).save(tmp_path / "red.png")
    edited = CliRunner().invoke(app, ["edit", str(tmp_path / "red.png"), "--source", "a red cube", "--target",
                                      "a blue cube", "--out", str(tmp_path / "edit"), *common])
    assert edited.exit_code == 0, edited.output
    run_dir = tmp_path / "edit" / "edit-a-blue-cube-0"  # --out is the parent folder
    assert Image.open(run_dir / "edited.png").size == (512, 512)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["config"]["guidance"]["method"] == "lods-embedding"
