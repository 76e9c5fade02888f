"""The source distribution carries the fused kernel's sources, and a wheel built from it ships them."""

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
