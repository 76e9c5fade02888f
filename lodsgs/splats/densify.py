"""Densification and pruning through gsplat's DefaultStrategy, on either renderer, plus the opacity reset.

gsplat 1.5.3's own periodic opacity reset never fires (``step % n == 0 & step > 0`` parses as a chained
comparison; gsplat PR #776), so ``reset_every`` is applied here with ``gsplat.strategy.ops.reset_opa``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from gsplat.strategy import DefaultStrategy
from gsplat.strategy.ops import reset_opa

from lodsgs.splats.model import Splats


@dataclass
class DensifyConfig:
    """Adaptive density control; defaults are LODS-3DGS's (densify every 100 steps from 300 to 1000)."""

    enabled: bool = True
    refine_start: int = 300
    refine_stop: int = 1000
    refine_every: int = 100
    grow_grad2d: float = 2e-4  # screen-space gradient threshold for clone/split
    grow_scale3d: float = 0.003  # × scene_scale: clone below, split above (3DGS percent_dense)
    prune_opa: float = 0.005
    prune_scale3d: float = 0.1  # × scene_scale: prune larger Gaussians
    scene_scale: float = 3.5  # LODS-3DGS camera extent
    reset_every: int = 0  # opacity reset period in steps (0 = never, as LODS-3DGS)
    max_gaussians: int = 200_000  # stop growing beyond this (memory guard on CPU)


class Densifier:
    """Holds a DefaultStrategy and its running state; call around backward like gsplat's trainers."""

    def __init__(self, cfg: DensifyConfig):
        self.cfg = cfg
        self.strategy = DefaultStrategy(
            prune_opa=cfg.prune_opa, grow_grad2d=cfg.grow_grad2d, grow_scale3d=cfg.grow_scale3d,
            prune_scale3d=cfg.prune_scale3d, refine_start_iter=cfg.refine_start, refine_stop_iter=cfg.refine_stop,
            refine_every=cfg.refine_every,
            # size pruning in gsplat runs only for step > reset_every: enable it once refinement starts
            reset_every=cfg.reset_every if cfg.reset_every > 0 else max(cfg.refine_start, 1),
        )
        self.state: dict[str, Any] = self.strategy.initialize_state(scene_scale=cfg.scene_scale)

    def step_pre_backward(self, splats: Splats, optimizers: dict, meta: dict, step: int) -> None:
        if self.cfg.enabled and step < self.cfg.refine_stop:
            self.strategy.step_pre_backward(splats.params, optimizers, self.state, step, meta)

    def step_post_backward(self, splats: Splats, optimizers: dict, meta: dict, step: int) -> None:
        """Accumulate statistics; on refine steps clone/split/prune (Parameters and Adam state replaced)."""
        if not self.cfg.enabled or step >= self.cfg.refine_stop:
            return
        if meta["means2d"].grad is None:  # nothing visible this step
            return
        if splats.num >= self.cfg.max_gaussians:
            self.strategy.refine_every = 10**9  # keep pruning statistics, stop growing
        self.strategy.step_post_backward(splats.params, optimizers, self.state, step, meta, packed=False)
        if self.cfg.reset_every > 0 and step > 0 and step % self.cfg.reset_every == 0:
            reset_opa(splats.params, optimizers, self.state, value=self.cfg.prune_opa * 2.0)

    def state_dict(self) -> dict[str, Any]:
        return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in self.state.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = dict(state)
