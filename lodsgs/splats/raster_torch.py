"""The project's PyTorch rasterizer for 3D Gaussian splats (CPU path of ``render``), with autograd backward.

Projection and SH come from gsplat's pure-torch reference (``gsplat.cuda._torch_impl``); compositing is
ours, because gsplat's own compositor needs CUDA (gsplat's rasterize_to_pixels is a CUDA kernel):

1. Each visible (camera, Gaussian) entry enumerates the pixel centres inside its alpha >= 1/255 ellipse,
   row by row, as a packed list of (pixel, entry) pairs (index work only, under ``no_grad``).
2. Entries are depth-sorted first, so one stable sort by pixel id makes the list pixel-major, depth-minor
   (done per camera: smaller sorts).
3. Transmittance is a segmented exclusive cumsum of log(1 - alpha) in float64; colour, depth and alpha
   are per-pixel segment sums. Runs of whole pixels (~1M pairs) are composited at a time.
4. When gradients are wanted, a no-grad pre-pass first drops the pairs behind each pixel's transmittance cut,
   which add nothing to the image or to any gradient: autograd then sees the visible pairs only.
Cost scales with the pairs, i.e. with the Gaussians touching each pixel, not with Gaussians × pixels.

Alpha rules follow gsplat's CUDA kernel: alpha = min(0.999, o·exp(-sigma)), pairs with sigma < 0 or
alpha < 1/255 are skipped, a pixel stops before the Gaussian that would bring T to <= 1e-4, and pixel
centres sit at +0.5. Radii in ``meta`` use gsplat's opacity-aware extent, so DefaultStrategy sees the
same numbers on CPU and CUDA.
"""

from __future__ import annotations

import math

import torch
from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci, _spherical_harmonics
from torch import Tensor

from lodsgs.splats.model import SH_C0

ALPHA_MIN = 1.0 / 255.0  # gsplat ALPHA_THRESHOLD
ALPHA_MAX = 0.999
T_MIN = 1e-4  # a pixel is done once its transmittance would drop to this
EPS2D = 0.3  # screen-space blur added to every 2D covariance (gsplat default)
FAR_PLANE = 1e10
PAIR_CHUNK = 1 << 20  # pairs composited at a time: temporaries stay small enough for the allocator to reuse


def project(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4] wxyz, any norm
    scales: Tensor,  # [N, 3] activated
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    near_plane: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """gsplat's torch EWA projection: means2d [C,N,2], depths [C,N], conics [C,N,3] (a, b, c of Σ2d⁻¹)."""
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_covar=True, compute_preci=False)
    _, means2d, depths, conics, _ = _fully_fused_projection(
        means, covars, viewmats, Ks, width, height, eps2d=EPS2D, near_plane=near_plane, far_plane=FAR_PLANE
    )
    return means2d, depths, conics


@torch.no_grad()
def screen_radii(
    means2d: Tensor, depths: Tensor, conics: Tensor, opacities: Tensor, width: int, height: int,
    near_plane: float,
) -> tuple[Tensor, Tensor]:
    """gsplat CUDA's opacity-aware pixel radii [C,N,2] int32 (0 = culled) and sigma cut log(255·o) [C,N]."""
    a, b, c = conics.unbind(-1)
    det = (a * c - b * b).clamp_min(1e-20)
    cov_xx, cov_yy = c / det, a / det
    thr = torch.log(opacities / ALPHA_MIN).clamp_min(0.0).expand_as(depths)  # alpha >= 1/255 <=> sigma <= thr
    extend = torch.sqrt(2.0 * thr).clamp_max(3.33)
    rx, ry = torch.ceil(extend * cov_xx.sqrt()), torch.ceil(extend * cov_yy.sqrt())
    mx, my = means2d.unbind(-1)
    keep = (depths > near_plane) & (depths < FAR_PLANE) & (opacities >= ALPHA_MIN)
    keep &= (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
    radii = torch.stack([rx, ry], -1).nan_to_num(0.0) * keep[..., None]
    return radii.int(), thr


def sh_colors(
    means: Tensor, sh: Tensor, viewmats: Tensor, sh_degree: int, cam: Tensor, gid: Tensor
) -> Tensor:
    """RGB [M,3] of entries (camera ``cam``, Gaussian ``gid``) as gsplat: clamp_min(SH(dir) + 0.5, 0),
    dir = means - campos."""
    k = (sh_degree + 1) ** 2
    if sh_degree == 0:  # view-independent: skip the directions
        return torch.clamp_min(sh[gid, 0] * SH_C0 + 0.5, 0.0)
    campos = torch.linalg.inv(viewmats)[:, :3, 3]  # [C,3]
    dirs = means[gid] - campos[cam]
    return torch.clamp_min(_spherical_harmonics(sh_degree, dirs, sh[gid, :k]) + 0.5, 0.0)


def _expand(counts: Tensor) -> tuple[Tensor, Tensor]:
    """For segments of sizes ``counts``: the segment of every element and its index within the segment."""
    total = int(counts.sum())
    seg = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts, output_size=total)
    starts = torch.cumsum(counts, 0) - counts
    return seg, torch.arange(total, device=counts.device) - starts.index_select(0, seg)


