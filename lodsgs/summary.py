"""What ``lodsgs info`` and ``lodsgs render`` read: a run folder (its metrics and log), a splat file, or a mesh."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lodsgs.config import Config, load_config
from lodsgs.errors import LodsgsError


def must_exist(path: Path) -> None:
    """A missing path is "no such file", not a complaint about its format."""
    if not path.exists():
        raise LodsgsError(f"no such file or folder: {str(path)!r}; give a run folder, a splat file (.ply, .splat, "
                          ".spz, a glTF splats .glb) or a mesh (.glb, .obj)")


def describe(path: Path) -> str:
    """A summary of a run folder (metrics.json, the log's summary), a mesh, or a splat file."""
    must_exist(path)
    if path.is_dir():
        return describe_run(path)
    if is_mesh_file(path):
        from lodsgs.splats.mesh import load_mesh, mesh_summary
        m = mesh_summary(load_mesh(path))
        genus = f", genus {m['genus']}" if m["genus"] is not None else ""
        return (f"{path}: mesh, {m['vertices']} vertices, {m['faces']} faces, {m['pieces']} piece(s), "
                f"{'watertight' if m['watertight'] else 'not watertight'}, Euler number {m['euler']}{genus}, "
                f"{colours(m)}, bounds {m['bounds'][0]} .. "
                f"{m['bounds'][1]} (y-up)")
    from lodsgs.splats.io import load_splats
    splats = load_splats(path)
    lo, hi = splats.means.min(0).values.tolist(), splats.means.max(0).values.tolist()
    return (f"{path}: {splats.num} Gaussians, SH degree {splats.sh_degree}, "
            f"bounds {[round(v, 3) for v in lo]} .. {[round(v, 3) for v in hi]} (y-up)")


def colours(m: dict) -> str:
    """How a mesh summary's mesh is coloured: its texture's size, vertex colours, or neither."""
    if m["texture"] is not None:
        return f"texture {m['texture'][0]}x{m['texture'][1]}"
    return "vertex colours" if m["colours"] else "no vertex colours"


def describe_run(path: Path) -> str:
    """A run folder's metrics.json as indented JSON (or whether it is resumable), then its log's summary."""
    metrics, lines = path / "metrics.json", []
    if metrics.exists():
        try:
            lines.append(json.dumps(json.loads(metrics.read_text()), indent=2))
        except ValueError:
            raise LodsgsError(f"{str(metrics)!r} is not valid JSON (a damaged run folder?); rerun the run with "
                              "--overwrite, or delete the file") from None
    else:
        state = "unfinished (resumable)" if (path / "checkpoints" / "last.pt").exists() else "empty"
        lines.append(f"{path}: no metrics.json; run is {state}")
    if (path / "log.jsonl").exists():
        from lodsgs.runlog import format_summary, summarize
        lines.append(format_summary(summarize(path / "log.jsonl")))
    return "\n".join(lines)


def is_mesh_file(path: Path) -> bool:
    """A .glb without KHR_gaussian_splatting (with it, it holds splats), a .gltf or .obj, or a .ply with a face
    element (a splat .ply has vertices only)."""
    suffix = path.suffix.lower()
    if suffix == ".glb":
        from lodsgs.splats.gltf import is_gltf_splats
        return not is_gltf_splats(path)
    if suffix in (".gltf", ".obj"):
        return True
    if suffix != ".ply" or not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(4096).split(b"end_header")[0]
    return b"element face" in head


def load_run(path: Path) -> tuple[Config, Any, Path]:
    """(settings, splats, folder) of a run folder (its config.yaml and splats.ply) or of a splat file (the
    default settings, the file's folder)."""
    must_exist(path)
    from lodsgs.splats.io import load_splats
    if path.is_dir():
        ply, cfg_file = path / "splats.ply", path / "config.yaml"
        if not ply.exists():
            raise LodsgsError(f"{str(path)!r} has no splats.ply; is it a finished run folder?")
        cfg = load_config(str(cfg_file)) if cfg_file.exists() else Config()
        return cfg, load_splats(ply), path
    return Config(), load_splats(path), path.parent


def render_turntable(target: Path, frames: int = 36, size: int = 256, out: Path | None = None) -> Path:
    """``lodsgs render``: a turntable GIF (and MP4 when ffmpeg is there) of a run folder or a splat file, at the
    run's eval camera; written beside it unless ``out``. Returns the GIF's path."""
    if frames < 1 or size < 8 or frames > 3600 or size > 4096:
        raise LodsgsError(f"--frames must be 1..3600 and --size 8..4096 pixels; got --frames {frames} --size {size}")
    if out is not None and out.suffix.lower() != ".gif":
        raise LodsgsError(f"--out {str(out)!r} must end in .gif")
    cfg, splats, folder = load_run(target)
    from lodsgs.media import save_gif, save_mp4, turntable
    gif = out or folder / "turntable.gif"
    images = turntable(splats, cfg.camera, frames, size, cfg.render.background)
    save_gif(images, gif)
    save_mp4(images, gif.with_suffix(".mp4"))
    return gif
