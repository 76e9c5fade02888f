""".spz: version 4 (zstd) and version 2 (gzip) written, 2-4 read; the layout checked bit by bit and against files the
reference library wrote, and every attribute's round-trip error within the bound spz.py's docstring states."""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import zstandard

from lodsgs.errors import LodsgsError
from lodsgs.splats.convention import unflip_yz
from lodsgs.splats.io import read_ply, write_ply
from lodsgs.splats.model import Splats
from lodsgs.splats.spz import HEADER, HEADER_V4, ROT_V4_BOUNDS, encode_spz, read_spz, write_spz

DATA = Path(__file__).parent / "data" / "spz"
DELTA = math.sqrt(0.5) / (2 * 511)  # v4: half a step of a stored quaternion component
W_BOUND = (2 * 3**0.5 / 255 + 3 / 255**2) ** 0.5  # v2: w rebuilt from x, y, z (see test_v2_quaternion_bound_is_tight)
# per attribute: position, opacity (after the sigmoid), rgb, log-scale, quaternion (the three stored, the one rebuilt),
# SH band 1, SH bands 2-3; the numbers spz.py's docstring states
BOUNDS = {
    2: {"means": 2**-13, "opacity": 1 / 510, "rgb": 0.0037, "scales": 1 / 32, "quat": (1 / 255, W_BOUND),
        "sh1": 1 / 256, "sh_rest": 1 / 256},
    4: {"means": 2**-13, "opacity": 1 / 510, "rgb": 0.0037, "scales": 1 / 32, "quat": (DELTA, 2.09e-3),
        "sh1": 4.5 / 128, "sh_rest": 8.5 / 128},
}
SPECIAL_QUATS = [[1, 0, 0, 0], [0, 0, 0, -1], [0.5, 0.5, 0.5, 0.5], [-0.5, 0.5, -0.5, 0.5], [1, 1, 0, 0],
                 [0, 1, -1, 0], [1e-6, 1, 0, 0], [0.3, -0.3, 0.3, -0.3], [-0.1, 0.7, 0.7, 0.1], [0, 0, -1e-3, 0]]


