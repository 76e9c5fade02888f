"""Reading a picture the user gives (a reference for image-to-3D, an image to edit): every PIL mode turned into
RGB or RGBA explicitly, so CMYK, 16-bit grey, grey + alpha and palettes with transparency read as what they show,
and anything else is refused by name in one line."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from lodsgs.errors import LodsgsError

TO_RGB = {"1", "L", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"}  # converted by PIL to what they show
TO_RGBA = {"LA", "La", "PA", "RGBa"}  # with an alpha channel (premultiplied ones included)
MAX_PIXELS = 64_000_000  # a picture beyond this is a decompression bomb, not a reference


def read_picture(path: Path, what: str = "image") -> np.ndarray:
    """The picture at ``path`` as float32 [H,W,3] (RGB) or [H,W,4] (RGBA) in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if path.is_dir():
        raise LodsgsError(f"{what} {str(path)!r} is a folder; give a picture file (PNG or JPEG)")
    if not path.is_file():
        raise LodsgsError(f"{what} {str(path)!r} not found; give a picture file (PNG or JPEG)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise LodsgsError(f"{what} {str(path)!r} is {img.width}×{img.height} pixels, more than the "
                                      f"{MAX_PIXELS:,} lodsgs reads; scale it down")
                img.load()
                return as_array(img, path, what)
    except LodsgsError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise LodsgsError(f"cannot read {what} {str(path)!r} ({first}); give a PNG or JPEG file") from None


def as_array(img, path: Path, what: str) -> np.ndarray:
    """One PIL image as float32 RGB or RGBA in [0, 1], by its mode."""
    mode = img.mode
    if mode == "P":
        img, mode = img.convert("RGBA" if "transparency" in img.info else "RGB"), "converted"
    elif mode in TO_RGB:
        img, mode = img.convert("RGB"), "converted"
    elif mode in TO_RGBA:
        img, mode = img.convert("RGBA"), "converted"
    if mode.startswith("I") or mode == "F":  # 16- or 32-bit grey (16-bit PNGs): values up to 65535, or floats
        grey = np.asarray(img, dtype=np.float32)
        grey = np.clip(grey / (65535.0 if mode != "F" else 1.0), 0.0, 1.0)
        return np.repeat(grey[..., None], 3, -1)
    if img.mode not in ("RGB", "RGBA"):
        raise LodsgsError(f"{what} {str(path)!r} is a {img.mode} picture, which lodsgs does not read; save it as "
                          "an RGB or RGBA PNG")
    return np.asarray(img, dtype=np.float32) / 255.0
