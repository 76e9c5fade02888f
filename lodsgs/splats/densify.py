"""Densification and pruning through gsplat's DefaultStrategy, on either renderer, plus the opacity reset.

gsplat 1.5.3's own periodic opacity reset never fires (``step % n == 0 & step > 0`` parses as a chained
comparison that is always False; gsplat PR #776), so ``reset_every`` is
applied here with ``gsplat.strategy.ops.reset_opa``. gsplat is pinned to 1.5.3, so the two never both fire.

Call order per step (gsplat's trainers): render -> ``step_pre_backward`` -> loss.backward() -> optimizer
steps -> ``step_post_backward``. Clone/split/prune replace the Parameters in ``splats.params`` and their Adam
state in place, so read the splats through ``params`` after each step.
"""

from __future__ import annotations

from typing import Any

import gsplat
import torch
from gsplat.strategy import DefaultStrategy
from gsplat.strategy.ops import reset_opa

from lodsgs.config import DensifyConfig
from lodsgs.errors import LodsgsError
from lodsgs.splats.model import Splats

GSPLAT_VERSION = "1.5.3"  # the reset workaround below and _CountingStrategy's hooks are written for it


class _CountingStrategy(DefaultStrategy):
    """DefaultStrategy that remembers how many Gaussians its last refine grew and pruned (for the run log)."""

    def _grow_gs(self, *args, **kwargs) -> tuple[int, int]:
        n_dupli, n_split = super()._grow_gs(*args, **kwargs)
        self.last_grown = n_dupli + n_split  # a duplicate adds one, a split turns one into two
        return n_dupli, n_split

    def _prune_gs(self, *args, **kwargs) -> int:
        self.last_pruned = super()._prune_gs(*args, **kwargs)
        return self.last_pruned


class Densifier:
    """A DefaultStrategy plus its running state (grad2d, count, scene_scale); checkpoint with ``state_dict``."""

    def __init__(self, cfg: DensifyConfig):
        if cfg.enabled and gsplat.__version__ != GSPLAT_VERSION:
            raise LodsgsError(f"lodsgs densification is written for gsplat {GSPLAT_VERSION} (its own opacity reset "
                              f"never fires there, gsplat PR #776, so lodsgs resets itself); found gsplat "
                              f"{gsplat.__version__}: install gsplat=={GSPLAT_VERSION}, or set densify.enabled=false")
        self.cfg = cfg
        self.strategy = _CountingStrategy(
            prune_opa=cfg.prune_opa, grow_grad2d=cfg.grow_grad2d, grow_scale3d=cfg.grow_scale3d,
            prune_scale3d=cfg.prune_scale3d, refine_start_iter=cfg.refine_start, refine_stop_iter=cfg.refine_stop,
            refine_every=cfg.refine_every,
            # gsplat prunes too-large Gaussians only for step > reset_every: without resets, from refine_start on
            reset_every=cfg.reset_every if cfg.reset_every > 0 else max(cfg.refine_start, 1),
        )
        self.state: dict[str, Any] = self.strategy.initialize_state(scene_scale=cfg.scene_scale)
        self.state |= {"grown": 0, "pruned": 0}  # totals over the run, for the log (ints: gsplat's ops skip them)

    def active(self, step: int) -> bool:
        return self.cfg.enabled and step < self.cfg.refine_stop

    def step_pre_backward(self, splats: Splats, optimizers: dict, meta: dict, step: int) -> None:
        """Ask autograd to keep ``meta["means2d"].grad`` (the screen-space gradients densification uses)."""
        if self.active(step):
            self.strategy.step_pre_backward(splats.params, optimizers, self.state, step, meta)

    def step_post_backward(self, splats: Splats, optimizers: dict, meta: dict, step: int) -> None:
        """Accumulate gradient statistics; on refine steps clone/split/prune; on reset steps reset opacity."""
        if not self.active(step):
            return
        # at the cap, growth stops (no gradient passes an infinite threshold) while pruning goes on; the
        # threshold is only read on refine steps, so the quantile is computed there and nowhere else
        refine = step > self.strategy.refine_start_iter and step % self.strategy.refine_every == 0
        at_cap = splats.num >= self.cfg.max_gaussians
        threshold = self._grow_threshold() if refine else self.cfg.grow_grad2d
        self.strategy.grow_grad2d = float("inf") if at_cap else threshold
        if meta["means2d"].grad is not None:  # None when nothing was in view of any camera
            self.strategy.last_grown = self.strategy.last_pruned = 0
            self.strategy.step_post_backward(splats.params, optimizers, self.state, step, meta, packed=False)
            self.state["grown"] += self.strategy.last_grown
            self.state["pruned"] += self.strategy.last_pruned
        if self.cfg.reset_every > 0 and step > 0 and step % self.cfg.reset_every == 0:
            reset_opa(splats.params, optimizers, self.state, value=self.cfg.prune_opa * 2.0)

    def _grow_threshold(self) -> float:
        """grow_grad2d, or the grow_quantile of the mean gradients accumulated since the last refine."""
        q, grad, count = self.cfg.grow_quantile, self.state.get("grad2d"), self.state.get("count")
        if q <= 0 or grad is None or not (count > 0).any():
            return self.cfg.grow_grad2d
        return torch.quantile((grad / count.clamp_min(1))[count > 0].float(), q).item()

    def state_dict(self) -> dict[str, Any]:
        return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in self.state.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = {"grown": 0, "pruned": 0} | {k: (v.clone() if isinstance(v, torch.Tensor) else v)
                                                   for k, v in state.items()}
