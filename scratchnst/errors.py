"""The one domain error: what the user got wrong, printed as one line by the CLI.

The core (scratchnst.core) raises ValueError naming its own parameters and knows nothing of this
module; the application checks its input once, at its edge, and raises ScratchnstError naming the
command-line flag. Where it leans on a check only the core makes, `user_error` turns that check's
ValueError into a ScratchnstError.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from scratchnst.core.checks import one_line  # its home is the core's (which cannot import this module)

__all__ = ["ScratchnstError", "WeightsError", "one_line", "user_error"]


class ScratchnstError(Exception):
    """A user-facing error (bad input, missing weights, ...): the CLI prints it and exits 2."""

    exit_code = 2


class WeightsError(ScratchnstError):
    """Weights missing, unreadable or failing verification; the message names the file."""


@contextmanager
def user_error(flag: str = "") -> Iterator[None]:
    """A ValueError raised inside (a core check of the user's value) becomes a ScratchnstError with
    the same text, after "FLAG: " when `flag` is given."""
    try:
        yield
    except ValueError as exc:
        raise ScratchnstError(f"{flag}: {exc}" if flag else str(exc)) from None
