"""Stable Diffusion from the Hugging Face Hub: the names that exist, the cache, downloads, one line per failure.

Stability AI withdrew the SD 2.x repositories from the Hub in November 2025 (huggingface/diffusers#12874) and
RunwayML its SD 1.5 one in 2024; their community mirrors hold the same files. A legacy id is still used from
the local cache when an old download is there, otherwise replaced by its mirror with a one-line note.
"""

from __future__ import annotations

import errno
import sys
from pathlib import Path

from lodsgs.errors import LodsgsError
from lodsgs.names import LEGACY, NAMED, SD15, SD21, SHAP_E, SHAPES_DIR, resolve_model  # noqa: F401  (re-exported)

# the diffusers components as safetensors: SD repos also hold .ckpt, .bin, EMA and ONNX copies (GBs)
CONFIGS = ["model_index.json", "*/config.json", "scheduler/*.json", "tokenizer/*"]
PATTERNS = {"fp32": CONFIGS + ["*/model.safetensors", "*/diffusion_pytorch_model.safetensors"],
            "fp16": CONFIGS + ["*/model.fp16.safetensors", "*/diffusion_pytorch_model.fp16.safetensors"]}
# what ShapEPipeline reads from openai/shap-e (model_index.json names prior, text_encoder, tokenizer, scheduler,
# shap_e_renderer; the older renderer/ folder is unused): the repository holds prior/ and text_encoder/ as fp16
# safetensors (beside pickled .bin copies) and shap_e_renderer/ as a pickled .bin only, which diffusers reads
# with torch.load(weights_only=True): tensors only, no code
SHAP_E_PATTERNS = ["model_index.json", "scheduler/*.json", "tokenizer/*",
                   *(f"{c}/{f}" for c in ("prior", "text_encoder", "shap_e_renderer")
                     for f in ("config.json", "*.safetensors")), "shap_e_renderer/diffusion_pytorch_model.bin"]


def note(message: str) -> None:
    """A one-line notice on stderr (stdout stays the command's result)."""
    print(f"lodsgs: note: {message}", file=sys.stderr)


def cache_dir() -> str:
    """The Hugging Face hub cache in use (HF_HUB_CACHE / HF_HOME), read now so tests can point it elsewhere."""
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def has_fp16(repo_id: str, revision: str | None = None) -> bool:
    """Whether the repository ships the ``fp16`` variant files (half the bytes of the fp32 ones)."""
    from huggingface_hub import HfApi

    return any(f.endswith(".fp16.safetensors") for f in HfApi().list_repo_files(repo_id, revision=revision))


def cached(repo_id: str, revision: str | None = None, local_dir: str | None = None,
           pattern_sets: list[list[str]] | None = None) -> str | None:
    """The complete local snapshot of ``repo_id`` (fp32 or fp16 files; or one of ``pattern_sets``), or None: no
    network call."""
    from huggingface_hub import snapshot_download

    for patterns in pattern_sets or PATTERNS.values():
        try:
            return snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_files_only=True,
                                     local_dir=local_dir)
        except Exception:  # not cached, or cached with the other variant's files only
            continue
    return None


def snapshot(repo_id: str, revision: str | None = None, fp16: bool = False) -> str:
    """A hub model's local folder: from the cache, else downloaded (the fp16 files when ``fp16`` and the
    repository has them). A withdrawn legacy id not in the cache is replaced by its mirror."""
    if repo_id in LEGACY:
        found = cached(repo_id, revision)
        if found:
            return found
        note(f"{repo_id} was withdrawn from the Hugging Face Hub; using its mirror {LEGACY[repo_id]}")
        repo_id = LEGACY[repo_id]
    return cached(repo_id, revision) or download(repo_id, revision, fp16)


def download(repo_id: str, revision: str | None = None, fp16: bool = False, to: str | None = None,
             patterns: list[str] | None = None, setting: str = "prior.model") -> str:
    """Fetch the components (``patterns``: these files instead) into the cache (or the folder ``to``) with progress
    bars; an interrupted download resumes where it stopped. Every failure is one LodsgsError line with its fix
    (``setting``: the one that names the model, see hub_error)."""
    from huggingface_hub import snapshot_download

    try:
        if patterns is None:
            patterns = PATTERNS["fp16" if fp16 and has_fp16(repo_id, revision) else "fp32"]
        return snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_dir=to)
    except Exception as e:
        raise hub_error(repo_id, e, revision, setting) from None


def shap_e_snapshot(repo_id: str = SHAP_E, revision: str | None = None) -> str:
    """The Shap-E pipeline's local folder: cached, else downloaded; offline, one line naming the ball start."""
    return (cached(repo_id, revision, pattern_sets=[SHAP_E_PATTERNS])
            or download(repo_id, revision, patterns=SHAP_E_PATTERNS, setting="init.shap_e_model"))


