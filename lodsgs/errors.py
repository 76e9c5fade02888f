"""User-facing errors: the CLI prints their message on one line and exits non-zero, no traceback."""


class LodsgsError(Exception):
    """An error caused by user input or environment, with a message that names the problem and the fix."""


class Interrupted(LodsgsError):
    """Ctrl-C, SIGTERM or a cancellation ended a run between two steps (the CLI exits 130); the message says how
    to continue."""
