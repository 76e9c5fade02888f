"""Niantic ``.spz``: written as version 4 (zstd, the reference library's current version) or, on request, version 2
(gzip, the one older web viewers read); read as version 2, 3 or 4. About 5x smaller than the ``.ply``.

Layout from the public reference, nianticlabs/spz: its README ("File Format") and ``src/cc/load-spz.cc``
(``NgspFileHeader``, ``saveSpz``, ``decompressNgspStreams``, ``packQuaternionSmallestThree``, ``quantizeSH``), with
``src/cc/splat-utils.h`` (``unpackQuaternionSmallestThree``, ``unquantizeSH``). Every version stores the same six
per-attribute byte arrays, in this order: positions (24-bit fixed point, 3 B each), alphas (1 B, sigmoid x 255),
colours (3 B, DC coefficient x 0.15·255 + 127.5), log-scales (3 B, (s + 10)·16), rotations, SH (coefficient-major,
RGB inner, c·128 + 128).

- v2 and v3: gzip of a 16-byte header ``<IIIBBBB`` (magic "NGSP", version, count, SH degree, fractional bits, flags,
  reserved) and the six arrays back to back. v2 rotations: x, y, z of the unit quaternion with w >= 0 (3 B).
- v3 and v4 rotations, "smallest three" (4 B, one little-endian u32): bits 30-31 the index (in x, y, z, w order) of
  the largest-magnitude component, which is dropped and rebuilt as sqrt(1 - the others²); then the other three in
  index order, 10 bits each (the first highest): a sign bit, then 9 bits of |c| / √½ · 511, the quaternion negated
  first so the dropped component is positive.
- v4: plaintext 32-byte header ``<IIIBBBBI12x`` (magic, version 4, count, SH degree, fractional bits, flags,
  number of streams, byte offset of the table of contents, 12 reserved zero bytes); vendor extension records
  between byte 32 and that offset when flags & 2 (skipped here, as the reference does when built without
  extensions); the table of contents, one ``<QQ`` (compressed, uncompressed size) per stream; then each array
  that is not empty as its own zstd frame (SH degree 0 leaves 5 streams). SH bytes are rounded to multiples of 8
  for band 1 and of 16 for bands 2-3 (5 and 4 bits: the reference's default ``sh1Bits`` / ``shRestBits``; its
  "bucket centres", of which 128, a zero coefficient, is one); a reader needs nothing to undo it.
lodsgs writes v2 with 8-bit SH (as it always has). Both versions hold the y-down values of lodsgs's ``.ply``
unchanged, as the reference's ``cli_tools/src/ply_to_spz.cpp`` does with a .ply (it names no coordinate system); the
README's default for .spz is RUB (y up). One viewer fix serves every file lodsgs writes (docs/formats.md).

Round-trip error (decode(encode(x)) - x), from the quantization steps, for both versions: position ≤ 2^-13 ≈ 1.2e-4
world units (|x| < 2048), opacity ≤ 1/510 after the sigmoid, colour ≤ 0.0037 in rgb (|DC| ≤ 3.3), log-scale ≤ 1/32
(log-scale in [-10, 5.9]). Rotations, per component of the unit quaternion, up to its sign: v2 x/y/z ≤ 1/255 and w,
rebuilt from them, ≤ √(2√3/255 + 3/255²) ≈ 0.117 (reached only near w = 0: turns of about 180°); v4 the three stored
≤ δ = √½/(2·511) ≈ 6.9e-4 (half a step) and the rebuilt largest ≤ 3δ(1 + δ)/(1 - 6δ(1 + δ)) ≈ 2.09e-3
(ROT_V4_BOUNDS: |L'² - L²| ≤ 2δ·Σ|s| + 3δ² with Σ|s| ≤ √3·√(1 - L²), worst at the smallest largest, L = 1/2;
reached within 2%: tests/test_spz.py builds the case). SH: v2 ≤ 1/256 for |c| ≤ 127.5/128 (beyond, 128·c + 128 is
clamped to 255); v4 (|c| ≤ 1) band 1 ≤ 4.5/128 ≈ 0.035 and bands 2-3 ≤ 8.5/128 ≈ 0.066 (the nearest 8-bit step,
then the nearest multiple of 8 or 16 steps; both reached).
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import zstandard

from lodsgs.errors import LodsgsError
from lodsgs.splats.convention import check_splats, file_params, unflip_yz, write_atomic
from lodsgs.splats.model import Splats, num_sh_bases

MAGIC, FRACTIONAL_BITS = 0x5053474E, 12
VERSIONS_WRITTEN = (2, 4)  # read: 2, 3 and 4
HEADER = struct.Struct("<IIIBBBB")  # v1-v3, inside the gzip stream
HEADER_V4 = struct.Struct("<IIIBBBBI12x")  # v4, plaintext
TOC_ENTRY = struct.Struct("<QQ")  # compressed size, uncompressed size
COLOR_SCALE = 0.15 * 255.0
SH1_BUCKET, SH_REST_BUCKET = 1 << (8 - 5), 1 << (8 - 4)  # v4: 5 bits for band 1, 4 for bands 2-3 (reference default)
ZSTD_LEVEL = 12  # the reference's compressZstd default
SQRT1_2 = math.sqrt(0.5)
_DELTA = SQRT1_2 / (2 * 511)
ROT_V4_BOUNDS = (_DELTA, 3 * _DELTA * (1 + _DELTA) / (1 - 6 * _DELTA * (1 + _DELTA)))  # (stored three, rebuilt)
MAX_SPZ_GAUSSIANS = 10_000_000  # a header count above this is a damaged or hostile file (0.2-0.6 GB inflated)
MAX_ZSTD_RATIO, MIN_BYTES_PER_POINT = 1024, 9  # load-spz.cc's bound on a v4 count for its file size


def _u8(x: np.ndarray, rnd: Callable[[np.ndarray], np.ndarray] = np.round) -> np.ndarray:
    return np.clip(rnd(x), 0, 255).astype(np.uint8)


def _round_away(x: np.ndarray) -> np.ndarray:
    """Round half away from zero, as C++'s std::round in the reference encoder (np.round rounds half to even)."""
    return np.copysign(np.floor(np.abs(x) + 0.5), x)


