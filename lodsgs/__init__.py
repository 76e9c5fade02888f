"""lodsgs: text-to-3D Gaussian splatting under a diffusion prior with LODS."""

__version__ = "0.1.0"