@torch.no_grad()
def build_pairs(
    means2d: Tensor,  # [M, 2] depth-sorted entries
    conics: Tensor,  # [M, 3]
    thr: Tensor,  # [M] sigma cut
    width: int,
    height: int,
    first_pixel: int = 0,  # added to every pixel id (camera c: c·H·W)
) -> tuple[Tensor, Tensor]:
    """Pairs (pixel id, entry) for pixel centres in each entry's sigma <= thr ellipse, pixel-major.

    The ellipse is enumerated exactly per row (a small margin keeps boundary pixels; the compositor's own
    alpha test is the authority), so pairs ~ the Gaussians that really touch each pixel.
    """
    margin = 0.01  # pixels
    mx, my, thr = means2d[:, 0].double(), means2d[:, 1].double(), thr.double()
    a, b, c = conics.double().unbind(-1)
    det = (a * c - b * b).clamp_min(1e-20)
    ry = torch.sqrt(2.0 * thr * a / det) + margin
    y0 = torch.ceil(my - ry - 0.5).clamp(0, height)
    y1 = torch.floor(my + ry - 0.5).clamp(-1, height - 1)
    # a row at dy = centre_y - my holds 0.5·a·dx² + b·dy·dx + 0.5·c·dy² <= thr, i.e. (dx = centre_x - mx)
    # |dx + (b/a)·dy| <= sqrt(2·thr/a - (det/a²)·dy²): per-entry coefficients, gathered once per row
    coef = [y0, my, mx, b / a, 2.0 * thr / a, det / (a * a)]
    rows, y_in = _expand((y1 - y0 + 1).clamp_min(0).long())  # one item per (entry, pixel row)
    y0, my, mx, slope, p, q = (x.index_select(0, rows) for x in coef)
    y = y0 + y_in
    dy = y + 0.5 - my
    span2 = p - q * dy * dy
    half = span2.clamp_min(0).sqrt()
    centre = mx - slope * dy
    x0 = torch.ceil(centre - half - margin - 0.5).clamp(0, width)
    x1 = torch.floor(centre + half + margin - 0.5).clamp(-1, width - 1)
    nx = ((x1 - x0 + 1) * (span2 >= 0)).clamp_min(0).long()
    # pixel ids of each row's pairs are consecutive: pix = pair index + (row's first pixel - row's first pair)
    first_pair = torch.cumsum(nx, 0) - nx
    shift = ((y * width + x0).long() + first_pixel - first_pair).int()
    dev = means2d.device  # every index tensor is made where the splats are (a CUDA run never touches the CPU)
    row_of_pair = torch.repeat_interleave(torch.arange(len(nx), dtype=torch.int32, device=dev), nx,
                                          output_size=int(nx.sum()))
    pix = torch.arange(len(row_of_pair), dtype=torch.int32, device=dev) + shift.index_select(0, row_of_pair)
    entry = rows.int().index_select(0, row_of_pair)  # monotone index: cheap
    pix, order = torch.sort(pix, stable=True)  # entries were depth-sorted: depth order survives per pixel
    return pix, entry.index_select(0, order)