def _arrays(splats: Splats, path: Path | str, version: int) -> list[np.ndarray]:
    """The six byte arrays of ``version`` (positions, alphas, colours, scales, rotations, SH), in file order. v4
    rounds as the reference does, so its arrays match the reference encoder's for the same floats (tested); v2
    keeps the rounding lodsgs always used (half to even), so its files are unchanged byte for byte."""
    rnd = np.round if version == 2 else _round_away
    p = {k: v.numpy().astype(np.float64) for k, v in file_params(splats, path).items()}
    limit = 2 ** (23 - FRACTIONAL_BITS)  # 24-bit fixed point: checked on the floats, before any integer overflows
    if np.abs(p["means"]).max(initial=0) >= limit:
        raise LodsgsError(f"cannot write {str(path)!r}: .spz positions must lie within ±{limit} units (the largest "
                          f"is {np.abs(p['means']).max():.3g}); export .ply or .splat instead")
    fixed = rnd(p["means"] * (1 << FRACTIONAL_BITS)).astype(np.int64)
    positions = np.stack([(fixed >> shift) & 0xFF for shift in (0, 8, 16)], -1).astype(np.uint8)
    alphas = _u8(255.0 / (1.0 + np.exp(-p["opacities"])), rnd)
    colors = _u8(p["sh0"][:, 0] * COLOR_SCALE + 127.5, rnd)
    scales = _u8((p["scales"] + 10.0) * 16.0, rnd)
    q = p["quats"] / np.linalg.norm(p["quats"], axis=1, keepdims=True)
    sh = p["shN"].reshape(splats.num, -1)  # [N, K, 3] is already coefficient-major, RGB inner
    if version == 2:
        return [positions, alphas, colors, scales, _first_three(q), _u8(sh * 128.0 + 128.0)]
    return [positions, alphas, colors, scales, _smallest_three(q), _quantize_sh(sh)]


def _first_three(q: np.ndarray) -> np.ndarray:
    """v2 rotations [N, 3]: x, y, z of the unit quaternion ``q`` [N, 4] (wxyz) made w >= 0."""
    q = q * np.where(q[:, :1] < 0, -1.0, 1.0)  # w >= 0, so the decoder can rebuild it from x, y, z
    return _u8(q[:, 1:] * 127.5 + 127.5)


OTHERS = np.array([[j for j in range(4) if j != i] for i in range(4)])  # the indices stored, per largest index


