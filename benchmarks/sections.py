"""Where a guidance step's time goes, measured from outside: ``timed_sections(guidance)`` wraps the calls that
make up ``Guidance.forward`` (text encoding, VAE encode, the prior loss, the UNet's CFG pair, the fused op) with
CUDA-synchronized wall clocks for as long as the ``with`` block lasts, and restores them afterwards.
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from unittest import mock

import torch

import lodsgs.prior.guidance as guidance_module
from lodsgs.prior.guidance import Guidance


@contextmanager
def timed_sections(guidance: Guidance) -> Iterator[dict[str, float]]:
    """Yield a dict that accumulates seconds per section (text, encode, prior_loss, unet, fused) of every
    guidance step run inside the block."""
    times: dict[str, float] = defaultdict(float)
    sync = torch.cuda.synchronize if guidance.prior.device.type == "cuda" else (lambda: None)

    def timed(name: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            sync()
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                sync()
                times[name] += time.perf_counter() - start
        return wrapper

    targets = [(guidance, "text_embeddings", "text"), (guidance.prior, "encode_images", "encode"),
               (guidance, "_prior_loss", "prior_loss"), (guidance, "_noise_predictions", "unet"),
               (guidance_module, "guidance_loss", "fused")]
    with ExitStack() as stack:
        for owner, attr, name in targets:
            stack.enter_context(mock.patch.object(owner, attr, timed(name, getattr(owner, attr))))
        yield times
