"""What every splat file format shares: the y-down file convention and the atomic write.

Inside lodsgs the world is y-up (OpenGL style). Files use the INRIA/COLMAP convention (y down) that web
viewers assume (SuperSplat turns every splat 180° about z to show captures upright), so writing rotates the
scene 180° about x: p' = (x, -y, -z), q' = (0,1,0,0) ⊗ q = (-x, w, -z, y) in wxyz, and the SH coefficients of
the bands odd under (y, z) -> (-y, -z) change sign (``SH_FLIP``). Every step is a sign flip or a permutation,
so reading undoes it bit for bit. io.py (.ply, .splat) and spz.py (.spz) both import this module.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from lodsgs.errors import LodsgsError
from lodsgs.files import atomic_path
from lodsgs.splats.model import Splats

# sign of each non-DC SH basis (gsplat / 3DGS order) under the 180° rotation about x, (x, y, z) -> (x, -y, -z):
# l=1 (y, z, x); l=2 (xy, yz, 3z²-1, xz, x²-y²); l=3 (y(3x²-y²), xyz, y(5z²-1), z(5z²-3), x(5z²-1), z(x²-y²),
# x(x²-3y²)). Checked numerically against gsplat's _spherical_harmonics in tests/test_io.py.
SH_FLIP = torch.tensor([-1, -1, 1, -1, 1, 1, -1, 1, -1, 1, -1, -1, 1, -1, 1], dtype=torch.float32)

def flip_yz(params: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rotate raw splat parameters 180° about x (y-up world -> y-down file); exact sign flips only."""
    out = dict(params)
    out["means"] = params["means"] * torch.tensor([1.0, -1.0, -1.0])
    w, x, y, z = params["quats"].unbind(-1)
    out["quats"] = torch.stack([-x, w, -z, y], -1)  # (0,1,0,0) ⊗ (w,x,y,z), Hamilton product
    out["shN"] = params["shN"] * SH_FLIP[: params["shN"].shape[1], None]
    return out


def unflip_yz(params: dict[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of ``flip_yz`` (y-down file -> y-up world), bit-exact, keeping the quaternion's sign."""
    out = dict(params)
    out["means"] = params["means"] * torch.tensor([1.0, -1.0, -1.0])
    a, b, c, d = params["quats"].unbind(-1)
    out["quats"] = torch.stack([b, -a, d, -c], -1)
    out["shN"] = params["shN"] * SH_FLIP[: params["shN"].shape[1], None]
    return out

MAX_COORD = 1e6  # world units: a position beyond this is a damaged file or a diverged run, not a scene
MAX_LOG_SCALE = 30.0  # |log-scale| beyond this (a scale of 1e13 or 1e-13) is a damaged file


def check_splats(params: dict[str, Tensor], path: Path | str, doing: str = "read") -> None:
    """What every reader and writer asks of splats, as one line naming the file: at least one Gaussian, every
    value finite, positions within ±MAX_COORD and log-scales within ±MAX_LOG_SCALE."""
    where = f"cannot {doing} {str(path)!r}"
    n = len(params["means"])
    if n == 0:
        raise LodsgsError(f"{where}: it holds no Gaussians" + ("; a splat file needs at least one" if doing == "read"
                                                             else ""))
    bad = [k for k, v in params.items() if v.numel() and not torch.isfinite(v).all()]
    if bad:
        fix = "the file is damaged" if doing == "read" else "the run diverged; lower the optim.* learning rates"
        raise LodsgsError(f"{where}: its {', '.join(bad)} hold NaN or infinite values ({fix})")
    if params["means"].abs().max() > MAX_COORD:
        raise LodsgsError(f"{where}: positions reach {params['means'].abs().max().item():.3g} units, beyond the "
                          f"±{MAX_COORD:g} a scene can hold (a damaged file or a diverged run)")
    if params["scales"].abs().max() > MAX_LOG_SCALE:
        raise LodsgsError(f"{where}: Gaussian scales reach e^{params['scales'].abs().max().item():.3g}, beyond "
                          f"e^±{MAX_LOG_SCALE:g} (a damaged file or a diverged run)")


def world_params(splats: Splats, path: Path | str = "the splat file") -> dict[str, Tensor]:
    """The splats' raw parameters on the CPU, float32, in lodsgs's y-up world (glTF's axes, gltf.py); refused
    (check_splats) when they could not be read back, so nothing non-finite is ever written."""
    params = {k: v.detach().cpu().float() for k, v in splats.params.items()}
    check_splats(params, path, doing="write")
    return params


def file_params(splats: Splats, path: Path | str = "the splat file") -> dict[str, Tensor]:
    """The splats' raw parameters as a y-down file (.ply, .splat, .spz) stores them (``world_params`` flipped)."""
    return flip_yz(world_params(splats, path))


def write_atomic(path: Path | str, write) -> None:
    """Run ``write`` on a temporary name then rename (atomic), turning an unwritable destination into a one-line
    LodsgsError."""
    try:
        with atomic_path(Path(path)) as tmp:
            write(str(tmp))
    except OSError as e:
        raise LodsgsError(f"cannot write {str(path)!r}: {e.strerror or e}") from None
