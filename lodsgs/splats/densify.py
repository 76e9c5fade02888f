"""Adaptive density control: a gsplat-style strategy on gsplat's public ops, plus the trainer's ``Densifier``.

``DefaultDensify`` is the 3DGS rule of gsplat 1.5.3's ``gsplat/strategy/default.py`` (DefaultStrategy), rewritten
on the public ``gsplat.strategy.ops`` (duplicate, split, remove, reset_opa) with what lodsgs adds: a growth
threshold that can be a quantile of the gradients, a growth cap, and an opacity reset that fires (gsplat 1.5.3's
``step % n == 0 & step > 0`` parses as a chained comparison that is always False; gsplat PR #776). Like gsplat's
strategies it is a dataclass of plain ints and floats that never changes after construction: all running state
lives in the dict ``initialize_state`` returns.

Call order per step (gsplat's trainers): render -> ``step_pre_backward`` -> loss.backward() -> optimizer
steps -> ``step_post_backward``. Duplicate/split/remove replace the Parameters in ``splats.params`` and their
Adam state in place, so read the splats through ``params`` after each step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from gsplat.strategy.ops import duplicate, remove, reset_opa, split

from lodsgs.config import DensifyConfig, at_step
from lodsgs.splats.model import Splats

Params = dict[str, torch.nn.Parameter] | torch.nn.ParameterDict


@dataclass(frozen=True)
class DefaultDensify:
    """gsplat's DefaultStrategy rule over resolved steps; frozen, so a step can never change it.

    Statistics (the norm of ``means2d.grad`` scaled to NDC by width/2, height/2 × n_cameras, summed per Gaussian
    over the views that see it, and the number of such views) accumulate on every step s <= ``refine_stop``. A
    refine runs at ``refine_start`` < s <= ``refine_stop`` with s % ``refine_every`` == 0: grow the Gaussians
    whose mean gradient is above the threshold (``grow_grad2d``, or with ``grow_quantile`` > 0 that quantile of
    the mean gradients of the Gaussians seen since the last refine; none while there are ``max_gaussians`` or
    more), duplicating those with max scale <= ``grow_scale3d`` × scene_scale and splitting the others; then
    prune opacity < ``prune_opa`` and, from s > ``reset_every`` (no reset: s > max(refine_start, 1), gsplat's
    rule with reset_every=max(refine_start, 1)), max scale > ``prune_scale3d`` × scene_scale; then zero the
    statistics. With ``reset_every`` > 0, opacities are clamped to 2 × ``prune_opa`` at 0 < s <= ``refine_stop``
    with s % ``reset_every`` == 0, after that step's refine. gsplat's 2D-radius rules (refine_scale2d_stop_iter)
    and absgrad are not used.
    """

    refine_start: int  # refines strictly after this step
    refine_stop: int  # the last step with statistics, a refine or a reset
    refine_every: int  # refines on the multiples of this
    reset_every: int = 0  # opacity reset period in steps (0 = never)
    prune_opa: float = 0.005
    grow_grad2d: float = 0.0002
    grow_quantile: float = 0.0
    grow_scale3d: float = 0.01
    prune_scale3d: float = 0.1
    max_gaussians: int = 200_000

    def __post_init__(self) -> None:
        if self.refine_every < 1 or self.reset_every < 0 or not 0 <= self.refine_start <= self.refine_stop:
            raise ValueError(f"bad densify window: {self}")

    def initialize_state(self, scene_scale: float = 1.0) -> dict[str, Any]:
        """The running state: tensors are created on the first step (on the gradients' device); the ops keep
        every tensor in it aligned with the Gaussians and skip the int totals grown/pruned (for the run log)."""
        return {"grad2d": None, "count": None, "scene_scale": scene_scale, "grown": 0, "pruned": 0, "refines": 0}

    def is_refine(self, step: int) -> bool:
        return self.refine_start < step <= self.refine_stop and step % self.refine_every == 0

    def is_reset(self, step: int) -> bool:
        return self.reset_every > 0 and 0 < step <= self.refine_stop and step % self.reset_every == 0

    def step_pre_backward(self, params: Params, optimizers: dict, state: dict, step: int, info: dict) -> None:
        """Ask autograd to keep ``info["means2d"].grad``, the screen-space gradient the statistics sum."""
        if step <= self.refine_stop:
            info["means2d"].retain_grad()

    def step_post_backward(self, params: Params, optimizers: dict, state: dict, step: int, info: dict,
                           packed: bool = False) -> None:
        """Accumulate the statistics, refine on refine steps, reset opacities on reset steps. A step whose
        ``means2d`` got no gradient (not in the loss's graph) neither accumulates nor refines."""
        if step > self.refine_stop:
            return
        if info["means2d"].grad is not None:
            # the quantile threshold is read before this step's gradients join the statistics: the timing the
            # shapes profile was tuned with (its measured results depend on it)
            threshold = self.grow_threshold(state) if self.is_refine(step) else None
            self._accumulate(params, state, info, packed)
            if threshold is not None:
                self._refine(params, optimizers, state, step, threshold)
        if self.is_reset(step):
            reset_opa(params=params, optimizers=optimizers, state=state, value=self.prune_opa * 2.0)

    @torch.no_grad()
    def _accumulate(self, params: Params, state: dict, info: dict, packed: bool) -> None:
        """Add this step's per-Gaussian gradient norms and view counts (as gsplat's DefaultStrategy._update_state)."""
        grads = info["means2d"].grad.clone()
        grads[..., 0] *= info["width"] / 2.0 * info["n_cameras"]  # to [-1, 1] screen space
        grads[..., 1] *= info["height"] / 2.0 * info["n_cameras"]
        n = len(params["means"])
        for key in ("grad2d", "count"):
            if state[key] is None:
                state[key] = torch.zeros(n, device=grads.device)
        if packed:  # grads [nnz, 2]
            ids = info["gaussian_ids"]
        else:  # grads [C, N, 2]: the (camera, Gaussian) pairs with a footprint
            seen = (info["radii"] > 0.0).all(dim=-1)
            ids, grads = torch.where(seen)[1], grads[seen]
        state["grad2d"].index_add_(0, ids, grads.norm(dim=-1))
        state["count"].index_add_(0, ids, torch.ones_like(ids, dtype=torch.float32))

    @torch.no_grad()
    def _refine(self, params: Params, optimizers: dict, state: dict, step: int, threshold: float) -> None:
        """Grow (unless at the cap), prune, count both in the state and zero the statistics."""
        if len(params["means"]) < self.max_gaussians:
            state["grown"] += self._grow(params, optimizers, state, threshold)
        state["pruned"] += self._prune(params, optimizers, state, step)
        state["refines"] += 1
        state["grad2d"].zero_()
        state["count"].zero_()
        torch.cuda.empty_cache()  # as gsplat: hand back the memory of the replaced tensors

    def grow_threshold(self, state: dict) -> float:
        """``grow_grad2d``, or the ``grow_quantile`` of the mean gradients of the Gaussians seen since the last
        refine: scale-free, as LODS divides the gradient by ω (a fixed threshold means another thing per method)."""
        if self.grow_quantile <= 0 or state["count"] is None or not (state["count"] > 0).any():
            return self.grow_grad2d
        seen = state["count"] > 0
        mean = state["grad2d"][seen] / state["count"][seen]
        return torch.quantile(mean.float(), self.grow_quantile).item()

    def _grow(self, params: Params, optimizers: dict, state: dict, threshold: float) -> int:
        """Duplicate the small high-gradient Gaussians, then split the large ones; returns how many were added
        (a duplicate adds one, a split turns one into two)."""
        high = state["grad2d"] / state["count"].clamp_min(1) > threshold
        small = torch.exp(params["scales"]).max(dim=-1).values <= self.grow_scale3d * state["scene_scale"]
        to_split = high & ~small
        n_dupli, n_split = int((high & small).sum()), int(to_split.sum())
        if n_dupli > 0:
            duplicate(params=params, optimizers=optimizers, state=state, mask=high & small)
        if n_split > 0:  # the duplicates (appended at the end) are not split
            to_split = torch.cat([to_split, torch.zeros(n_dupli, dtype=torch.bool, device=to_split.device)])
            split(params=params, optimizers=optimizers, state=state, mask=to_split)
        return n_dupli + n_split

    def _prune(self, params: Params, optimizers: dict, state: dict, step: int) -> int:
        """Remove the nearly transparent Gaussians and, past the first reset step (no reset: past
        max(refine_start, 1)), the too large: 3DGS prunes by size only after its first opacity reset."""
        prune = torch.sigmoid(params["opacities"].flatten()) < self.prune_opa
        if step > (self.reset_every if self.reset_every > 0 else max(self.refine_start, 1)):
            prune |= torch.exp(params["scales"]).max(dim=-1).values > self.prune_scale3d * state["scene_scale"]
        n = int(prune.sum())
        if n > 0:
            remove(params=params, optimizers=optimizers, state=state, mask=prune)
        return n


def strategy_for(cfg: DensifyConfig, steps: int) -> DefaultDensify:
    """The config's fractions of a ``steps``-step run as steps (``at_step``; every at least 1; a reset period that
    rounds to 0 steps: no reset)."""
    return DefaultDensify(
        refine_start=at_step(cfg.start, steps), refine_stop=at_step(cfg.stop, steps),
        refine_every=max(1, at_step(cfg.every, steps)), reset_every=at_step(cfg.reset_every, steps),
        prune_opa=cfg.prune_opa, grow_grad2d=cfg.grow_grad2d, grow_quantile=cfg.grow_quantile,
        grow_scale3d=cfg.grow_scale3d, prune_scale3d=cfg.prune_scale3d, max_gaussians=cfg.max_gaussians)


class Densifier:
    """The trainer's handle: the config's strategy over a ``steps``-step run (none for strategy "none") and its
    running state (grad2d, count, scene_scale, grown, pruned); checkpoint with ``state_dict``."""

    def __init__(self, cfg: DensifyConfig, steps: int):
        self.cfg = cfg
        self.strategy = strategy_for(cfg, steps) if cfg.strategy == "default" else None
        none = DefaultDensify(0, 0, 1)  # strategy "none": the same (never filled) state, for the log's totals
        self.state: dict[str, Any] = (self.strategy or none).initialize_state(scene_scale=cfg.scene_scale)

    def step_pre_backward(self, splats: Splats, optimizers: dict, meta: dict, step: int) -> None:
        """Keep ``meta["means2d"].grad`` for the statistics (while the strategy still needs it)."""
        if self.strategy is not None:
            self.strategy.step_pre_backward(splats.params, optimizers, self.state, step, meta)

    @torch.no_grad()
    def cap_scales(self, splats: Splats) -> None:
        """Clamp every log-scale to log(max_scale × scene_scale) (after each optimizer step; max_scale 0: off). A
        Gaussian's footprint, and so the rasterizer's memory, stays bounded, and a too-high optim.scales lr cannot
        overflow exp(log-scale) to inf (whatever strategy, and between refines, which prune only some steps)."""
        if self.cfg.max_scale > 0:
            splats.params["scales"].clamp_(max=math.log(self.cfg.max_scale * self.cfg.scene_scale))

    def step_post_backward(self, splats: Splats, optimizers: dict, meta: dict, step: int) -> None:
        """Accumulate gradient statistics; on refine steps grow and prune; on reset steps reset opacity."""
        if self.strategy is not None:
            self.strategy.step_post_backward(splats.params, optimizers, self.state, step, meta, packed=False)

    def state_dict(self) -> dict[str, Any]:
        return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in self.state.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = {"grown": 0, "pruned": 0, "refines": 0} | {k: (v.clone() if isinstance(v, torch.Tensor) else v)
                                                   for k, v in state.items()}
