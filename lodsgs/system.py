"""``lodsgs info --system``: what this machine can run (torch and CUDA, nvcc, library versions) and which
rasterizer and guidance op a run here uses and why, so a GPU user learns before a long run what falls back to
lodsgs's PyTorch code (and how to fix it)."""

from __future__ import annotations

import importlib.metadata
import platform
import shutil
import subprocess

from lodsgs.cuda_fallback import cuda_fix


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


def rasterizer_line(cuda: bool) -> str:
    """Which rasterizer a run on this machine uses and why. gsplat's CUDA build is only tried with a CUDA GPU
    (elsewhere it cannot load, and gsplat would spend minutes compiling)."""
    if not cuda:
        return "lodsgs's PyTorch rasterizer (raster_torch) on the CPU (no CUDA GPU: gsplat's kernels are CUDA only)"
    from lodsgs.splats.render import cuda_rasterizer

    choice = cuda_rasterizer(announce=False)
    if choice.name == "gsplat":
        return "gsplat's CUDA rasterizer (loaded, and it rendered a test Gaussian)"
    return f"lodsgs's PyTorch rasterizer (raster_torch) on the GPU: {choice.why}; to fix: {cuda_fix(gsplat=True)}"


def system_report() -> dict[str, str]:
    """One line per component: versions, the GPU, nvcc, and which rasterizer and guidance op a run uses and
    why. CUDA builds are only tried on a machine with a CUDA GPU."""
    import torch

    from lodsgs.prior.fused import cuda_sources, guidance_op

    cuda = torch.cuda.is_available()
    report = {
        "python": platform.python_version(),
        "torch": f"{torch.__version__} (CUDA build: {torch.version.cuda or 'none'})",
        "CUDA GPU": torch.cuda.get_device_name(0) if cuda else "none: generation runs on the CPU path",
        "nvcc": _nvcc(),
    }
    sources = cuda_sources()
    report["fused guidance kernel"] = f"sources in {sources[0].parent}" if sources else \
        "sources missing (reinstall lodsgs)"
    op, why = guidance_op(cuda)
    fallback = cuda and op != "fused CUDA kernel"
    report["guidance op"] = f"{op} ({why}{'; to fix: ' + cuda_fix(gsplat=False) if fallback else ''})"
    report["gsplat"] = _version("gsplat")
    report["rasterizer"] = rasterizer_line(cuda)
    for package in ("diffusers", "transformers", "peft", "huggingface_hub", "plyfile"):
        report[package] = _version(package)
    return report
