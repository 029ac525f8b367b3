"""The one domain error: what the user got wrong, printed as one line by the CLI."""


class ScratchnstError(Exception):
    """A user-facing error (bad input, missing weights, ...): the CLI prints it and exits 2."""

    exit_code = 2


class WeightsError(ScratchnstError):
    """Weights missing, unreadable or failing verification; the message names the file."""


def one_line(value: object) -> str:
    """Text of an exception (or anything) on one line; an exception without text gives its type name."""
    text = " ".join(str(value).split())
    return text or (type(value).__name__ if isinstance(value, BaseException) else "")
