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

def file_params(splats: Splats) -> dict[str, Tensor]:
    """The splats' raw parameters as a file stores them: on the CPU, float32, y down."""
    return flip_yz({k: v.detach().cpu().float() for k, v in splats.params.items()})


def write_atomic(path: Path | str, write) -> None:
    """Run ``write`` on a temporary name then rename (atomic), turning an unwritable destination into a one-line
    LodsgsError."""
    try:
        with atomic_path(Path(path)) as tmp:
            write(str(tmp))
    except OSError as e:
        raise LodsgsError(f"cannot write {str(path)!r}: {e.strerror or e}") from None
