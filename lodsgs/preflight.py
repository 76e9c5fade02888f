"""The checks that can refuse a run's inputs before anything heavy loads: the caption's words, a local prior
folder's layout, the reference picture, the --init file, the run folder. No torch and no diffusers (their
import alone takes ~3 s on a 2-core CPU), so the CLI refuses a bad input in a fraction of a second; the library's
entry points run the same checks. A run folder's name lives here too, since the folder check needs it."""

from __future__ import annotations

import hashlib
from pathlib import Path

from lodsgs.config import Config, image_digest
from lodsgs.errors import LodsgsError
from lodsgs.names import resolve_model
from lodsgs.prompts import check_prompt, slug

LAST_CHECKPOINT = Path("checkpoints") / "last.pt"


def run_name(prompt: str, seed: int, image: str = "") -> str:
    """A filesystem-safe folder name: a short slug of the prompt plus a hash of prompt, seed (and the reference
    image's content, so the same picture under another path names the same run)."""
    digest = hashlib.sha1(f"{prompt}\0{seed}{chr(0) + image_digest(image) if image else ''}".encode()).hexdigest()[:8]
    return f"{slug(prompt)}-{digest}"


def checked_run_dir(out: Path, name: str, resume: bool, overwrite: bool) -> Path:
    """``out/name``, refused in one line when --out is a file, there is nothing to resume, or a run is in the way."""
    run_dir = out / name
    ckpt = run_dir / LAST_CHECKPOINT
    if out.exists() and not out.is_dir():
        raise LodsgsError(f"--out {str(out)!r} is a file; give a folder for the run folders")
    if resume and not ckpt.exists():
        raise LodsgsError(f"nothing to resume: no checkpoint at {str(ckpt)!r}; run without --resume")
    if not resume and run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise LodsgsError(f"run folder {str(run_dir)!r} already exists; pass --resume to continue it "
                          "or --overwrite to start again")
    return run_dir


def looks_like_path(model: str) -> bool:
    """A hub id is ``owner/name``; anything with a path prefix or more than one ``/`` is meant as a folder."""
    return model.startswith(("/", ".", "~")) or model.count("/") > 1 or "\\" in model or Path(model).exists()


def check_folder(model: str) -> None:
    """A local folder must exist and hold at least ``unet/``; say so before diffusers does, less clearly."""
    folder = Path(model).expanduser()
    if not folder.is_dir():
        raise LodsgsError(f"diffusion model folder {model!r} does not exist; pass a folder in the diffusers layout "
                          "(unet/, scheduler/, text_encoder/, tokenizer/, vae/ for latent models), a hub id, "
                          "or --prior shapes")
    missing = [c for c in ("unet", "scheduler", "text_encoder", "tokenizer") if not (folder / c).is_dir()]
    if missing:
        raise LodsgsError(f"diffusion model folder {model!r} has no {', '.join(m + '/' for m in missing)}; "
                          "it needs the diffusers layout unet/, scheduler/, text_encoder/, tokenizer/ "
                          "(and vae/ for latent models)")
    pickled = [c for c in ("unet", "text_encoder", "vae") if (folder / c).is_dir()
               and not any((folder / c).glob("*.safetensors")) and any((folder / c).glob("*.bin"))]
    if pickled:  # a pickled .bin is loaded by diffusers with a warning; lodsgs reads safetensors only
        raise LodsgsError(f"diffusion model folder {model!r} has pickled .bin weights in {', '.join(pickled)} and no "
                          ".safetensors; lodsgs loads safetensors only (nothing that could run code): save the "
                          "model with diffusers' save_pretrained(safe_serialization=True)")


def check_prior(cfg: Config, *captions: str) -> None:
    """The prior a name or folder gives exists (a hub id is left to the download) and knows every caption's words
    (a closed-vocabulary prior refuses unknown words in one line)."""
    model = resolve_model(cfg.prior.model)
    if looks_like_path(model):
        check_folder(model)
    for caption in captions:
        check_prompt(caption, model, cfg.prior.model)


def check_mesh_file(path: Path | str) -> Path:
    """``path`` if it is a file, else one line naming what it is and what to give."""
    path = Path(path)
    if not path.is_file():
        raise LodsgsError(f"init.path {str(path)!r} {'is a folder' if path.is_dir() else 'not found'}; give a mesh "
                          "file (.glb, .gltf, .obj or a .ply with faces)")
    return path


def check_ply_file(path: Path | str) -> None:
    """A .ply (an --init file, a splat file to read) that is missing or does not start as a PLY does, refused in
    one line; the CLI runs it before torch loads, the PLY reader before it parses."""
    path = Path(path)
    if not path.is_file():
        raise LodsgsError(f"cannot read {str(path)!r}: no such file; give a .ply (splats or a point cloud)")
    with open(path, "rb") as f:
        if f.read(4).rstrip(b"\r\n") != b"ply":
            raise LodsgsError(f"cannot read {str(path)!r}: not a valid PLY file (line 1: expected 'ply')")


def check_generate(prompt: str, cfg: Config, out: Path | None, resume: bool = False, overwrite: bool = False
                   ) -> Path | None:
    """Every refusal of a 3D run that needs no torch, in the order a user fixes them: the caption and prior, the
    reference picture (read whole: a corrupt or bombed file is refused here), the --init file, the run folder.
    Returns the run folder (None without ``out``); creates nothing."""
    check_prior(cfg, prompt)
    if cfg.image.path:
        from lodsgs.pictures import read_picture
        read_picture(Path(cfg.image.path), "reference image")
    if cfg.init.kind == "mesh":
        check_mesh_file(cfg.init.path)
    if cfg.init.kind == "ply" and cfg.init.path:
        check_ply_file(cfg.init.path)
    if out is None:
        return None
    return checked_run_dir(Path(out), run_name(prompt, cfg.run.seed, cfg.image.path), resume, overwrite)
