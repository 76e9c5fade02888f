"""Shap-E for the ``shap-e`` start: diffusers' ShapEPipeline (``openai/shap-e``, text300M) from the hub cache or a
folder, a mesh of the prompt, and GaussianDreamer's points around its vertices.

The official LODS 3DGS start (yangxiaofeng/LODS threestudio/systems/lods_gs.py, GaussianDreamer's recipe from
hustvl/GaussianDreamer) samples a Shap-E latent at guidance 15 with 64 Karras steps and decodes it to a mesh;
diffusers' ``ShapEPipeline`` runs the same model (Heun steps on Karras sigmas) and ``ShapERenderer.decode_to_mesh``
the same decoding (marching cubes of the SDF on a 128³ grid over [-1, 1]³, colours from the texture head at the
vertices, returned linear). Coordinates stay Shap-E's (z up); starts.py turns them y-up.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lodsgs.errors import LodsgsError

GRID = 128  # decode_to_mesh's grid (diffusers' default); tests lower it
CANDIDATES = 1_000_000  # GaussianDreamer's uniform draws in the vertices' bounding box
NEAR = 0.01  # a draw is kept within this distance of a vertex (Shap-E units)
NOISE = 0.2  # kept draws take their nearest vertex's colour + NOISE × U[0, 1) per channel
COMPONENTS = ("prior", "text_encoder", "tokenizer", "scheduler", "shap_e_renderer")
_LOADED: dict[str, object] = {}  # folder -> pipeline (on the CPU between uses): one load per process


def locate(model: str) -> str:
    """A ShapEPipeline folder: ``model`` itself when it is one (checked), else the hub id's cached or downloaded
    snapshot (lodsgs/prior/hub.py)."""
    from lodsgs.preflight import looks_like_path
    from lodsgs.prior.hub import shap_e_snapshot

    folder = Path(model).expanduser() if looks_like_path(model) else Path(shap_e_snapshot(model))
    if not folder.is_dir():
        raise LodsgsError(f"init.shap_e_model folder {model!r} does not exist; give a ShapEPipeline folder in the "
                          "diffusers layout or a hub id (openai/shap-e), or --set init.kind=ball")
    missing = [c + "/" for c in COMPONENTS if not (folder / c).is_dir()]
    if missing:
        raise LodsgsError(f"init.shap_e_model folder {str(folder)!r} has no {', '.join(missing)}: a ShapEPipeline "
                          f"folder holds {', '.join(c + '/' for c in COMPONENTS)}")
    return str(folder)


def _variant(folder: Path, component: str) -> str | None:
    """``fp16`` when a component holds only fp16 safetensors (openai/shap-e's prior and text encoder)."""
    files = [p.name for p in (folder / component).glob("*.safetensors")]
    return "fp16" if files and all(".fp16." in f for f in files) else None


def load_pipeline(folder: str):
    """The fp32 ShapEPipeline of a folder, each component read on its own: safetensors, except a renderer that
    ships only a .bin (openai/shap-e's), which diffusers reads with torch.load(weights_only=True)."""
    if folder in _LOADED:
        return _LOADED[folder]
    import transformers
    from diffusers import HeunDiscreteScheduler, PriorTransformer, ShapEPipeline
    from diffusers.pipelines.shap_e import ShapERenderer
    from huggingface_hub.errors import EntryNotFoundError
    from transformers import AutoTokenizer, CLIPTextModelWithProjection

    path, f32 = Path(folder), torch.float32
    transformers.utils.logging.disable_progress_bar()
    safe = any((path / "shap_e_renderer").glob("*.safetensors"))
    try:
        pipe = ShapEPipeline(
            prior=PriorTransformer.from_pretrained(folder, subfolder="prior", torch_dtype=f32,
                                                   variant=_variant(path, "prior"), use_safetensors=True),
            text_encoder=CLIPTextModelWithProjection.from_pretrained(
                folder, subfolder="text_encoder", torch_dtype=f32, variant=_variant(path, "text_encoder"),
                use_safetensors=True),
            tokenizer=AutoTokenizer.from_pretrained(folder, subfolder="tokenizer"),
            scheduler=HeunDiscreteScheduler.from_pretrained(folder, subfolder="scheduler"),
            shap_e_renderer=ShapERenderer.from_pretrained(folder, subfolder="shap_e_renderer", torch_dtype=f32,
                                                          variant=_variant(path, "shap_e_renderer"),
                                                          use_safetensors=safe))
    except (OSError, ValueError, EntryNotFoundError) as e:  # missing or foreign files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LodsgsError(f"cannot load Shap-E from {folder!r}: {first}; `lodsgs prior download shap-e` fetches "
                          "it, or --set init.kind=ball") from None
    pipe.set_progress_bar_config(disable=True)
    _LOADED[folder] = pipe
    return pipe


