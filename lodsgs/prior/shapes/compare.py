"""A run's turntable beside its caption's ground truth, as one GIF: `python -m lodsgs.prior.shapes.compare RUN OUT.gif`.

Both are drawn by the same renderer from the run's own turntable cameras, so what differs is the object.
"""

from __future__ import annotations

import sys
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch

from lodsgs.config import load_config
from lodsgs.media import turntable, with_inset
from lodsgs.prior.shapes import world
from lodsgs.splats.io import read_ply


def side_by_side(run_dir: Path, frames: int = 36, size: int = 128) -> np.ndarray:
    """uint8 [F,H,2W,3]: the run's splats on the left (an image run's reference inset), the ground truth of its
    prompt on the right."""
    cfg = load_config(str(run_dir / "config.yaml"))
    caption = (run_dir / "prompt.txt").read_text().strip()
    left = turntable(read_ply(run_dir / "splats.ply"), cfg.camera, frames, size, cfg.render.background)
    right = turntable(world.build_object(caption), cfg.camera, frames, size, cfg.render.background)
    if (run_dir / "reference.png").is_file():  # an image-to-3D run: its reference in the corner of the result
        left = with_inset(left, torch.from_numpy(imageio.imread(run_dir / "reference.png")[..., :3] / 255.0))
    return np.concatenate([left, right], axis=2)


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit("usage: python -m lodsgs.prior.shapes.compare RUN_DIR OUT.gif")
    frames = side_by_side(Path(argv[0]))
    imageio.mimsave(argv[1], list(frames), duration=1000 / 12, loop=0)


if __name__ == "__main__":
    main(sys.argv[1:])
