"""scratchnst.app.engine: the backend a run asks for, a missing CuPy or device as the user's one-line error."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest

from scratchnst.app.engine import array_module
from scratchnst.errors import ScratchnstError


def test_array_module_makes_a_missing_cupy_the_users_error(monkeypatch):
    assert array_module("numpy") is np
    with pytest.raises(ScratchnstError, match=re.escape("unknown backend 'tpu' (choose from auto, numpy, cupy)")):
        array_module("tpu")
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` raises ImportError
    with pytest.raises(ScratchnstError, match="^backend 'cupy' needs CuPy and a CUDA device: CuPy is not installed"):
        array_module("cupy")
    assert array_module("auto") is np
