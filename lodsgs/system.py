"""``lodsgs info --system``: what this machine can run (torch and CUDA, gsplat's CUDA build, nvcc, the fused
kernel, library versions), so a GPU user learns what falls back to the CPU path before a long run."""

from __future__ import annotations

import importlib.metadata
import platform
import shutil
import subprocess


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _nvcc() -> str:
    path = shutil.which("nvcc")
    if path is None:
        return "not found (the fused kernel and gsplat's CUDA build need it on a GPU machine)"
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
        release = next((line.split("release")[-1].strip() for line in out.splitlines() if "release" in line), "")
    except (OSError, subprocess.SubprocessError):
        release = "version unknown"
    return f"{path} ({release})"


def system_report() -> dict[str, str]:
    """One line per component. CUDA builds are only tried on a machine with a CUDA GPU (elsewhere they cannot
    load, and gsplat would try to compile)."""
    import torch

    from lodsgs.prior.fused import cuda_sources, load_extension

    cuda = torch.cuda.is_available()
    report = {
        "python": platform.python_version(),
        "torch": f"{torch.__version__} (CUDA build: {torch.version.cuda or 'none'})",
        "CUDA GPU": torch.cuda.get_device_name(0) if cuda else "none: generation runs on the CPU path",
        "nvcc": _nvcc(),
    }
    sources = cuda_sources()
    kernel = f"sources in {sources[0].parent}" if sources else "sources missing (reinstall lodsgs)"
    if cuda and sources:
        kernel += "; built and loaded" if load_extension() is not None else "; build FAILED: PyTorch reference used"
    elif sources:
        kernel += "; builds on first use on a CUDA GPU"
    report["fused guidance kernel"] = kernel
    gsplat = _version("gsplat")
    if cuda:
        try:
            from gsplat.cuda._backend import _C
            gsplat += "; CUDA rasterizer loaded" if _C is not None else "; CUDA rasterizer NOT built"
        except Exception as e:  # a failed JIT build
            gsplat += f"; CUDA rasterizer failed to build ({type(e).__name__})"
    else:
        gsplat += "; not used without a CUDA GPU (lodsgs's own CPU rasterizer renders)"
    report["gsplat"] = gsplat
    for package in ("diffusers", "transformers", "peft", "huggingface_hub", "plyfile"):
        report[package] = _version(package)
    return report
