"""scratchnst.core.backend without a GPU: NumPy is the backend wherever CuPy is missing, and asking for
CuPy there is the core's runtime error (the application turns it into the user's one line)."""

import sys

import numpy as np
import pytest

from scratchnst.core.backend import BackendUnavailable, get_backend


def test_get_backend_cupy_without_cupy_raises(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` raise ImportError
    with pytest.raises(BackendUnavailable, match=r"needs CuPy and a CUDA device: CuPy is not installed"):
        get_backend("cupy")
    assert get_backend("auto") is np
    assert get_backend("numpy") is np
