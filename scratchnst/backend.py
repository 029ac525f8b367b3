"""The one place that decides NumPy or CuPy; everything else derives `xp` from its inputs."""

from __future__ import annotations

import types

import numpy as np

from scratchnst.errors import ScratchnstError

BACKENDS = ("auto", "numpy", "cupy")
DTYPES = ("float32", "float64")


def _cupy_or_none() -> types.ModuleType | None:
    """CuPy when it imports and sees a CUDA device, else None (imported lazily)."""
    try:
        import cupy
    except Exception:
        return None
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
    except Exception:
        return None
    return cupy


def get_backend(name: str = "auto") -> types.ModuleType:
    """Return the array module for `name`: "numpy", "cupy" or "auto" (CuPy when usable)."""
    if name not in BACKENDS:
        raise ScratchnstError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})")
    if name == "numpy":
        return np
    cupy = _cupy_or_none()
    if cupy is not None:
        return cupy
    if name == "cupy":
        raise ScratchnstError(
            "backend 'cupy' needs CuPy and a CUDA device: pip install 'scratchnst[gpu]' on a GPU machine"
        )
    return np


def get_array_module(*arrays) -> types.ModuleType:
    """The module (numpy or cupy) the arrays live in, like cupy.get_array_module."""
    for a in arrays:
        if type(a).__module__.startswith("cupy"):
            import cupy

            return cupy
    return np


def to_host(a) -> np.ndarray:
    """A NumPy copy of a host or device array (the only device-to-host edge)."""
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def check_dtype(dtype: str) -> str:
    if str(dtype) not in DTYPES:
        raise ScratchnstError(f"unknown dtype {dtype!r} (choose from {', '.join(DTYPES)})")
    return str(dtype)


def backend_name(xp: types.ModuleType) -> str:
    return "cupy" if xp.__name__ == "cupy" else "numpy"