def _pairs_per_camera(
    means2d: Tensor, conics: Tensor, thr: Tensor, per_camera: list[int], width: int, height: int
) -> tuple[Tensor, Tensor]:
    """``build_pairs`` one camera at a time (entries camera-major, ``per_camera`` of each): smaller sorts
    and temporaries, and the concatenation is still sorted by pixel id."""
    pix, entry, e0 = [], [], 0
    for c, m in enumerate(per_camera):
        p, e = build_pairs(means2d[e0:e0 + m], conics[e0:e0 + m], thr[e0:e0 + m], width, height,
                           first_pixel=c * height * width)
        pix.append(p)
        entry.append(e + e0)
        e0 += m
    return torch.cat(pix), torch.cat(entry)


def rasterize(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3] activated
    opacities: Tensor,  # [N] activated
    sh: Tensor,  # [N, K, 3]
    viewmats: Tensor,  # [C, 4, 4] world-to-camera, OpenCV
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    sh_degree: int,
    background: Tensor | None = None,  # [C, 3]
    near_plane: float = 0.01,
) -> tuple[Tensor, Tensor, Tensor, dict]:
    """Render C views: rgb [C,H,W,3], alpha [C,H,W,1], expected depth [C,H,W,1] and a gsplat-style meta."""
    C, N = len(viewmats), len(means)
    means2d, depths, conics = project(means, quats, scales, viewmats, Ks, width, height, near_plane)
    radii, thr = screen_radii(means2d, depths, conics, opacities, width, height, near_plane)
    with torch.no_grad():
        visible = (radii > 0).all(-1)  # [C,N]
        flat = torch.nonzero(visible.reshape(-1))[:, 0]  # visible entries c·N + n
        flat = flat[torch.argsort(depths.reshape(-1)[flat], stable=True)]  # front to back...
        flat = flat[torch.argsort(flat // N, stable=True)]  # ...within each camera
        cam, gid = flat // N, flat % N
    rgb = sh_colors(means, sh, viewmats, sh_degree, cam, gid)  # [M,3]
    m2d, cn = means2d.reshape(-1, 2)[flat], conics.reshape(-1, 3)[flat]
    pix, entry = _pairs_per_camera(m2d.detach(), cn.detach(), thr.reshape(-1)[flat], visible.sum(1).tolist(),
                                   width, height)
    # per-entry attributes as separate contiguous rows, gathered per pair with index_select (fast both ways)
    rows = [*m2d.unbind(1), *cn.unbind(1), opacities[gid], *rgb.unbind(1), depths.reshape(-1)[flat]]
    out = torch.stack(_composite_chunked(pix, entry, rows, C * height * width, width, height), -1)
    out = out.reshape(C, height, width, 5)  # r, g, b, Σw·z, Σw
    color, depth_sum, alpha = out[..., :3], out[..., 3:4], out[..., 4:5]
    if background is not None:
        color = color + (1.0 - alpha) * background[:, None, None, :]
    depth = depth_sum / alpha.clamp_min(1e-10)
    meta = {"means2d": means2d, "radii": radii, "depths": depths, "conics": conics, "gaussian_ids": None,
            "camera_ids": None, "width": width, "height": height, "n_cameras": C, "packed": False,
            "n_pairs": len(pix)}
    return color, alpha, depth, meta


def _composite_chunked(
    pix: Tensor, entry: Tensor, rows: list[Tensor], n_pixels: int, width: int, height: int
) -> list[Tensor]:
    """``_composite`` over runs of whole pixels of about PAIR_CHUNK pairs each (the same sums, smaller
    temporaries: large tensors are fresh mmaps on every allocation, and page faults dominated)."""
    with torch.no_grad():
        counts = torch.bincount(pix, minlength=n_pixels)
        ends = torch.cumsum(counts, 0)
        targets = torch.arange(PAIR_CHUNK, max(len(pix), PAIR_CHUNK), PAIR_CHUNK, dtype=ends.dtype, device=ends.device)
        cuts = torch.searchsorted(ends, targets, right=True)
        pixel_cuts = [0, *torch.unique(cuts).tolist(), n_pixels]
        pair_cuts = torch.cat([ends.new_zeros(1), ends])[pixel_cuts].tolist()
    backward = torch.is_grad_enabled() and any(r.requires_grad for r in rows)  # else the pre-pass costs more
    zero = rows[0][:0].sum()  # 0, but on the autograd graph: empty views still backprop (zero gradients)
    outs = []
    for p0, p1, s0, s1 in zip(pixel_cuts[:-1], pixel_cuts[1:], pair_cuts[:-1], pair_cuts[1:]):
        if s1 == s0:
            outs.append([zero.expand(p1 - p0)] * 5)
            continue
        pix_c, entry_c, counts_c = pix[s0:s1] - p0, entry[s0:s1], counts[p0:p1]
        if backward:
            pix_c, entry_c, counts_c = _visible_pairs(pix_c, entry_c, rows, counts_c, p0, width, height)
        attrs = [r.index_select(0, entry_c) for r in rows]
        outs.append(_composite(pix_c, attrs, counts_c, p0, width, height))
    return [torch.cat(parts) for parts in zip(*outs)]


@torch.no_grad()
def _visible_pairs(
    pix: Tensor, entry: Tensor, rows: list[Tensor], counts: Tensor, p0: int, width: int, height: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The pairs in front of each pixel's transmittance cut (and their per-pixel counts): the only ones that
    add to an image or a gradient. Behind an opaque surface most pairs do not (about 60 % of them in a
    shapes-profile step), and dropping them first spares the attribute gathers, the autograd graph and the
    backward their work (a render without gradients skips this pass: there it costs more than it saves). The
    cut is a prefix of each pixel's pairs, so the kept pairs composite to the same sums (``_composite``
    recomputes the same transmittance from them)."""
    alpha = _alpha(pix, [r.index_select(0, entry) for r in rows[:6]], p0, width, height)
    _, alive = _transmittance(alpha, pix, counts)
    kept = torch.nonzero(alive & (alpha > 0))[:, 0]  # skipped pairs (alpha < 1/255, sigma < 0) add nothing either
    pix, entry = pix.index_select(0, kept), entry.index_select(0, kept)
    return pix, entry, torch.bincount(pix, minlength=len(counts))


def _transmittance(alpha: Tensor, pix: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """log T in front of each pair within its pixel [P] (float64: a segmented exclusive cumsum of log(1 - alpha)
    over the whole run of pixels) and whether the pair comes before the pixel's cut: gsplat stops before the pair
    that would bring T to <= 1e-4."""
    seg_start = (torch.cumsum(counts, 0) - counts).index_select(0, pix)  # integers: no graph
    log_t = torch.log1p(-alpha.double())
    incl = torch.cumsum(log_t, 0)
    excl = incl - log_t
    base = excl.index_select(0, seg_start)  # log T at the first pair of the pixel
    return excl - base, (incl - base) > math.log(T_MIN)  # a comparison carries no gradient


def _alpha(pix: Tensor, attrs: list[Tensor], p0: int, width: int, height: int) -> Tensor:
    """gsplat's alpha of each pair: min(0.999, o·exp(-sigma)), 0 for the pairs it skips (sigma < 0, alpha <
    1/255). ``attrs``: the pairs' mean x, mean y, conic a, b, c and opacity; ``pix`` their pixel minus ``p0``."""
    mx, my, a, b, c, opac = attrs
    with torch.no_grad():
        xy = (pix + p0) % (width * height)
        px, py = (xy % width).float() + 0.5, (xy // width).float() + 0.5
    dx, dy = mx - px, my - py
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    alpha = torch.clamp_max(opac * torch.exp(-sigma), ALPHA_MAX)
    return alpha * ((sigma >= 0) & (alpha >= ALPHA_MIN))


def _composite(
    pix: Tensor, attrs: list[Tensor], counts: Tensor, p0: int, width: int, height: int
) -> list[Tensor]:
    """Front-to-back compositing of sorted pairs: per pixel Σw·r, Σw·g, Σw·b, Σw·z, Σw with w = alpha·T.

    ``pix`` [P] are pixel ids minus ``p0``, ``counts`` the pairs of each of those pixels, and ``attrs``
    ten [P] tensors per pair: mean x, mean y, conic a, b, c, opacity, r, g, b, depth.
    """
    alpha = _alpha(pix, attrs[:6], p0, width, height)
    log_before, alive = _transmittance(alpha, pix, counts)
    w = alpha * torch.exp(log_before).float() * alive
    # pix is sorted, so per-pixel sums are segment sums (faster than index_add, same order of additions)
    return [torch.segment_reduce(x, "sum", lengths=counts) for x in [w * f for f in attrs[6:]] + [w]]
