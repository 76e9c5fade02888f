"""The shapes world: captioned objects made of primitives, as ground-truth splats with baked shading.

Every caption builds deterministically into Gaussians on the primitive surfaces, coloured with diffuse
shading from one fixed light, so the project's renderer draws the truth from any camera.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import Tensor

from lodsgs.cameras import CameraConfig
from lodsgs.splats.model import Splats, rgb_to_sh0

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.10, 0.10),
    "green": (0.10, 0.65, 0.15),
    "blue": (0.10, 0.25, 0.90),
    "yellow": (0.95, 0.80, 0.05),
    "purple": (0.55, 0.15, 0.75),
    "orange": (1.00, 0.50, 0.05),
}
SHAPES = ("sphere", "cube", "cone", "cylinder", "torus")
# Two-object scenes: "on" stacks the first on the second (the same from every side); "left of" puts the
# first at -x, so from the front it is on the left and from the back on the right: these have a front.
COMPOSITIONS = [
    ("red", "cube", "on", "blue", "cylinder"),
    ("green", "sphere", "on", "yellow", "cube"),
    ("blue", "cone", "on", "red", "cube"),
    ("yellow", "sphere", "on", "purple", "cylinder"),
    ("orange", "cone", "on", "green", "cylinder"),
    ("purple", "sphere", "on", "orange", "cube"),
    ("red", "sphere", "left of", "blue", "cube"),
    ("yellow", "cone", "left of", "green", "sphere"),
    ("blue", "cylinder", "left of", "orange", "sphere"),
    ("green", "cube", "left of", "purple", "cone"),
]
VIEW_WORDS = ("front", "side", "back", "overhead", "view")
LIGHT = torch.tensor([0.4, 0.8, 0.6]) / math.sqrt(0.4**2 + 0.8**2 + 0.6**2)  # upper front right
AMBIENT = 0.45
BACKGROUND = (1.0, 1.0, 1.0)
SHAPES_CAMERAS = CameraConfig(elevation=(-10.0, 45.0), radius=(2.3, 2.8), fovy=(38.0, 46.0), width=32, height=32,
                              eval_elevation=15.0, eval_radius=2.6, eval_fovy=42.0)
POINTS_PER_UNIT_AREA = 900


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def captions() -> list[str]:
    """All captions: every colour × shape, then the compositions."""
    single = [f"{article(c)} {c} {s}" for s in SHAPES for c in COLORS]
    pairs = [f"{article(c1)} {c1} {s1} {rel} {article(c2)} {c2} {s2}" for c1, s1, rel, c2, s2 in COMPOSITIONS]
    return single + pairs


def underspecified_captions() -> list[str]:
    """Captions that leave one attribute open: "a cube" (any of the six colours), "a red shape" (any of the
    five shapes). Scenes have none: a scene with an open attribute has dozens of modes, too many to score."""
    return [f"a {s}" for s in SHAPES] + [f"{article(c)} {c} shape" for c in COLORS]


def all_captions() -> list[str]:
    """What the shapes prior knows: the full captions, then the underspecified ones."""
    return captions() + underspecified_captions()


def modes(caption: str) -> list[str]:
    """The full captions a caption allows: its colour's shapes, its shape's colours, or the caption itself."""
    if caption not in underspecified_captions():
        parse(caption)  # a full caption, or ValueError
        return [caption]
    open_word = caption.split()[1]  # "a cube" -> cube (colour open); "a red shape" -> red (shape open)
    if open_word in COLORS:
        return [f"{article(open_word)} {open_word} {s}" for s in SHAPES]
    return [f"{article(c)} {c} {open_word}" for c in COLORS]


def has_front(caption: str) -> bool:
    return " left of " in caption


EXTRA_WORDS = ("shape",)  # words added after the first prior, appended so the earlier token ids keep their rows


def vocabulary() -> list[str]:
    words = {w for c in captions() for w in c.split()} | set(VIEW_WORDS)
    return sorted(words) + list(EXTRA_WORDS)


# --- surfaces: points, normals and area, all deterministic given a generator -----------------------

def _sphere(n: int, g: torch.Generator, r: float = 0.5) -> tuple[Tensor, Tensor]:
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    return d * r, d


def _cube(n: int, g: torch.Generator, h: float = 0.42) -> tuple[Tensor, Tensor]:
    face = torch.randint(0, 6, (n,), generator=g)
    uv = (torch.rand(n, 2, generator=g) * 2 - 1) * h
    axis, sign = face // 2, (face % 2) * 2 - 1.0
    p = torch.zeros(n, 3)
    nrm = torch.zeros(n, 3)
    for a in range(3):
        m = axis == a
        others = [i for i in range(3) if i != a]
        p[m, a] = sign[m] * h
        p[m, others[0]], p[m, others[1]] = uv[m, 0], uv[m, 1]
        nrm[m, a] = sign[m]
    return p, nrm


def _cylinder(n: int, g: torch.Generator, r: float = 0.42, h: float = 0.45) -> tuple[Tensor, Tensor]:
    side_area, cap_area = 2 * math.pi * r * 2 * h, math.pi * r * r
    u = torch.rand(n, generator=g) * (side_area + 2 * cap_area)
    theta = torch.rand(n, generator=g) * 2 * math.pi
    side = u < side_area
    y = torch.where(side, (torch.rand(n, generator=g) * 2 - 1) * h, torch.where(u < side_area + cap_area, h, -h))
    rad = torch.where(side, torch.full((n,), r), r * torch.rand(n, generator=g).sqrt())
    p = torch.stack([rad * torch.sin(theta), y, rad * torch.cos(theta)], -1)
    nrm = torch.where(side[:, None], torch.stack([torch.sin(theta), torch.zeros(n), torch.cos(theta)], -1),
                      torch.stack([torch.zeros(n), torch.sign(y), torch.zeros(n)], -1))
    return p, nrm


def _cone(n: int, g: torch.Generator, r: float = 0.48, h: float = 0.5) -> tuple[Tensor, Tensor]:
    slant = math.sqrt(r * r + (2 * h) ** 2)
    side_area, base_area = math.pi * r * slant, math.pi * r * r
    side = torch.rand(n, generator=g) * (side_area + base_area) < side_area
    theta = torch.rand(n, generator=g) * 2 * math.pi
    t = torch.rand(n, generator=g).sqrt()  # area-uniform along the slant (0 at the apex)
    rad = torch.where(side, r * t, r * torch.rand(n, generator=g).sqrt())
    y = torch.where(side, h - 2 * h * t, torch.full((n,), -h))
    p = torch.stack([rad * torch.sin(theta), y, rad * torch.cos(theta)], -1)
    k = r / (2 * h)
    side_n = torch.nn.functional.normalize(torch.stack([torch.sin(theta), torch.full((n,), k), torch.cos(theta)], -1),
                                           dim=-1)
    nrm = torch.where(side[:, None], side_n, torch.tensor([0.0, -1.0, 0.0]).expand(n, 3))
    return p, nrm


def _torus(n: int, g: torch.Generator, R: float = 0.38, r: float = 0.15) -> tuple[Tensor, Tensor]:
    """A ring standing upright, facing the front (axis along z): a ring from the front, a bar from the side."""
    u = torch.rand(n, generator=g) * 2 * math.pi
    # rejection-free area weighting: sample v with density ∝ (R + r cos v)
    v = torch.rand(4 * n, generator=g) * 2 * math.pi
    w = torch.rand(4 * n, generator=g) * (R + r) < (R + r * torch.cos(v))
    v = v[w][:n]
    c = torch.stack([torch.cos(u) * torch.cos(v), torch.sin(u) * torch.cos(v), torch.sin(v)], -1)
    ring = R + r * torch.cos(v)
    p = torch.stack([ring * torch.cos(u), ring * torch.sin(u), r * torch.sin(v)], -1)
    return p, c


SURFACES = {"sphere": (_sphere, 4 * math.pi * 0.25), "cube": (_cube, 6 * 0.84**2),
            "cylinder": (_cylinder, 2 * math.pi * 0.42 * 0.9 + 2 * math.pi * 0.42**2),
            "cone": (_cone, math.pi * 0.48 * (0.48 + math.sqrt(0.48**2 + 1.0))),
            "torus": (_torus, 4 * math.pi**2 * 0.38 * 0.15)}
HALF_HEIGHT = {"sphere": 0.5, "cube": 0.42, "cylinder": 0.45, "cone": 0.5, "torus": 0.53}


def _quat_z_to(normals: Tensor) -> Tensor:
    """Unit quaternions (wxyz) rotating +z onto each normal, so flat Gaussians lie in the surface."""
    z = torch.tensor([0.0, 0.0, 1.0]).expand_as(normals)
    axis = torch.linalg.cross(z, normals)
    w = 1.0 + (normals * z).sum(-1, keepdim=True)
    q = torch.cat([w, axis], -1)
    flip = w[:, 0] < 1e-6  # normal == -z: rotate 180° about x
    q[flip] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    return torch.nn.functional.normalize(q, dim=-1)


def _part(shape: str, color: str, offset: tuple[float, float, float], scale: float, g: torch.Generator):
    fn, area = SURFACES[shape]
    n = int(POINTS_PER_UNIT_AREA * area * scale * scale)
    p, nrm = fn(n, g)
    p = p * scale + torch.tensor(offset)
    shade = AMBIENT + (1 - AMBIENT) * (nrm @ LIGHT).clamp_min(0)
    rgb = torch.tensor(COLORS[color]) * shade[:, None]
    size = scale * math.sqrt(area / n) * 0.75
    return p, nrm, rgb.clamp(0, 1), torch.full((n,), size)


def parse(caption: str) -> list[tuple[str, str]]:
    """(colour, shape) parts of a caption, first named first; raises ValueError for a non-world caption."""
    if caption not in captions():
        raise ValueError(f"not a shapes-world caption: {caption!r}")
    words = caption.split()
    return [(words[i], words[i + 1]) for i in range(len(words) - 1) if words[i] in COLORS]


def build_object(caption: str) -> Splats:
    """Ground-truth splats of a caption (deterministic: seeded by the caption's hash)."""
    seed = int(hashlib.sha1(caption.encode()).hexdigest()[:8], 16)
    g = torch.Generator().manual_seed(seed)
    parts = parse(caption)
    if len(parts) == 1:
        pieces = [_part(parts[0][1], parts[0][0], (0.0, 0.0, 0.0), 1.0, g)]
    elif " on " in caption:
        (c1, s1), (c2, s2) = parts
        top, bottom = 0.6, 0.75
        h1, h2 = HALF_HEIGHT[s1] * top, HALF_HEIGHT[s2] * bottom
        total = 2 * h1 + 2 * h2
        pieces = [_part(s2, c2, (0.0, -total / 2 + h2, 0.0), bottom, g),
                  _part(s1, c1, (0.0, total / 2 - h1, 0.0), top, g)]
    else:  # "left of": first object at -x
        (c1, s1), (c2, s2) = parts
        pieces = [_part(s1, c1, (-0.45, 0.0, 0.0), 0.6, g), _part(s2, c2, (0.45, 0.0, 0.0), 0.6, g)]
    p, nrm, rgb, size = (torch.cat(x) for x in zip(*pieces))
    scales = torch.stack([size, size, size * 0.15], -1)
    params = {"means": p, "scales": scales.log(), "quats": _quat_z_to(nrm),
              "opacities": torch.logit(torch.full((len(p),), 0.95)), "sh0": rgb_to_sh0(rgb)[:, None, :]}
    return Splats(params, sh_degree=0)
