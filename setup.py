"""Ship the fused kernel's sources and the presets inside the package: the top-level ``cuda_ext/`` and
``configs/`` stay the one source of truth, and every build (wheel, sdist install) copies them to
``lodsgs/_cuda/`` and ``lodsgs/configs/``, where an installed lodsgs finds them (it builds the kernel on first
use; ``--config NAME`` reads the preset). Everything else is declared in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithKernel(build_py):
    def run(self) -> None:
        super().run()
        for folder, pattern, target in (("cuda_ext", "*.c*", "_cuda"),  # binding.cpp, guidance_kernel.cu
                                        ("configs", "*.yaml", "configs")):  # the presets
            dest = Path(self.build_lib) / "lodsgs" / target
            dest.mkdir(parents=True, exist_ok=True)
            for source in (ROOT / folder).glob(pattern):
                shutil.copy2(source, dest / source.name)


setup(cmdclass={"build_py": BuildPyWithKernel})
