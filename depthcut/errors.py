"""User-facing errors.

Anything the *user* can fix (a missing file, a model we cannot trace, a budget that no plan meets, a
corrupted cache) raises a subclass of :class:`DepthcutError`. The CLI prints its message and exits with a
non-zero status and no traceback; programming errors still raise ordinary exceptions.
"""


class DepthcutError(Exception):
    """An error the user can act on; its message names the problem (module path, op, budget, file)."""

    exit_code = 2


class UnsupportedModelError(DepthcutError):
    """The model cannot be analysed: untraceable, no convolution chain, unknown architecture..."""


class InfeasibleBudgetError(DepthcutError):
    """No plan meets the latency budget; the message states the minimum achievable latency."""

    def __init__(self, message: str, minimum: float | None = None):
        super().__init__(message)
        self.minimum = minimum


class CacheError(DepthcutError):
    """A cache file is corrupted or was written for another machine / model."""


class DataError(DepthcutError):
    """A data set is missing or unreadable; the message says how to install it."""
