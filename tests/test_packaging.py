"""The one packaging test: the sdist carries the fused kernel's sources, the wheel built from that sdist ships
them and the presets, and the wheel installed on its own finds both (every preset loads by name, nvcc compiles
the kernel it ships)."""

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KERNEL = {p.name for p in (ROOT / "cuda_ext").iterdir() if p.suffix in (".cpp", ".cu")}


@pytest.mark.slow
def test_sdist_then_wheel_contains_the_kernel_sources(tmp_path):
    src = shutil.copytree(ROOT, tmp_path / "src", ignore=shutil.ignore_patterns(
        ".git", "runs", "__pycache__", "*.egg-info", "build", ".pytest_cache", ".ruff_cache", ".benchmarks"))
    # `python -m build` makes the sdist, then the wheel from that sdist (not from the tree)
    done = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path / "dist"),
                           str(src)], capture_output=True, text=True)  # needs build and wheel (the dev extra)
    assert done.returncode == 0, done.stderr[-2000:]
    sdist, = (tmp_path / "dist").glob("*.tar.gz")
    wheel, = (tmp_path / "dist").glob("*.whl")
    with tarfile.open(sdist) as tar:
        in_sdist = {Path(n).name for n in tar.getnames() if "/cuda_ext/" in n}
    with zipfile.ZipFile(wheel) as whl:
        in_wheel = {Path(n).name for n in whl.namelist() if n.startswith("lodsgs/_cuda/")}
    assert KERNEL == {"binding.cpp", "guidance_kernel.cu"}
    assert KERNEL <= in_sdist and KERNEL <= in_wheel
    with zipfile.ZipFile(wheel) as whl:
        presets = sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))
        assert {f"lodsgs/configs/{n}.yaml" for n in presets} <= set(whl.namelist())
    site = tmp_path / "site"  # the installed wheel alone on PYTHONPATH shadows the checkout's editable install
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    code = ("import sys; from lodsgs.config import PRESET_DIR, load_config, presets; "
            "from lodsgs.prior.fused import cuda_sources; "
            "print(PRESET_DIR); print(*presets()); [load_config(n) for n in sys.argv[1:]]; print(cuda_sources()[1])")
    result = subprocess.run([sys.executable, "-c", code, *presets], capture_output=True, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(site)}, timeout=300)
    assert result.returncode == 0, result.stderr
    found, listed, kernel = result.stdout.splitlines()
    assert found == str(site / "lodsgs" / "configs") and listed.split() == presets
    assert kernel.startswith(str(site)) and kernel.endswith("lodsgs/_cuda/guidance_kernel.cu"), kernel
    if shutil.which("nvcc"):
        compiled = subprocess.run(["nvcc", "-c", kernel, "-o", str(tmp_path / "k.o"), "-arch=sm_80"],
                                  capture_output=True, text=True, timeout=300)
        assert compiled.returncode == 0, compiled.stderr
