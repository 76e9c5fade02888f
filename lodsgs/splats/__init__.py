"""Gaussian splats: parameters, rendering, densification and file formats."""

from lodsgs.splats.model import Splats

__all__ = ["Splats"]
