"""lodsgs: text-to-3D Gaussian splatting under a diffusion prior with LODS.

``lodsgs.generate(prompt, ...)``, ``lodsgs.image(prompt, ...)`` and ``lodsgs.edit(picture, ...)`` return their
results in memory (docs/api.md); they are imported on first use, so ``import lodsgs`` loads no torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["generate", "image", "edit", "load_config"]


def __getattr__(name: str) -> Any:
    if name in ("generate", "image", "edit"):
        from lodsgs import api
        return getattr(api, name)
    if name == "load_config":
        from lodsgs.config import load_config
        return load_config
    raise AttributeError(f"module 'lodsgs' has no attribute {name!r}")
