"""The one place that decides NumPy or CuPy; everything else derives `xp` from its inputs.

CuPy is imported lazily, here only, the first time a backend other than "numpy" is asked for.
"""

from __future__ import annotations

import types

import numpy as np

from scratchnst.core.checks import check_choice, one_line, unknown

BACKENDS = ("auto", "numpy", "cupy")
DTYPES = ("float32", "float64")
GPU_HELP = "pip install 'scratchnst[gpu]' on a machine with an NVIDIA GPU; see docs/gpu.md"

_working: set[int] = set()  # id() of CuPy modules that passed the smoke test in this process


class BackendUnavailable(RuntimeError):
    """Backend "cupy" asked for where CuPy or a CUDA device is missing: the machine's state, not a bad
    argument (that is a ValueError). The application reports it as the user's error."""


def _probe_cupy() -> tuple[types.ModuleType | None, str]:
    """(cupy, "") when CuPy imports, sees a CUDA device and runs a kernel; else (None, why not).

    The smoke test (an elementwise kernel and a reduction) catches installs whose runtime
    libraries or driver do not match, which would otherwise fail at the first real kernel.
    """
    try:
        import cupy
    except ImportError as exc:
        if getattr(exc, "name", None) == "cupy":
            return None, "CuPy is not installed"
        return None, f"CuPy failed to import ({one_line(exc)})"
    except Exception as exc:  # a broken install can raise anything at import time
        return None, f"CuPy failed to import ({one_line(exc)})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return None, f"CuPy sees no CUDA device ({one_line(exc)})"
    if count < 1:
        return None, "CuPy sees no CUDA device"
    if id(cupy) not in _working:
        try:
            if int((cupy.arange(3) * 2).sum()) != 6:
                return None, "CuPy's smoke test computed a wrong result"
        except Exception as exc:
            return None, f"CuPy cannot run a kernel on the GPU ({one_line(exc)})"
        _working.add(id(cupy))
    return cupy, ""


def get_backend(name: str = "auto") -> types.ModuleType:
    """Return the array module for `name`: "numpy", "cupy" or "auto" (CuPy when usable, else NumPy).

    An unknown name raises ValueError; "cupy" without a usable CuPy and CUDA device raises
    BackendUnavailable saying which is missing.
    """
    check_choice("backend", name, BACKENDS)
    if name == "numpy":
        return np
    cupy, why = _probe_cupy()
    if cupy is not None:
        return cupy
    if name == "cupy":
        raise BackendUnavailable(f"backend 'cupy' needs CuPy and a CUDA device: {why}; {GPU_HELP}")
    return np


def is_cupy(xp: types.ModuleType) -> bool:
    """Whether the array module xp is CuPy (the one test of the backend; NumPy otherwise)."""
    return xp.__name__ == "cupy"


def _is_cupy_array(a) -> bool:
    return type(a).__module__.split(".")[0] == "cupy"


def get_array_module(*arrays) -> types.ModuleType:
    """The module (numpy or cupy) the arrays live in, like cupy.get_array_module."""
    for a in arrays:
        if _is_cupy_array(a):
            import cupy

            return cupy
    return np


def to_host(a) -> np.ndarray:
    """A NumPy copy of a host or device array (the only device-to-host edge)."""
    return a.get() if _is_cupy_array(a) else np.asarray(a)


def check_dtype(dtype: str) -> str:
    """The dtype's name, one of DTYPES; ValueError otherwise."""
    if str(dtype) not in DTYPES:
        raise ValueError(unknown("dtype", dtype, DTYPES))
    return str(dtype)


def backend_name(xp: types.ModuleType) -> str:
    return "cupy" if is_cupy(xp) else "numpy"
