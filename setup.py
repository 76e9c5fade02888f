"""Ship the fused kernel's sources inside the package: the top-level ``cuda_ext/`` stays the one source of
truth, and every build (wheel, sdist install) copies it to ``lodsgs/_cuda/``, where an installed lodsgs
finds it and builds the kernel on first use. Everything else is declared in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithKernel(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "lodsgs" / "_cuda"
        target.mkdir(parents=True, exist_ok=True)
        for source in (ROOT / "cuda_ext").glob("*.c*"):  # binding.cpp, guidance_kernel.cu
            shutil.copy2(source, target / source.name)


setup(cmdclass={"build_py": BuildPyWithKernel})
