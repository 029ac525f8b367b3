"""The core's wording of a failed check: a value outside its choices, an exception on one line.

The core raises ValueError naming its own parameter ("unknown pooling 'median' (choose from max,
avg)"); the application checks the same value with what="value" and puts the command-line flag in
front ("--pooling: unknown value 'median' (choose from max, avg)").
"""

from __future__ import annotations

from typing import Iterable


def unknown(what: str, value: object, choices: Iterable[str]) -> str:
    """The message for `value` not among `choices`: "unknown WHAT 'value' (choose from a, b)"."""
    return f"unknown {what} {value!r} (choose from {', '.join(choices)})"


def check_choice(what: str, value, choices: Iterable[str]):
    """`value` when it is one of `choices` (a tuple, or a dict's keys), else ValueError(unknown(...))."""
    choices = tuple(choices)
    if value not in choices:  # a tuple compares by ==: an unhashable value is simply not found
        raise ValueError(unknown(what, value, choices))
    return value


def one_line(value: object) -> str:
    """Text of an exception (or anything) on one line; an exception without text gives its type name."""
    text = " ".join(str(value).split())
    return text or (type(value).__name__ if isinstance(value, BaseException) else "")
