"""The binary glTF container (GLB) that the mesh writer (mesh.py) and glTF splats (gltf.py) share: packing one
JSON document and one binary buffer, and reading them back from a file that is never trusted.

Layout from the glTF 2.0 specification, section "GLB File Format Specification" (KhronosGroup/glTF,
specification/2.0): a 12-byte header (magic "glTF", version 2, the file's total length), a JSON chunk padded
with spaces to 4 bytes, then an optional BIN chunk padded with zeros; each chunk is its byte length, its type
and its data. Chunks of other types after these are ignored, as the specification asks of readers.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from lodsgs.errors import LodsgsError

MAGIC, JSON_CHUNK, BIN_CHUNK = b"glTF", b"JSON", b"BIN\0"
MAX_JSON_BYTES = 64 << 20  # a JSON chunk larger than this is not a scene lodsgs wrote or reads (a hostile file)
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963  # bufferView targets: vertex attributes, indices


def add_accessor(blob: bytearray, doc: dict, array: np.ndarray, component: int, kind: str, target: int,
                 bounds: bool = False) -> int:
    """Append ``array`` (already in its little-endian file dtype) to ``blob`` as one bufferView and one accessor
    of ``doc`` (its "bufferViews" and "accessors" lists), padded to 4 bytes; ``bounds`` adds the min and max
    the specification requires of POSITION. Returns the accessor's index."""
    views, accessors = doc.setdefault("bufferViews", []), doc.setdefault("accessors", [])
    views.append({"buffer": 0, "byteOffset": len(blob), "byteLength": array.nbytes, "target": target})
    accessor = {"bufferView": len(views) - 1, "componentType": component, "count": len(array), "type": kind}
    if bounds:
        accessor |= {"min": array.min(0).tolist(), "max": array.max(0).tolist()}
    accessors.append(accessor)
    blob += array.tobytes() + b"\0" * (-array.nbytes % 4)
    return len(accessors) - 1


def pack_glb(doc: dict, blob: bytes) -> bytes:
    """``doc`` as compact JSON (key order kept, so the same document gives the same bytes) and ``blob`` as the
    BIN chunk of one GLB file."""
    text = json.dumps(doc, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 4)
    blob = bytes(blob) + b"\0" * (-len(blob) % 4)
    total = 12 + 8 + len(text) + 8 + len(blob)
    return (struct.pack("<4sII", MAGIC, 2, total) + struct.pack("<I4s", len(text), JSON_CHUNK) + text
            + struct.pack("<I4s", len(blob), BIN_CHUNK) + blob)


def read_glb(path: Path) -> tuple[dict, bytes]:
    """(JSON document, BIN chunk) of a GLB file; b"" when it has no BIN chunk. Every length is checked against
    the file's size before anything is read, the JSON chunk is capped at MAX_JSON_BYTES, and every failure is
    one LodsgsError line naming the file."""
    where = f"cannot read {str(path)!r}"
    if not path.is_file():
        raise LodsgsError(f"{where}: no such file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(20)
        if len(head) < 20 or head[:4] != MAGIC:
            raise LodsgsError(f"{where}: not a binary glTF (.glb) file (no 'glTF' header)")
        version, total, json_len, json_type = struct.unpack("<III4s", head[4:20])
        if version != 2:
            raise LodsgsError(f"{where}: glTF version {version}; lodsgs reads glTF 2.0")
        if total != size:
            raise LodsgsError(f"{where}: its header says {total} bytes but the file has {size} (truncated?)")
        if json_type != JSON_CHUNK or json_len > size - 20:
            raise LodsgsError(f"{where}: its first chunk is not a JSON chunk within the file")
        if json_len > MAX_JSON_BYTES:
            raise LodsgsError(f"{where}: its JSON chunk is {json_len} bytes, more than the {MAX_JSON_BYTES} "
                              "lodsgs reads (a damaged file?)")
        doc = _parse_json(f.read(json_len), where)
        rest = size - 20 - json_len
        if rest < 8:
            return doc, b""
        bin_len, bin_type = struct.unpack("<I4s", f.read(8))
        if bin_type != BIN_CHUNK:
            return doc, b""  # an unknown chunk type: ignored, as the specification asks
        if bin_len > rest - 8:
            raise LodsgsError(f"{where}: its BIN chunk claims {bin_len} bytes, beyond the end of the file")
        return doc, f.read(bin_len)


def _parse_json(text: bytes, where: str) -> dict:
    try:
        doc = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise LodsgsError(f"{where}: its JSON chunk is not valid JSON ({type(e).__name__})") from None
    if not isinstance(doc, dict):
        raise LodsgsError(f"{where}: its JSON chunk is not a glTF document (not a JSON object)")
    return doc


def glb_json_bytes(path: Path) -> bytes:
    """The raw JSON chunk of a .glb, at most MAX_JSON_BYTES of it; b"" when the file is no GLB. For cheap looks
    (which extensions a file mentions) that must not fail on damaged files."""
    try:
        with open(path, "rb") as f:
            head = f.read(20)
            if len(head) < 20 or head[:4] != MAGIC:
                return b""
            return f.read(min(struct.unpack("<I", head[12:16])[0], MAX_JSON_BYTES))
    except OSError:
        return b""
