"""Turntable GIF (and MP4 when ffmpeg is present) and a preview grid of views."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch

from lodsgs.cameras import CameraConfig, eval_cameras
from lodsgs.files import atomic_path
from lodsgs.splats.model import Splats
from lodsgs.splats.render import render

TURNTABLE_BATCH = 12  # views rendered in one call


@torch.no_grad()
def turntable(splats: Splats, cam: CameraConfig, frames: int, size: int,
              background: tuple[float, float, float]) -> np.ndarray:
    """``frames`` views around the object at the eval elevation, uint8 [F,H,W,3], rendered ``TURNTABLE_BATCH`` views
    a call (one call per view spends as long again in per-call work on a CPU)."""
    cams = eval_cameras(cam, frames, width=size, height=size).to(splats.device)
    bg = torch.tensor(background, dtype=torch.float32, device=splats.device)
    images = [render(splats, cams[list(range(i, min(i + TURNTABLE_BATCH, frames)))], background=bg).rgb
              for i in range(0, frames, TURNTABLE_BATCH)]
    return (torch.cat(images).clamp(0, 1) * 255).round().byte().cpu().numpy()


def grid(images: np.ndarray, cols: int = 4) -> np.ndarray:
    """Tile [F,H,W,3] images into one image, ``cols`` per row."""
    f, h, w, c = images.shape
    rows = -(-f // cols)
    canvas = np.full((rows * h, cols * w, c), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, q = divmod(i, cols)
        canvas[r * h:(r + 1) * h, q * w:(q + 1) * w] = img
    return canvas


def save_mp4(frames: np.ndarray, path: Path, fps: int = 12) -> bool:
    """Encode with the ffmpeg binary if it is installed; returns whether a file was written."""
    ffmpeg = shutil.which("ffmpeg")
    if not ffmpeg:
        return False
    f, h, w, _ = frames.shape
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")  # ffmpeg infers the format from the suffix
    cmd = [ffmpeg, "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
           "-r", str(fps), "-i", "-", "-pix_fmt", "yuv420p", "-vcodec", "libx264", str(tmp)]
    result = subprocess.run(cmd, input=frames.tobytes(), capture_output=True)
    if result.returncode != 0:
        tmp.unlink(missing_ok=True)
        return False
    os.replace(tmp, path)
    return True


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """An image tensor in [0, 1] as uint8 numpy."""
    return (image.detach().clamp(0, 1) * 255).round().byte().cpu().numpy()


def with_inset(frames: np.ndarray, inset: torch.Tensor) -> np.ndarray:
    """``frames`` [F,H,W,3] with ``inset`` [h,w,3] in [0, 1], scaled to a quarter of the width, in the top-left
    corner behind a one-pixel grey frame (image-to-3D: the reference beside the result)."""
    side = max(frames.shape[2] // 4, 8)
    small = torch.nn.functional.interpolate(inset.permute(2, 0, 1)[None].float().cpu(), size=(side, side),
                                            mode="bilinear", antialias=True, align_corners=False)[0].permute(1, 2, 0)
    out = frames.copy()
    out[:, :side + 2, :side + 2] = 128
    out[:, 1:side + 1, 1:side + 1] = to_uint8(small)
    return out


def write_media(splats: Splats, cfg, run_dir: Path, inset: torch.Tensor | None = None) -> None:
    """turntable.gif (+ .mp4) and preview.png (8 views) for a finished run; ``inset`` (the reference image of an
    image-to-3D run) is drawn into the turntable's corner."""
    frames = turntable(splats, cfg.camera, cfg.run.turntable_frames, cfg.run.turntable_size,
                       cfg.render.background)
    shown = with_inset(frames, inset) if inset is not None else frames
    save_gif(shown, run_dir / "turntable.gif")
    save_mp4(shown, run_dir / "turntable.mp4")
    step = max(len(frames) // 8, 1)
    save_png(grid(frames[::step][:8]), run_dir / "preview.png")


def save_gif(frames: np.ndarray, path: Path, fps: int = 12) -> None:
    """An endlessly looping GIF, written atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # opened here: an unwritable path fails before imageio
        imageio.mimsave(f, list(frames), format="gif", duration=1000 / fps, loop=0)


def save_png(image: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        imageio.imwrite(f, image, format="png")


def write_progress(splats: Splats, cfg, run_dir: Path, step: int) -> Path:
    """RUN_DIR/progress/step_XXXX.png: 4 views around the object at the eval camera, written atomically."""
    path = run_dir / "progress" / f"step_{step:04d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        views = turntable(splats, cfg.camera, 4, cfg.run.turntable_size, cfg.render.background)
    save_png(grid(views), path)
    return path

