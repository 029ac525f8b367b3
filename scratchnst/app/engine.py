"""The engine a run asks for, as the application asks for it: the array module of --backend, where a
missing CuPy or CUDA device is the user's one-line error rather than the core's BackendUnavailable."""

from __future__ import annotations

import types

from scratchnst.core.backend import BackendUnavailable, get_backend
from scratchnst.errors import ScratchnstError


def array_module(backend: str) -> types.ModuleType:
    """The array module of --backend (core.backend.get_backend); ScratchnstError for an unknown name,
    or for "cupy" where CuPy or a CUDA device is missing (the message says which)."""
    try:
        return get_backend(backend)
    except (ValueError, BackendUnavailable) as exc:
        raise ScratchnstError(str(exc)) from None
