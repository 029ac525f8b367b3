"""scratchnst.app.engine: the backend a run asks for, a missing CuPy or device as the user's one-line
error, in this process and through the command line (with no CuPy, a broken one, one that sees no
device, and this machine's own)."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest

from scratchnst.app.engine import array_module
from scratchnst.core.backend import get_backend, is_cupy
from scratchnst.errors import ScratchnstError


def test_array_module_makes_a_missing_cupy_the_users_error(monkeypatch):
    assert array_module("numpy") is np
    with pytest.raises(ScratchnstError, match=re.escape("unknown backend 'tpu' (choose from auto, numpy, cupy)")):
        array_module("tpu")
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` raises ImportError
    with pytest.raises(ScratchnstError, match="^backend 'cupy' needs CuPy and a CUDA device: CuPy is not installed"):
        array_module("cupy")
    assert array_module("auto") is np


@pytest.mark.weights
@pytest.mark.usefixtures("weights_env")
def test_cupy_backend_without_a_gpu(tmp_path, pics, out, tiny, run_cli, refused):
    if is_cupy(get_backend("auto")):
        pytest.skip("a CUDA device is present")
    refused(run_cli("stylize", *map(str, pics), "-o", str(out), *tiny.argv, "--backend", "cupy", cwd=tmp_path), out, "needs CuPy")


def _fake_cupy(tmp_path, body: str) -> dict:
    """Environment whose `import cupy` finds a stand-in package running `body` at import."""
    pkg = tmp_path / "fake" / "cupy"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(body)
    return {"PYTHONPATH": str(tmp_path / "fake")}


@pytest.mark.parametrize(
    "body,reason",
    [
        ("raise ImportError('No module named cupy', name='cupy')\n", "CuPy is not installed"),
        ("raise ImportError('libcudart.so.12: cannot open shared object file')\n", "CuPy failed to import (libcudart.so.12"),
        (
            "class _R:\n    @staticmethod\n    def getDeviceCount():\n        return 0\n"
            "class cuda:\n    runtime = _R\n",
            "CuPy sees no CUDA device",
        ),
    ],
    ids=["not-installed", "broken-install", "no-device"],
)
def test_cli_backend_cupy_without_a_device_is_one_line(tmp_path, pics, tiny, run_cli, body, reason):
    r = run_cli("stylize", *pics, "-o", tmp_path / "out.png", *tiny.argv, "--backend", "cupy", cwd=tmp_path, env=_fake_cupy(tmp_path, body))
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("scratchnst: error: backend 'cupy' needs CuPy and a CUDA device: ") and reason in lines[0], lines[0]
    assert not (tmp_path / "out.png").exists()


def test_cli_backend_cupy_here_is_one_line_or_runs(tmp_path, pics, tiny, run_cli):
    """With this machine's own CuPy (or none): no GPU means exit 2 with one line and no traceback."""
    if is_cupy(get_backend("auto")):
        pytest.skip("a CUDA device is present: the CuPy backend is available here")
    r = run_cli("stylize", *pics, "-o", tmp_path / "out.png", *tiny.argv, "--backend", "cupy", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "needs CuPy and a CUDA device" in r.stderr
