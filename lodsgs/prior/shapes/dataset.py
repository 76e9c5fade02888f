"""Multi-view renders of every shapes-world caption, the training set of the shapes prior."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lodsgs.cameras import sample_cameras, view_labels
from lodsgs.prior.shapes import world
from lodsgs.splats.render import render


@dataclass
class DatasetConfig:
    views: int = 96  # per caption
    size: int = 32  # the prior's resolution
    supersample: int = 2  # render at size × this, then average-pool (antialiasing)
    seed: int = 0


@torch.no_grad()
def build_dataset(cfg: DatasetConfig, caption_list: list[str] | None = None) -> dict:
    """uint8 images [M,size,size,3], caption index [M], view label [M] and the caption list."""
    caption_list = caption_list or world.captions()
    cam_cfg = world.SHAPES_CAMERAS
    big = cfg.size * cfg.supersample
    g = torch.Generator().manual_seed(cfg.seed)
    images, caption_ids, labels = [], [], []
    for i, caption in enumerate(caption_list):
        splats = world.build_object(caption)
        for start in range(0, cfg.views, 8):
            n = min(8, cfg.views - start)
            cams = sample_cameras(cam_cfg, n, g)
            cams.width = cams.height = big
            cams.Ks = cams.Ks * cfg.supersample
            cams.Ks[:, 2, 2] = 1.0
            rgb = render(splats, cams, background=world.BACKGROUND).rgb.permute(0, 3, 1, 2)
            small = torch.nn.functional.avg_pool2d(rgb, cfg.supersample)
            images.append((small.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1))
            caption_ids += [i] * n
            labels += view_labels(cams, cam_cfg)
    return {"images": torch.cat(images), "caption_ids": torch.tensor(caption_ids), "labels": labels,
            "captions": caption_list}


def load_or_build(path: Path, cfg: DatasetConfig) -> dict:
    """Cached dataset (rebuilt when the file is missing or was made with other settings)."""
    if path.exists():
        data = torch.load(path, weights_only=True)
        if data.get("config") == cfg.__dict__ and data["captions"] == world.captions():
            return data
    data = build_dataset(cfg)
    data["config"] = dict(cfg.__dict__)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return data


def caption_text(caption: str, label: str, with_view: bool) -> str:
    """The training text: the caption, with the view suffix generation appends when asked."""
    return f"{caption}, {label} view" if with_view else caption