def extreme_splats(n: int = 500, degree: int = 3, seed: int = 0) -> Splats:
    """Random splats reaching every edge of what .spz holds: positions to ±2047.9 units, log-scales over
    [-10, 5.9], opacity logits to ±15, DC to ±3.3, SH to ±0.999, quaternions of any length and every special
    case (axis-aligned, ties between the largest components, a negative largest, turns of about 180°)."""
    g = torch.Generator().manual_seed(seed)

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=g)

    means = torch.randn(n, 3, generator=g) * 0.5
    means[: n // 4] = uniform(-2047.9, 2047.9, n // 4, 3)
    quats = torch.randn(n, 4, generator=g) * 10 ** uniform(-3, 3, n, 1)
    quats[: len(SPECIAL_QUATS)] = torch.tensor(SPECIAL_QUATS)
    k = (degree + 1) ** 2 - 1
    return Splats({"means": means, "scales": uniform(-10, 5.9, n, 3), "quats": quats,
                   "opacities": uniform(-15, 15, n), "sh0": uniform(-3.3, 3.3, n, 1, 3),
                   "shN": uniform(-0.999, 0.999, n, k, 3)}, sh_degree=degree)


def quaternion_errors(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per Gaussian, the four component errors of unit quaternions ``a`` and ``b`` [N, 4] up to the sign, sorted:
    the first three are the stored components' (any frame: the file's differs by a permutation and signs)."""
    a = torch.nn.functional.normalize(a.double(), dim=-1)
    b = b.double() * torch.where((a * b.double()).sum(-1, keepdim=True) < 0, -1.0, 1.0)
    return (a - b).abs().sort(-1).values


def errors(original: Splats, decoded: Splats) -> dict[str, float]:
    """The largest error of each attribute in the BOUNDS names."""
    o, d = original.params, decoded.params
    q = quaternion_errors(o["quats"].detach(), d["quats"].detach())
    sh = torch.nn.functional.pad((o["shN"] - d["shN"]).abs(), (0, 0, 0, 4))  # [N, K + 4, 3]: none empty at degree 0
    return {
        "means": (o["means"] - d["means"]).abs().max().item(),
        "opacity": (torch.sigmoid(o["opacities"]) - torch.sigmoid(d["opacities"])).abs().max().item(),
        "rgb": (original.rgb - decoded.rgb).abs().max().item(),
        "scales": (o["scales"] - d["scales"]).abs().max().item(),
        "quat": (q[:, :3].max().item(), q[:, 3].max().item()),
        "sh1": sh[:, :3].max().item(),
        "sh_rest": sh[:, 3:].max().item(),
    }


@pytest.mark.parametrize("version", [2, 4])
@pytest.mark.parametrize("degree", [0, 3])
def test_round_trip_within_stated_bounds(tmp_path, version, degree):
    s = extreme_splats(degree=degree, seed=degree)
    if version == 2:  # v2 keeps all 8 bits: 128·c + 128 clamps above 255.5, so its bound holds for |c| ≤ 127.5/128
        s.params["shN"].data.clamp_(-127.5 / 128, 127.5 / 128)  # (both signs: writing flips the odd bands' sign)
    write_spz(s, tmp_path / "a.spz", version=version)
    r = read_spz(tmp_path / "a.spz")
    assert (r.num, r.sh_degree) == (s.num, degree)
    err, bound = errors(s, r), BOUNDS[version]
    for key in ("means", "opacity", "rgb", "scales", "sh1", "sh_rest"):
        assert err[key] <= bound[key] + 1e-6, (key, err[key], bound[key])
    assert err["quat"][0] <= bound["quat"][0] + 1e-6 and err["quat"][1] <= bound["quat"][1] + 1e-6, err["quat"]


def one_gaussian(file_quat: list[float], file_sh: torch.Tensor | None = None) -> Splats:
    """One Gaussian whose file (y-down) quaternion is ``file_quat`` (wxyz) and file SH is ``file_sh`` [1, K, 3]."""
    shN = torch.zeros(1, 0, 3) if file_sh is None else file_sh
    world = unflip_yz({"means": torch.zeros(1, 3), "quats": torch.tensor([file_quat]), "shN": shN})
    return Splats({"means": torch.zeros(1, 3), "scales": torch.zeros(1, 3), "opacities": torch.zeros(1),
                   "quats": world["quats"], "sh0": torch.zeros(1, 1, 3), "shN": world["shN"]},
                  sh_degree={0: 0, 3: 1, 8: 2, 15: 3}[shN.shape[1]])


def test_v4_rotation_bound_is_tight(tmp_path):
    """q ≈ (0.499, 0.499, 0.499, 0.503): each small component just below a step's midpoint (mag 360.5), so all
    three round down by about δ and the rebuilt largest comes back 2.05e-3 off, near the stated 2.09e-3."""
    small = math.sqrt(0.5) * (360.5 - 1e-4) / 511
    s = one_gaussian([math.sqrt(1 - 3 * small**2), small, small, small])  # w, the largest, is rebuilt
    write_spz(s, tmp_path / "q.spz")
    q = quaternion_errors(s.params["quats"].detach(), read_spz(tmp_path / "q.spz").params["quats"].detach())[0]
    assert ROT_V4_BOUNDS == pytest.approx((DELTA, 2.0858e-3), rel=1e-4)  # the docstring's formula, as stated
    assert q[:3].max() <= DELTA + 1e-6 and 2.0e-3 < q[3] <= BOUNDS[4]["quat"][1], q


def test_v4_sh_bound_is_tight():
    """128·c just above 3.5 rounds to step 4, then to the bucket at 8 (band 1): 4.5/128 off; 128·c just above
    7.5 rounds to 8, then to 16 (bands 2-3): 8.5/128 off."""
    file_sh = (torch.tensor([3.5] * 3 + [7.5] * 5) / 128 + 1e-6)[None, :, None].expand(1, 8, 3)
    sh = decoded_arrays(encode_spz(one_gaussian([1.0, 0, 0, 0], file_sh)))[5].astype(np.float32)
    err = (torch.from_numpy(sh - 128).reshape(1, 8, 3) / 128 - file_sh).abs()
    assert 0.035 < err[:, :3].min() and err[:, :3].max() <= 4.5 / 128 + 1e-6
    assert 0.066 < err[:, 3:].min() and err[:, 3:].max() <= 8.5 / 128 + 1e-6


def test_v2_quaternion_bound_is_tight(tmp_path):
    """A quaternion whose x, y, z bytes sit just past half a step (195.5, 200.5, 205.5) and whose w is just above 0
    after rounding up: its w comes back 0.116 off, near W_BOUND; no random quaternion gets there."""
    xyz = (torch.tensor([195.5, 200.5, 205.5], dtype=torch.float64) + 1e-4) / 127.5 - 1
    w = (1 - xyz.square().sum()).sqrt()
    wf, xf, yf, zf = w.item(), *xyz.tolist()
    quats = torch.tensor([[xf, -wf, zf, -yf], [1.0, 0.0, 0.0, 0.0]])  # world quaternion of file (w, x, y, z)
    s = Splats({"means": torch.zeros(2, 3), "scales": torch.zeros(2, 3), "opacities": torch.zeros(2), "quats": quats,
                "sh0": torch.zeros(2, 1, 3)})
    write_spz(s, tmp_path / "q.spz", version=2)
    q = quaternion_errors(quats, read_spz(tmp_path / "q.spz").params["quats"].detach())
    assert q[:, :3].max() <= 1 / 255 + 1e-6
    assert 0.115 < q[0, 3] <= W_BOUND and q[1].max() <= 1 / 255 + 1e-6, q


def decoded_arrays(data: bytes) -> list[np.ndarray]:
    """The six byte arrays of a v4 file (an empty SH array at degree 0), through zstandard alone."""
    _, _, n, degree, _, _, num_streams, toc_at = HEADER_V4.unpack_from(data)
    toc = [struct.unpack_from("<QQ", data, toc_at + 16 * i) for i in range(num_streams)]
    offset, arrays = toc_at + 16 * num_streams, []
    for packed, unpacked in toc:
        arrays.append(np.frombuffer(zstandard.ZstdDecompressor().decompress(data[offset: offset + packed]), np.uint8))
        assert len(arrays[-1]) == unpacked
        offset += packed
    assert offset == len(data)
    return arrays + [np.zeros(0, np.uint8)] * (6 - len(arrays))


@pytest.mark.parametrize("degree, streams", [(0, 5), (1, 6), (3, 6)])
def test_v4_header_and_table_of_contents(degree, streams):
    """32-byte plaintext header, then one (compressed, uncompressed) u64 pair a stream, then the zstd frames; SH
    degree 0 has no SH stream. Same splats, same bytes."""
    s = extreme_splats(n=100, degree=degree)
    data = encode_spz(s)
    assert data == encode_spz(s)
    assert HEADER_V4.size == 32 and data[:4] == b"NGSP" and data[20:32] == bytes(12)
    assert HEADER_V4.unpack_from(data) == (0x5053474E, 4, 100, degree, 12, 0, streams, 32)
    sizes = [struct.unpack_from("<QQ", data, 32 + 16 * i)[1] for i in range(streams)]
    k = (degree + 1) ** 2 - 1
    assert sizes == [900, 100, 300, 300, 400, 300 * k][:streams]
    assert [len(a) for a in decoded_arrays(data)] == [900, 100, 300, 300, 400, 300 * k]


@pytest.mark.parametrize("file_quat, comp", [
    # (x, y, z, w) = (0.8, 0, 0, 0.6): x largest (index 0); y, z, w stored; w: floor(511·0.6/√½ + 0.5) = 434
    ([0.6, 0.8, 0.0, 0.0], 0 << 30 | 0 << 20 | 0 << 10 | 434),
    # (0, 0, -0.8, -0.6): z largest and negative: the others' signs flip, so x, y, w = -0, -0, +0.6 (the sign bit
    # is (c < 0) xor negate, as the reference computes it, so a zero gets its sign bit set)
    ([-0.6, 0.0, 0.0, -0.8], 2 << 30 | 512 << 20 | 512 << 10 | 434),
    # (-0.6, 0, 0, 0.8): w largest (index 3); x negative: sign bit 9 of the first 10-bit field
    ([0.8, -0.6, 0.0, 0.0], 3 << 30 | (1 << 9 | 434) << 20 | 0 << 10 | 0),
    # a tie: the first of the largest (x, index 0) is dropped, y stored at full scale: 511
    ([0.0, 1.0, 1.0, 0.0], 0 << 30 | 511 << 20 | 0 << 10 | 0),
])
def test_v4_smallest_three_bits(file_quat, comp):
    """load-spz.cc's packQuaternionSmallestThree, by hand: 2 bits of the largest index (x, y, z, w order), then
    the other three in index order, each a sign bit and 9 bits of |c|/√½·511; one little-endian u32."""
    assert decoded_arrays(encode_spz(one_gaussian(file_quat)))[4].tolist() == list(comp.to_bytes(4, "little"))


def test_v4_sh_is_rounded_to_buckets():
    """Band 1 to multiples of 8 (5 bits), the rest to multiples of 16 (4 bits); 0 stays 128 exactly: 0.2 is 8-bit
    154, then 152 (band 1) or 160 (band 2); -0.2 is 102, then 104 or 96. Version 2 keeps all 8 bits."""
    file_sh = torch.tensor([0.0, 0.2, -0.2, 0.0, 0.2, -0.2, 0, 0])[None, :, None].expand(1, 8, 3)
    s = one_gaussian([1.0, 0, 0, 0], file_sh)
    v4 = decoded_arrays(encode_spz(s))[5].reshape(8, 3)
    v2 = np.frombuffer(gzip.decompress(encode_spz(s, version=2)), np.uint8)[-24:].reshape(8, 3)
    assert (v4 == v4[:, :1]).all() and (v2 == v2[:, :1]).all()  # RGB inner
    assert v4[:6, 0].tolist() == [128, 152, 104, 128, 160, 96] and v2[:6, 0].tolist() == [128, 154, 102] * 2


def test_v2_header_sizes_and_bytes_are_stable():
    """version=2 writes what lodsgs always wrote: gzip (no timestamp) of a 16-byte header and 19 bytes a Gaussian
    (+ 1 a higher SH coefficient, all 8 bits)."""
    s = extreme_splats(n=10, degree=1)
    data = encode_spz(s, version=2)
    assert data == encode_spz(s, version=2) and data[:2] == b"\x1f\x8b"
    raw = gzip.decompress(data)
    assert HEADER.unpack_from(raw) == (0x5053474E, 2, 10, 1, 12, 0, 0)
    assert len(raw) == 16 + 10 * (9 + 1 + 3 + 3 + 3 + 9)


@pytest.mark.parametrize("degree, ply_bytes, v2_bytes, v4_bytes", [(0, 68, 19, 20), (3, 248, 19 + 45, 20 + 45)])
def test_bytes_a_gaussian_in_each_file(tmp_path, degree, ply_bytes, v2_bytes, v4_bytes):
    """.ply: 17 float32 (position, normal, DC colour, opacity, scale, rotation) + 45 at SH degree 3; .spz before
    compression: 9 position + 1 alpha + 3 colour + 3 scale + 3 (v2) or 4 (v4) rotation bytes + 1 byte a higher SH
    coefficient; compressed, under 30% of the .ply even for random splats (v4 at degree 0: its 4-byte rotations)."""
    s = extreme_splats(n=100, degree=degree)
    s.params["means"].data.clamp_(-3, 3)  # a scene's extent, not the fixed point's
    write_ply(s, tmp_path / "a.ply")
    ply = (tmp_path / "a.ply").read_bytes()
    assert len(ply) - (ply.index(b"end_header\n") + len(b"end_header\n")) == 100 * ply_bytes
    assert len(gzip.decompress(encode_spz(s, version=2))) == 16 + 100 * v2_bytes
    assert sum(len(a) for a in decoded_arrays(encode_spz(s))) == 100 * v4_bytes
    assert max(len(encode_spz(s, version=v)) for v in (2, 4)) < 0.3 * len(ply)


@pytest.mark.parametrize("content, fragment", [
    (gzip.compress(HEADER.pack(0x5053474E, 4, 5, 0, 12, 0, 0) + bytes(100), mtime=0), "a gzip .spz of version 4"),
    (gzip.compress(HEADER.pack(0x5053474E, 2, 5, 0, 12, 0, 0) + bytes(90), mtime=0), "does not hold the 5 splats"),
    (gzip.compress(HEADER.pack(0x5053474E, 3, 5, 0, 12, 0, 0) + bytes(99), mtime=0), "does not hold the 5 splats"),
    (gzip.compress(b"PK\x03\x04" + bytes(40), mtime=0), "a gzip stream without an .spz header"),
    (b"NGSP\x04\0\0\0", "too short for an .spz header"),
])
def test_gzip_versions_and_damage_are_one_line(tmp_path, content, fragment):
    """Versions 2 and 3 are gzip; a gzip stream of another version, or one shorter than its count, is refused."""
    (tmp_path / "bad.spz").write_bytes(content)
    with pytest.raises(LodsgsError, match=fragment) as err:
        read_spz(tmp_path / "bad.spz")
    assert "bad.spz" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("version", [2, 4])
def test_spz_in_file_convention_like_the_ply(version):
    """Both versions store the .ply's y-down positions (as the reference's ply_to_spz copies a .ply's values)."""
    s = Splats({"means": torch.tensor([[0.25, 0.5, 0.75]]), "scales": torch.zeros(1, 3), "opacities": torch.zeros(1),
                "quats": torch.tensor([[1.0, 0, 0, 0]]), "sh0": torch.zeros(1, 1, 3)})
    data = encode_spz(s, version=version)
    positions = gzip.decompress(data)[16:25] if version == 2 else decoded_arrays(data)[0].tobytes()
    xyz = [int.from_bytes(positions[3 * i: 3 * i + 3], "little", signed=True) / 4096 for i in range(3)]
    assert xyz == [0.25, -0.5, -0.75]


def test_files_the_reference_wrote_read_as_ours():
    """tests/data/spz: ``source.ply`` (extreme_splats(n=64, degree=2, seed=7), written by write_ply) turned into
    ``reference_v4.spz`` and ``reference_v3.spz`` by the reference library (nianticlabs/spz 21715c3:
    loadSplatFromPly, then saveSpz with default PackOptions but the version, as its ply_to_spz tool does). Ours
    encodes the same floats to the same attribute arrays, and reads both files as it reads its own."""
    source = read_ply(DATA / "source.ply")
    ours, theirs = encode_spz(source), (DATA / "reference_v4.spz").read_bytes()
    assert ours[:32] == theirs[:32]  # the zstd frames may differ with the zstd library's version
    for a, b in zip(decoded_arrays(ours), decoded_arrays(theirs), strict=True):
        assert np.array_equal(a, b)
    v3 = gzip.decompress((DATA / "reference_v3.spz").read_bytes())
    assert HEADER.unpack_from(v3)[:4] == (0x5053474E, 3, 64, 2)
    assert v3[16:] == b"".join(a.tobytes() for a in decoded_arrays(theirs))  # v3: the v4 arrays, gzipped
    mine = read_spz_bytes(ours)
    for name in ("reference_v4.spz", "reference_v3.spz"):
        back = read_spz(DATA / name)
        for key, value in mine.params.items():
            assert torch.equal(back.params[key], value), (name, key)


def read_spz_bytes(data: bytes) -> Splats:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "a.spz").write_bytes(data)
        return read_spz(Path(tmp) / "a.spz")


def test_writing_a_version_no_one_reads_is_refused():
    with pytest.raises(ValueError, match=r"version must be one of \(2, 4\), got 3"):
        encode_spz(Splats.random_ball(2), version=3)


def make_reference_source(path: Path) -> None:
    """How tests/data/spz/source.ply was made (kept so that the fixture can be rebuilt)."""
    write_ply(extreme_splats(n=64, degree=2, seed=7), path)
