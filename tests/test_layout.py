"""The layout's promises: the core imports nothing from the application, one evaluation never leaves
the core, the weights are read once per load, and only the user-error type becomes exit 2."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import scratchnst
from scratchnst.app import cli
from scratchnst.app.files import weights as w

PACKAGE = Path(scratchnst.__file__).parent


def _imports(path: Path) -> set[str]:
    """Every module a file imports (absolute names), at any depth of the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_core_imports_nothing_from_the_application():
    core = sorted((PACKAGE / "core").rglob("*.py"))
    assert len(core) >= 10
    for path in core:
        outside = {n for n in _imports(path) if n.startswith("scratchnst.") and not n.startswith(("scratchnst.core", "scratchnst.errors"))}
        assert not outside, f"{path.relative_to(PACKAGE)} imports {sorted(outside)}"


def test_an_evaluation_loads_no_application_module():
    """Importing the core and running one evaluation leaves every scratchnst.app module unloaded."""
    code = (
        "import sys, numpy as np\n"
        "from scratchnst.core.objective import NSTObjective\n"
        "from scratchnst.core.vgg import VGG16\n"
        "rng = np.random.default_rng(0)\n"
        "widths = [(3, 4), (4, 4), (4, 5), (5, 5), (5, 6), (6, 6), (6, 6), (6, 6), (6, 6), (6, 6), (6, 6), (6, 6), (6, 6)]\n"
        "net = VGG16([(rng.standard_normal((f, c, 3, 3)), rng.standard_normal(f)) for c, f in widths])\n"
        "img = lambda: rng.uniform(-100, 100, (1, 3, 32, 32))\n"
        "NSTObjective(net, img(), [img()], normalize='size').loss_and_grad(img())\n"
        "print(sorted(m for m in sys.modules if m.startswith('scratchnst.') and not m.startswith(('scratchnst.core', 'scratchnst.errors'))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["[]"]


def test_no_module_shares_a_name_with_the_standard_library():
    stdlib = set(sys.stdlib_module_names)
    clashes = [p.relative_to(PACKAGE) for p in PACKAGE.rglob("*.py") if p.stem in stdlib and p.stem not in ("__init__", "__main__")]
    assert not clashes


@pytest.mark.weights
def test_the_weights_file_is_read_and_hashed_once_per_load(vgg_weights_path, monkeypatch):
    reads, hashes = [], []
    read, digest = w._load, w.content_sha256
    monkeypatch.setattr(w, "_load", lambda path: reads.append(path) or read(path))
    monkeypatch.setattr(w, "content_sha256", lambda layers: hashes.append(1) or digest(layers))
    net = w.load_vgg16(vgg_weights_path, backend="numpy")
    assert (len(reads), len(hashes)) == (1, 1)
    assert net.weights_sha256 == w.EXPECTED_SHA256 and net.weights_path == Path(vgg_weights_path)


def test_only_the_user_error_type_is_exit_2(monkeypatch, capsys):
    """A ValueError from inside the engine is a bug: it propagates (a traceback), never a tidy exit 2."""
    from scratchnst import gradcheck

    def broken(*args, **kwargs):
        raise ValueError("an engine bug")

    monkeypatch.setattr(gradcheck, "explain_op", broken)
    with pytest.raises(ValueError, match="an engine bug"):
        cli.main(["gradcheck", "--op", "relu"])
    monkeypatch.setattr(gradcheck, "explain_op", lambda *a, **k: (_ for _ in ()).throw(scratchnst.errors.ScratchnstError("bad input")))
    assert cli.main(["gradcheck", "--op", "relu"]) == 2
    assert capsys.readouterr().err.strip().endswith("error: bad input")
