"""The one domain error: what the user got wrong, printed as one line by the CLI."""


class ScratchnstError(Exception):
    """A user-facing error (bad input, missing weights, ...): the CLI prints it and exits 2."""

    exit_code = 2


class WeightsError(ScratchnstError):
    """Weights missing, unreadable or failing verification; the message names the file."""