def hub_error(repo_id: str, err: Exception, revision: str | None = None, setting: str = "prior.model") -> LodsgsError:
    """One line naming what failed and the fix, per huggingface_hub exception class; ``setting`` names the model
    (prior.model, or init.shap_e_model: the Shap-E start, whose offline fix is the ball start)."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import OfflineModeIsEnabled

    local = f"--set {setting}=/path/to/folder (a diffusers folder)"
    prior = setting == "prior.model"
    if isinstance(err, GatedRepoError):  # a subclass of RepositoryNotFoundError: test it first
        return LodsgsError(f"diffusion model {repo_id!r} is gated: accept its licence on "
                           f"https://huggingface.co/{repo_id} and log in with `hf auth login`, then rerun")
    if isinstance(err, RepositoryNotFoundError):
        mirrors = (f"the withdrawn Stable Diffusion repositories have mirrors: --prior sd21 ({SD21}), --prior sd15 "
                   f"({SD15}); or " if prior else "")
        return LodsgsError(f"diffusion model {repo_id!r} is not on the Hugging Face Hub (withdrawn, misspelt or "
                           f"private); {mirrors}{local}")
    if isinstance(err, RevisionNotFoundError):
        return LodsgsError(f"diffusion model {repo_id!r} has no revision {revision!r}; give a commit of that "
                           "repository in prior.revision, or leave it empty for the latest")
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        where = f"folder {Path(err.filename).parent}" if getattr(err, "filename", None) else cache_dir()
        return LodsgsError(f"disk full while downloading {repo_id!r} into {where}; free space and rerun (the "
                           "download resumes), or download to a bigger disk: HF_HUB_CACHE=/big/disk, or "
                           f"`lodsgs prior download {repo_id} --out DIR` and "
                           + ("--prior DIR" if prior else f"--set {setting}=DIR"))
    if isinstance(err, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
        why = ("Hugging Face Hub access is off (HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE
               else "the Hugging Face Hub cannot be reached")
        return LodsgsError(f"diffusion model {repo_id!r} is not in the Hugging Face cache ({cache_dir()}) and {why}; "
                           f"run `lodsgs prior download {repo_id}` where there is network and copy the cache "
                           f"folder here, or point at a local copy with {local}, or "
                           + ("use the offline prior: --prior shapes" if prior else "start from a random ball: "
                              "--set init.kind=ball"))
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return LodsgsError(f"cannot get diffusion model {repo_id!r} from the Hugging Face Hub ({first}); retry, or "
                       f"point at a local copy with {local}")


def folder_size(path: str | Path) -> int:
    """Bytes of the files under ``path``, through the cache's symlinks to its blobs."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def human_size(n: int) -> str:
    """Bytes as GB (or MB under one GB)."""
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def cached_priors() -> list[tuple[str, str, str | None]]:
    """(short name or id, hub id, local snapshot or None) for every known Stable Diffusion prior and legacy id."""
    rows = [(name, repo, cached(repo)) for name, repo in (("sd21", SD21), ("sd15", SD15))]
    return rows + [(repo, repo, cached(repo)) for repo in LEGACY]


def prior_table() -> str:
    """``lodsgs prior list``: every named prior and whether its weights are here."""
    try:
        lines = [f"{'shapes':52s} shipped: {resolve_model('shapes')}"]
    except LodsgsError as e:
        lines = [f"{'shapes':52s} unavailable: {e}"]
    for name, repo, folder in cached_priors():
        label = f"{name} ({repo})" if name != repo else f"{repo} (legacy id)"
        if folder:
            lines.append(f"{label:52s} cached, {human_size(folder_size(folder))}: {folder}")
        elif name == repo:
            lines.append(f"{label:52s} not cached (its mirror is used)")
        else:
            lines.append(f"{label:52s} not cached: `lodsgs prior download {name}`")
    folder = cached(SHAP_E, pattern_sets=[SHAP_E_PATTERNS])
    label = f"shap-e ({SHAP_E}, the shap-e start)"
    lines.append(f"{label:52s} " + (f"cached, {human_size(folder_size(folder))}: {folder}" if folder
                                    else "not cached: `lodsgs prior download shap-e`"))
    return "\n".join(lines + [f"Hugging Face cache: {cache_dir()}"])


def download_prior(name: str, revision: str = "", fp16: bool | None = None, to: Path | None = None) -> str:
    """``lodsgs prior download``: a named prior or hub id into the cache (or the folder ``to``); its size and
    folder as one line. fp16 None: the fp16 files on a CUDA machine. ``shap-e``: the Shap-E start's pipeline
    (its own files, SHAP_E_PATTERNS)."""
    if name in ("shap-e", SHAP_E):
        folder = download(SHAP_E, revision or None, to=str(to) if to else None, patterns=SHAP_E_PATTERNS,
                          setting="init.shap_e_model")
        return f"{SHAP_E}: {human_size(folder_size(folder))} in {folder}"
    model = resolve_model(name)
    if name == "shapes" or model.startswith(("/", ".", "~")) or model.count("/") > 1 or Path(model).exists():
        raise LodsgsError(f"{name!r} is not a hub id; `prior download` takes sd21, sd15, shap-e or an owner/name "
                          "hub id")
    repo = LEGACY.get(model, model)
    if fp16 is None:
        import torch
        fp16 = torch.cuda.is_available()
    folder = download(repo, revision or None, fp16, str(to) if to else None)
    return f"{repo}: {human_size(folder_size(folder))} in {folder}"