def _smallest_three(q: np.ndarray) -> np.ndarray:
    """v3/v4 rotations [N, 4]: the unit quaternion ``q`` [N, 4] (wxyz) packed as load-spz.cc's
    packQuaternionSmallestThree does, one little-endian u32 a Gaussian."""
    xyzw = q[:, [1, 2, 3, 0]]
    largest = np.argmax(np.abs(xyzw), axis=1)  # the first on ties, as the reference's strict '>' scan
    rows = np.arange(len(q))
    negate = xyzw[rows, largest] < 0  # -q is the same rotation: flip the signs so the dropped one is positive
    comp = largest.astype(np.uint32)
    for slot in range(3):
        c = xyzw[rows, OTHERS[largest, slot]]
        mag = np.minimum(np.floor(511.0 * np.abs(c) / SQRT1_2 + 0.5), 511).astype(np.uint32)
        comp = (comp << 10) | (((c < 0) ^ negate).astype(np.uint32) << 9) | mag
    return comp.astype("<u4").view(np.uint8).reshape(-1, 4)


def _quantize_sh(sh: np.ndarray) -> np.ndarray:
    """v4 SH bytes [N, 3K]: the nearest 8-bit step, then the nearest multiple of the band's bucket (load-spz.cc's
    quantizeSH), so the zstd stream holds fewer distinct values."""
    bucket = np.full(sh.shape[1], SH_REST_BUCKET)
    bucket[:9] = SH1_BUCKET  # band 1: the first 3 coefficients x RGB
    q = _round_away(sh * 128.0) + 128.0
    return np.clip(np.floor((q + bucket // 2) / bucket) * bucket, 0, 255).astype(np.uint8)


def encode_spz(splats: Splats, path: Path | str = "the .spz file", version: int = 4) -> bytes:
    """The bytes of an .spz of ``version`` (4: zstd streams; 2: gzip, no timestamp): the same splats give the same
    bytes (with the same zstd library)."""
    if version not in VERSIONS_WRITTEN:
        raise ValueError(f"version must be one of {VERSIONS_WRITTEN}, got {version}")
    arrays = [a.tobytes() for a in _arrays(splats, path, version)]
    if version == 2:
        header = HEADER.pack(MAGIC, 2, splats.num, splats.sh_degree, FRACTIONAL_BITS, 0, 0)
        return gzip.compress(header + b"".join(arrays), mtime=0)
    arrays = [a for a in arrays if a]  # the reference writes no stream for an empty array (SH degree 0)
    frames = [zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(a) for a in arrays]
    header = HEADER_V4.pack(MAGIC, 4, splats.num, splats.sh_degree, FRACTIONAL_BITS, 0, len(frames),
                            HEADER_V4.size)
    toc = b"".join(TOC_ENTRY.pack(len(f), len(a)) for f, a in zip(frames, arrays))
    return header + toc + b"".join(frames)


def write_spz(splats: Splats, path: Path | str, version: int = 4) -> None:
    """Write ``splats`` as an .spz of ``version``: 4 (the default, the reference's current version) or 2 (for web
    viewers that read only gzip .spz; see docs/formats.md)."""
    data = encode_spz(splats, path, version)
    write_atomic(path, lambda f: Path(f).write_bytes(data))


def read_spz(path: Path | str) -> Splats:
    """Decode an .spz of version 2, 3 or 4 back to splats in lodsgs's y-up world. Nothing is inflated past what the
    header's count implies, so a gzip or zstd bomb costs nothing; every problem is one LodsgsError line."""
    path = Path(path)
    if not path.is_file():
        raise LodsgsError(f"cannot read {str(path)!r}: no such file")
    with path.open("rb") as f:
        start = f.read(4)
    if start == MAGIC.to_bytes(4, "little"):
        return _read_v4(path)
    if start[:2] == b"\x1f\x8b":
        return _read_gzip(path)
    raise LodsgsError(f"cannot read {str(path)!r}: not an .spz (neither the \"NGSP\" header of version 4 nor the "
                      "gzip stream of versions 2-3)")


STREAMS = ("positions", "alphas", "colours", "scales", "rotations", "SH")


def _sizes(n: int, degree: int, version: int) -> list[int]:
    """Bytes of each of the six arrays for ``n`` Gaussians of SH ``degree`` in ``version``."""
    k = num_sh_bases(degree) - 1
    return [9 * n, n, 3 * n, 3 * n, (3 if version == 2 else 4) * n, 3 * k * n]


def _check_count(path: Path, n: int, degree: int) -> None:
    """The header's SH degree and Gaussian count, checked before anything is allocated or inflated."""
    if degree > 3:
        raise LodsgsError(f"cannot read {str(path)!r}: its SH degree is {degree}; lodsgs reads degrees 0 to 3")
    if n > MAX_SPZ_GAUSSIANS:
        raise LodsgsError(f"cannot read {str(path)!r}: its header declares {n} Gaussians, more than the "
                          f"{MAX_SPZ_GAUSSIANS:,} lodsgs reads (a damaged file?)")


def _read_gzip(path: Path) -> Splats:
    """Versions 2 and 3: the gzip stream is inflated one byte past what its header's count implies, no further."""
    try:
        with gzip.open(path, "rb") as f:
            head = f.read(HEADER.size)
            if len(head) < HEADER.size:
                raise LodsgsError(f"cannot read {str(path)!r}: too short for an .spz header")
            magic, version, n, degree, frac_bits, _, _ = HEADER.unpack(head)
            _check_legacy_version(path, magic, version)
            _check_count(path, n, degree)
            sizes = _sizes(n, degree, version)
            raw = f.read(sum(sizes) + 1)  # one byte more than declared: a longer stream is refused
    except (OSError, EOFError, zlib.error):
        raise LodsgsError(f"cannot read {str(path)!r}: not a gzip stream, or a truncated one") from None
    if len(raw) != sum(sizes):
        raise LodsgsError(f"cannot read {str(path)!r}: its stream does not hold the {n} splats of SH degree "
                          f"{degree} its header declares")
    arrays, offset = [], 0
    for size in sizes:
        arrays.append(raw[offset: offset + size])
        offset += size
    return _decode(path, version, n, degree, frac_bits, arrays)


def _check_legacy_version(path: Path, magic: int, version: int) -> None:
    if magic != MAGIC:
        raise LodsgsError(f"cannot read {str(path)!r}: a gzip stream without an .spz header (magic {magic:#x})")
    if version == 1:
        raise LodsgsError(f"cannot read {str(path)!r}: .spz version 1 (float16 positions) is not supported")
    if version not in (2, 3):
        raise LodsgsError(f"cannot read {str(path)!r}: a gzip .spz of version {version}; lodsgs reads versions 2 "
                          "and 3 gzipped (and 4 uncompressed)")


def _read_v4(path: Path) -> Splats:
    """Version 4: header, table of contents and every stream size checked against the header's count before
    anything is inflated; each zstd frame is inflated to its expected size and no further."""
    where, file_size = f"cannot read {str(path)!r}", path.stat().st_size
    with path.open("rb") as f:
        head = f.read(HEADER_V4.size)
        if len(head) < HEADER_V4.size:
            raise LodsgsError(f"{where}: too short for an .spz header ({len(head)} of {HEADER_V4.size} bytes)")
        _, version, n, degree, frac_bits, _, num_streams, toc_at = HEADER_V4.unpack(head)
        if version != 4:
            raise LodsgsError(f"{where}: an uncompressed .spz header of version {version}; lodsgs reads version 4 "
                              "(and 2, 3 as gzip)")
        _check_count(path, n, degree)
        if n * MIN_BYTES_PER_POINT > file_size * MAX_ZSTD_RATIO:
            raise LodsgsError(f"{where}: its header declares {n} Gaussians, more than {file_size} bytes can hold")
        sizes = _sizes(n, degree, 4)
        expected = [(name, size) for name, size in zip(STREAMS, sizes) if size]  # no stream for an empty array
        if num_streams != len(expected):
            raise LodsgsError(f"{where}: its header declares {num_streams} streams; {n} Gaussians of SH degree "
                              f"{degree} take {len(expected)}")
        toc_end = toc_at + TOC_ENTRY.size * num_streams
        if toc_at < HEADER_V4.size or toc_end > file_size:
            raise LodsgsError(f"{where}: its table of contents (bytes {toc_at}-{toc_end}) lies outside the "
                              f"{file_size}-byte file")
        f.seek(toc_at)
        toc = [TOC_ENTRY.unpack(f.read(TOC_ENTRY.size)) for _ in expected]
        _check_toc(path, toc, expected, file_size - toc_end)
        inflated = iter([_inflate(path, name, f.read(packed), size)
                         for (name, size), (packed, _) in zip(expected, toc)])
    return _decode(path, 4, n, degree, frac_bits, [next(inflated) if size else b"" for size in sizes])


def _check_toc(path: Path, toc: list[tuple[int, int]], expected: list[tuple[str, int]], room: int) -> None:
    """Each entry's uncompressed size is what the header implies, its compressed size no more than zstd can make
    of that (ZSTD_compressBound plus slack), and the frames fill the rest of the file exactly."""
    for (packed, unpacked), (name, size) in zip(toc, expected):
        if unpacked != size:
            raise LodsgsError(f"cannot read {str(path)!r}: its table of contents gives the {name} stream {unpacked} "
                              f"bytes; the header's count implies {size}")
        if packed > size + (size >> 8) + 1024:
            raise LodsgsError(f"cannot read {str(path)!r}: its table of contents gives the {name} stream a "
                              f"{packed}-byte zstd frame, more than any frame of {size} bytes takes")
    if sum(packed for packed, _ in toc) != room:
        raise LodsgsError(f"cannot read {str(path)!r}: its streams take {sum(p for p, _ in toc)} bytes; the file "
                          f"holds {room} after its table of contents (truncated or damaged)")


def _inflate(path: Path, name: str, frame: bytes, size: int) -> bytes:
    """One zstd frame inflated to exactly ``size`` bytes: a frame declaring another size is refused unread, and
    one without a declared size is stopped at ``size`` bytes."""
    try:
        declared = zstandard.frame_content_size(frame)  # -1: not declared
    except zstandard.ZstdError:
        raise LodsgsError(f"cannot read {str(path)!r}: its {name} stream is not a zstd frame") from None
    if declared not in (-1, size):
        raise LodsgsError(f"cannot read {str(path)!r}: its {name} stream's zstd frame declares {declared} bytes; "
                          f"the header's count implies {size}")
    try:
        out = zstandard.ZstdDecompressor().decompress(frame, max_output_size=size, allow_extra_data=False)
    except zstandard.ZstdError as e:
        raise LodsgsError(f"cannot read {str(path)!r}: its {name} stream does not inflate to {size} bytes "
                          f"({str(e).splitlines()[0] if str(e) else 'damaged'})") from None
    if len(out) != size:
        raise LodsgsError(f"cannot read {str(path)!r}: its {name} stream inflates to {len(out)} bytes, not {size}")
    return out


def _decode(path: Path, version: int, n: int, degree: int, frac_bits: int, arrays: list[bytes]) -> Splats:
    """The six byte arrays of ``version`` as splats in lodsgs's y-up world, refused by check_splats if damaged."""
    pos, alpha, color, scale, rot, sh = (np.frombuffer(a, np.uint8).astype(np.float64) for a in arrays)
    b = pos.reshape(n, 3, 3)
    fixed = b[..., 0] + b[..., 1] * 256 + b[..., 2] * 65536
    fixed = np.where(fixed >= 1 << 23, fixed - (1 << 24), fixed)  # 24-bit two's complement
    a = np.clip(alpha / 255.0, 0.5 / 255, 1 - 0.5 / 255)
    params = {
        "means": fixed / (1 << frac_bits),
        "scales": scale.reshape(n, 3) / 16.0 - 10.0,
        "quats": _unpack_first_three(rot, n) if version == 2 else _unpack_smallest_three(arrays[4], n),
        "opacities": np.log(a / (1 - a)),
        "sh0": ((color.reshape(n, 3) - 127.5) / COLOR_SCALE)[:, None, :],
        "shN": (sh.reshape(n, num_sh_bases(degree) - 1, 3) - 128.0) / 128.0,
    }
    params = {key: torch.from_numpy(value.astype(np.float32)) for key, value in params.items()}
    check_splats(params, path)
    return Splats(unflip_yz(params), sh_degree=degree)


def _unpack_first_three(rot: np.ndarray, n: int) -> np.ndarray:
    """v2 rotations (3 bytes a Gaussian) as wxyz quaternions [N, 4], w >= 0 rebuilt from x, y, z."""
    xyz = rot.reshape(n, 3) / 127.5 - 1.0
    w = np.sqrt(np.clip(1.0 - (xyz**2).sum(-1, keepdims=True), 0.0, 1.0))
    return np.concatenate([w, xyz], -1)


def _unpack_smallest_three(rot: bytes, n: int) -> np.ndarray:
    """v3/v4 rotations (one little-endian u32 a Gaussian) as wxyz quaternions [N, 4], as splat-utils.h's
    unpackQuaternionSmallestThree (the rebuilt component clipped at 0, so a damaged file cannot make a NaN)."""
    comp = np.frombuffer(rot, "<u4").astype(np.int64)
    largest, rows = comp >> 30, np.arange(n)
    xyzw = np.zeros((n, 4))
    for slot in range(3):  # slot 0 sits in the highest 10 bits
        bits = (comp >> (10 * (2 - slot))) & 0x3FF
        xyzw[rows, OTHERS[largest, slot]] = np.where(bits >> 9, -1.0, 1.0) * SQRT1_2 * (bits & 511) / 511
    xyzw[rows, largest] = np.sqrt(np.clip(1.0 - (xyzw**2).sum(-1), 0.0, None))
    return xyzw[:, [3, 0, 1, 2]]
