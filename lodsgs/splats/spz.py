"""Niantic ``.spz`` version 2: gzip of a 16-byte header and struct-of-arrays sections, about 5x smaller than
the ``.ply``. Version 2 is the one both Spark and GaussianSplats3D read (v3 only Spark, v4 neither).

Layout from the public format description (nianticlabs/spz README and ``src/cc/load-spz.cc``):
header ``<IIIBBBB`` = magic "NGSP", version, count, SH degree, fractional bits, flags, reserved; then
positions (24-bit fixed point, 3 B each), alphas (1 B), colours (3 B, DC coefficient x 0.15·255 + 127.5),
log-scales (3 B, (s + 10)·16), rotations (3 B: x, y, z of the unit quaternion with w >= 0) and SH
(coefficient-major, RGB inner, c·128 + 128). Written in the same y-down file convention as the ``.ply``.

Round-trip error (decode(encode(x)) - x), from the quantization steps: position ≤ 2^-13 ≈ 1.2e-4 world
units (|x| < 2048), opacity ≤ 1/510 after the sigmoid, colour ≤ 0.0037 in rgb, log-scale ≤ 1/32 (3% of
the scale, log-scale in [-10, 5.9]), quaternion x/y/z ≤ 1/255 each and w, rebuilt from them, ≤
√(2√3/255 + 3/255²) ≈ 0.117 (reached only near w = 0: turns of about 180°), SH bands ≤ 1/256 (|c| < 1).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from lodsgs.errors import LodsgsError
from lodsgs.splats.convention import check_splats, file_params, unflip_yz, write_atomic
from lodsgs.splats.model import Splats, num_sh_bases

MAGIC, VERSION, FRACTIONAL_BITS = 0x5053474E, 2, 12
HEADER = struct.Struct("<IIIBBBB")
COLOR_SCALE = 0.15 * 255.0


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def encode_spz(splats: Splats, path: Path | str = "the .spz file") -> bytes:
    """The gzip-compressed v2 stream of ``splats`` (gzip mtime 0: the same splats give the same bytes)."""
    p = {k: v.numpy().astype(np.float64) for k, v in file_params(splats, path).items()}
    n = splats.num
    limit = 2 ** (23 - FRACTIONAL_BITS)  # 24-bit fixed point: checked on the floats, before any integer overflows
    if np.abs(p["means"]).max(initial=0) >= limit:
        raise LodsgsError(f"cannot write {str(path)!r}: .spz positions must lie within ±{limit} units (the largest "
                          f"is {np.abs(p['means']).max():.3g}); export .ply or .splat instead")
    fixed = np.round(p["means"] * (1 << FRACTIONAL_BITS)).astype(np.int64)
    positions = np.stack([(fixed >> shift) & 0xFF for shift in (0, 8, 16)], -1).astype(np.uint8)
    alphas = _u8(255.0 / (1.0 + np.exp(-p["opacities"])))
    colors = _u8(p["sh0"][:, 0] * COLOR_SCALE + 127.5)
    scales = _u8((p["scales"] + 10.0) * 16.0)
    q = p["quats"] / np.linalg.norm(p["quats"], axis=1, keepdims=True)
    q = q * np.where(q[:, :1] < 0, -1.0, 1.0)  # w >= 0, so the decoder can rebuild it from x, y, z
    rotations = _u8(q[:, 1:] * 127.5 + 127.5)
    sh = _u8(p["shN"].reshape(n, -1) * 128.0 + 128.0)  # [N, K, 3] is already coefficient-major, RGB inner
    header = HEADER.pack(MAGIC, VERSION, n, splats.sh_degree, FRACTIONAL_BITS, 0, 0)
    body = b"".join(a.tobytes() for a in (positions, alphas, colors, scales, rotations, sh))
    return gzip.compress(header + body, mtime=0)


def write_spz(splats: Splats, path: Path | str) -> None:
    data = encode_spz(splats, path)
    write_atomic(path, lambda f: Path(f).write_bytes(data))


MAX_SPZ_GAUSSIANS = 10_000_000  # a header count above this is a damaged or hostile file (0.2-0.6 GB inflated)


def read_spz(path: Path | str) -> Splats:
    """Decode a v2 ``.spz`` (v1's float16 positions are not supported) back to splats in lodsgs's y-up world.
    The stream is inflated no further than its header's count says it holds, so a gzip bomb costs nothing."""
    path = Path(path)
    if not path.is_file():
        raise LodsgsError(f"cannot read {str(path)!r}: no such file")
    try:
        with gzip.open(path, "rb") as f:
            head = f.read(HEADER.size)
            n, degree, frac_bits, sizes = _header(path, head)
            raw = head + f.read(sum(sizes) + 1)  # one byte more than declared: a longer stream is refused
    except (OSError, EOFError, zlib.error):
        raise LodsgsError(f"cannot read {str(path)!r}: not a gzip stream, or a truncated one (an .spz of "
                          "version 4?)") from None
    if len(raw) != HEADER.size + sum(sizes):
        raise LodsgsError(f"cannot read {str(path)!r}: its stream does not hold the {n} splats of SH degree "
                          f"{degree} its header declares")
    sections, offset = [], HEADER.size
    for size in sizes:
        sections.append(np.frombuffer(raw, np.uint8, size, offset).astype(np.float64))
        offset += size
    pos, alpha, color, scale, rot, sh = sections
    k = num_sh_bases(degree) - 1
    b = pos.reshape(n, 3, 3)
    fixed = b[..., 0] + b[..., 1] * 256 + b[..., 2] * 65536
    fixed = np.where(fixed >= 1 << 23, fixed - (1 << 24), fixed)  # 24-bit two's complement
    xyz = rot.reshape(n, 3) / 127.5 - 1.0
    w = np.sqrt(np.clip(1.0 - (xyz**2).sum(-1, keepdims=True), 0.0, 1.0))
    a = np.clip(alpha / 255.0, 0.5 / 255, 1 - 0.5 / 255)
    params = {
        "means": fixed / (1 << frac_bits),
        "scales": scale.reshape(n, 3) / 16.0 - 10.0,
        "quats": np.concatenate([w, xyz], -1),
        "opacities": np.log(a / (1 - a)),
        "sh0": ((color.reshape(n, 3) - 127.5) / COLOR_SCALE)[:, None, :],
        "shN": (sh.reshape(n, k, 3) - 128.0) / 128.0,
    }
    params = {key: torch.from_numpy(value.astype(np.float32)) for key, value in params.items()}
    check_splats(params, path)
    return Splats(unflip_yz(params), sh_degree=degree)


def _header(path: Path, head: bytes) -> tuple[int, int, int, tuple[int, ...]]:
    """(count, SH degree, fractional bits, section sizes) from a v2 header, each field checked in one line."""
    if len(head) < HEADER.size:
        raise LodsgsError(f"cannot read {str(path)!r}: too short for an .spz header")
    magic, version, n, degree, frac_bits, _, _ = HEADER.unpack_from(head)
    if magic != MAGIC or version != VERSION or degree > 3:
        raise LodsgsError(f"cannot read {str(path)!r}: not an .spz of version 2 (magic {magic:#x}, "
                          f"version {version}, SH degree {degree})")
    if n > MAX_SPZ_GAUSSIANS:
        raise LodsgsError(f"cannot read {str(path)!r}: its header declares {n} Gaussians, more than the "
                          f"{MAX_SPZ_GAUSSIANS:,} lodsgs reads (a damaged file?)")
    k = num_sh_bases(degree) - 1
    return n, degree, frac_bits, (9 * n, n, 3 * n, 3 * n, 3 * n, 3 * k * n)
