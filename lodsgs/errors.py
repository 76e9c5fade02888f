"""User-facing errors: the CLI prints their message on one line and exits non-zero, no traceback."""


class LodsgsError(Exception):
    """An error caused by user input or environment, with a message that names the problem and the fix."""


class Interrupted(LodsgsError):
    """Ctrl-C, SIGTERM or a cancellation ended a run between two steps (the CLI exits 130); the message says how
    to continue."""


class Diverged(LodsgsError):
    """The loss, a gradient or a parameter became NaN or infinite: the run stopped at ``step`` and wrote nothing
    from that state; ``checkpoint`` is the last one saved from finite values (None: none was)."""

    def __init__(self, step: int, what: str, checkpoint: str | None = None, hint: str = "try a lower optim.* lr"):
        self.step, self.what, self.checkpoint, self.hint = step, what, checkpoint, hint
        saved = repr(checkpoint) if checkpoint else "none"
        super().__init__(f"diverged at step {step}: {what}; the last good checkpoint is {saved}; {hint}")


class OutOfMemory(LodsgsError):
    """A step ran out of device memory: the message names the settings that shrink a step (``shrink``) and what
    was saved. ``whole``: the state is the last finished step's (a run folder saves it as ``checkpoint``); False
    when the step had begun changing the splats (then ``checkpoint`` is the last one saved before)."""

    def __init__(self, step: int, detail: str, shrink: str, whole: bool = True, checkpoint: str | None = None,
                 in_folder: bool = False):
        self.step, self.detail, self.shrink, self.whole, self.checkpoint = step, detail, shrink, whole, checkpoint
        if not in_folder:
            saved = "nothing was saved (no run folder)"
        elif whole:
            saved = (f"the checkpoint of step {step - 1} is saved to {checkpoint!r} (--resume continues it with "
                     "these settings where more memory is free; smaller settings start a new run)")
        else:
            saved = (f"the step had begun changing the splats, so nothing was saved from it; the last checkpoint is "
                     f"{repr(checkpoint) if checkpoint else 'none'}")
        super().__init__(f"out of memory in step {step} ({detail}); shrink the step: {shrink}; {saved}")
