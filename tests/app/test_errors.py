"""The error policy. The core raises ValueError naming its own parameters and imports nothing from
scratchnst.errors; the application raises the one ScratchnstError naming the flag, and the CLI prints it
as one line with exit 2; running out of memory is one line with exit 1; anything else is a bug."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import ImageFile

import scratchnst
from scratchnst.app.cli import main
from scratchnst.app.files.images import load_image
from scratchnst.app.picture.settings import Settings
from scratchnst.core.backend import BackendUnavailable, check_dtype, get_backend
from scratchnst.core.checks import check_choice
from scratchnst.core.objective import check_mask_count, check_normalize, check_weight, check_weights
from scratchnst.core.optim import LBFGS, make_optimizer
from scratchnst.core.preprocess import preprocess
from scratchnst.core.vgg import CONVS, POOLINGS, VGG16, check_layers
from scratchnst.errors import ScratchnstError, user_error

CORE = Path(scratchnst.__file__).parent / "core"


def test_the_core_imports_nothing_from_scratchnst_errors():
    core = sorted(CORE.rglob("*.py"))
    assert len(core) >= 10, core
    for path in core:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.startswith("scratchnst.errors") for n in names), f"{path.name} imports scratchnst.errors"


def _quadratic(x):
    return float((x * x).sum()), 2 * x


CORE_CHECKS = [
    (lambda: check_choice("pooling", "median", POOLINGS), "unknown pooling 'median' (choose from max, avg)"),
    (lambda: get_backend("tpu"), "unknown backend 'tpu' (choose from auto, numpy, cupy)"),
    (lambda: check_dtype("float16"), "unknown dtype 'float16' (choose from float32, float64)"),
    (lambda: make_optimizer("sgd", np.zeros(2), _quadratic), "unknown optimizer 'sgd' (choose from lbfgs, adam)"),
    (lambda: VGG16([(None, None)] * len(CONVS), pooling="median"), "unknown pooling 'median' (choose from max, avg)"),
    (lambda: VGG16([(None, None)] * len(CONVS), conv="fft"), "unknown conv 'fft' (choose from auto, im2col, winograd)"),
    (lambda: check_normalize("pixels"), "unknown normalize 'pixels' (choose from size, none)"),
    (lambda: check_layers(["relu9_9"]), "unknown layer 'relu9_9' (layers are conv1_1, relu1_1, ..., relu5_3, pool5)"),
    (lambda: check_weight("style_weight", -1), "style_weight must be a finite number ≥ 0 (got -1.0)"),
    (lambda: check_weight("tv_weight", "x"), "tv_weight must be a number (got 'x')"),
    (lambda: check_weights("style_blend", [1], 2, "style images"), "style_blend has 1 values for 2 style images"),
    (lambda: check_mask_count(1, 2, None), "style_masks has 1 masks for 2 style images (one mask per style)"),
    (lambda: preprocess(np.zeros((8, 8, 3), np.uint8)), "image is 8x8, smaller than 16 px on a side"),
    (lambda: LBFGS(np.zeros(2), _quadratic, history=0), "lbfgs: history and max_line_search must be >= 1, learning_rate > 0"),
]


@pytest.mark.parametrize("call, message", CORE_CHECKS, ids=[m for _, m in CORE_CHECKS])
def test_a_core_check_raises_valueerror_naming_its_parameter_not_a_flag(call, message):
    with pytest.raises(ValueError) as info:
        call()
    assert str(info.value) == message
    assert not isinstance(info.value, ScratchnstError) and "--" not in message


def test_a_missing_cupy_is_the_cores_runtime_error_not_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` raises ImportError
    with pytest.raises(BackendUnavailable, match="^backend 'cupy' needs CuPy and a CUDA device: CuPy is not installed") as info:
        get_backend("cupy")
    assert isinstance(info.value, RuntimeError) and not isinstance(info.value, (ValueError, ScratchnstError))


def test_user_error_turns_a_check_into_the_users_error_and_nothing_else():
    with pytest.raises(ScratchnstError, match=r"^--pooling: unknown value 'median' \(choose from max, avg\)$"):
        with user_error("--pooling"):
            check_choice("value", "median", POOLINGS)
    with pytest.raises(ScratchnstError, match=r"^--tv-weight must be a number \(got 'x'\)$"):
        with user_error():
            check_weight("--tv-weight", "x")
    with pytest.raises(TypeError):  # only ValueError is a check's; anything else passes through
        with user_error("--size"):
            raise TypeError("a bug")


# -- the command line ---------------------------------------------------------------------------------


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.strip()


@pytest.mark.parametrize("argv, line", [
    (["stylize", "--style-layers", "relu9_9"], "scratchnst: error: --style-layers: unknown layer 'relu9_9' (layers are conv1_1, relu1_1, ..., relu5_3, pool5)"),
    (["stylize", "--style-weight", "nan"], "scratchnst: error: --style-weight must be a finite number ≥ 0 (got nan)"),
    (["stylize", "--style-blend", "1,1"], "scratchnst: error: --style-blend has 2 values for 1 style images"),
    (["bench", "--conv", "fft"], "scratchnst: error: --conv: unknown value 'fft' (choose from auto, im2col, winograd)"),
])
def test_a_user_error_is_one_line_and_exit_2(tmp_path, capsys, argv, line):
    assert main([*argv, *(["-o", str(tmp_path / "out.png")] if argv[0] == "stylize" else [])]) == 2
    assert _one_line(capsys) == line


def test_a_missing_cupy_on_the_command_line_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    assert main(["inspect", "--backend", "cupy", "-o", str(tmp_path / "site")]) == 2
    assert _one_line(capsys).startswith("scratchnst: error: backend 'cupy' needs CuPy and a CUDA device: CuPy is not installed")


@pytest.mark.parametrize("error, line", [
    (MemoryError(), "scratchnst: error: out of memory; try a smaller --size (or fewer/smaller style images)"),
    (MemoryError("Unable to allocate 3.00 GiB"), "scratchnst: error: out of memory (Unable to allocate 3.00 GiB); try a smaller --size (or fewer/smaller style images)"),
])
def test_running_out_of_memory_is_one_line_and_exit_1(tmp_path, capsys, monkeypatch, error, line):
    def out_of_memory(self, n_styles):
        raise error

    monkeypatch.setattr(Settings, "validated", out_of_memory)
    assert main(["stylize", "-o", str(tmp_path / "out.png")]) == 1
    assert _one_line(capsys) == line


def test_out_of_memory_while_decoding_is_memoryerror_naming_the_file(tmp_path, capsys, monkeypatch, pics):
    pictures = list(pics)

    def out_of_memory(self):
        raise MemoryError()

    monkeypatch.setattr(ImageFile.ImageFile, "load", out_of_memory)
    with pytest.raises(MemoryError, match=f"^while decoding {re.escape(str(pictures[0]))}$"):
        load_image(pictures[0])
    assert main(["stylize", *map(str, pictures), "-o", str(tmp_path / "out.png")]) == 1
    assert _one_line(capsys) == f"scratchnst: error: out of memory (while decoding {pictures[0]}); try a smaller --size (or fewer/smaller style images)"


def test_any_other_exception_is_a_bug_with_its_traceback(tmp_path, monkeypatch):
    def broken(self, n_styles):
        raise ValueError("a bug in the application")

    monkeypatch.setattr(Settings, "validated", broken)
    with pytest.raises(ValueError, match="a bug in the application"):
        main(["stylize", "-o", str(tmp_path / "out.png")])