def device_for(name: str) -> torch.device:
    """run.device as a torch device (auto: CUDA when there is one)."""
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


@torch.no_grad()
def shap_e_mesh(model: str, prompt: str, guidance: float, steps: int, seed: int,
                device: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Shap-E's mesh of ``prompt``: vertices [V,3] (Shap-E's axes: z up, within [-1, 1]) and their sRGB colours
    [V,3] (the texture head's own values: diffusers returns them made linear, which is undone here)."""
    pipe, dev = load_pipeline(locate(model)), device_for(device)
    pipe.to(dev)
    try:
        generator = torch.Generator().manual_seed(seed)  # on the CPU: the same latents on every device
        latents = pipe(prompt, guidance_scale=guidance, num_inference_steps=steps, generator=generator,
                       output_type="latent").images
        mesh = pipe.shap_e_renderer.decode_to_mesh(latents[:1], dev, grid_size=GRID)
    except (RuntimeError, ValueError) as e:  # an SDF with no surface: diffusers' torch.cat of no vertices
        if isinstance(e, torch.OutOfMemoryError):
            raise
        raise LodsgsError(f"Shap-E made no mesh for {prompt!r}; try another --seed or --set init.kind=ball") from None
    finally:
        pipe.to("cpu")  # the GPU is the run's from here on
    verts = mesh.verts.float().cpu().numpy().astype(np.float64)
    linear = torch.stack([mesh.vertex_channels[c] for c in "RGB"], -1).float().cpu().numpy().astype(np.float64)
    return verts, srgb(linear)


def srgb(linear: np.ndarray) -> np.ndarray:
    """The inverse of diffusers' _convert_srgb_to_linear (IEC 61966-2-1), clipped to [0, 1]."""
    c = np.clip(linear, 0, 1)
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * c ** (1 / 2.4) - 0.055)


def near_vertex_points(verts: np.ndarray, rgb: np.ndarray, cap: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """GaussianDreamer's extra points: uniform draws in the vertices' bounding box kept when within NEAR of a
    vertex, coloured by that vertex + NOISE × U[0, 1); at most ``cap`` kept (the run's init.num: the recipe's
    1M draws keep tens of thousands, too many for a CPU run) from at most CANDIDATES draws, seeded."""
    rng = np.random.default_rng(seed)
    v = torch.tensor(verts, dtype=torch.float32)
    lo, hi = verts.min(0), verts.max(0)
    chunk = min(65536, max(256, 2**24 // len(verts)))  # draws per distance matrix: at most 16M distances
    points, colours, drawn, kept = [], [], 0, 0
    while drawn < CANDIDATES and kept < cap:
        n = min(chunk, CANDIDATES - drawn)
        draw = rng.uniform(lo, hi, size=(n, 3))
        noise = rng.random((n, 3))
        dist, nearest = torch.cdist(torch.tensor(draw, dtype=torch.float32), v).min(1)
        near = (dist < NEAR).numpy()
        points.append(draw[near])
        colours.append(rgb[nearest.numpy()[near]] + NOISE * noise[near])
        drawn, kept = drawn + n, kept + int(near.sum())
    return np.concatenate(points)[:cap], np.concatenate(colours)[:cap]
