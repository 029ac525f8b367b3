"""The layout's promises: the core imports nothing from the application, no two modules import each
other (at any depth), imports sit at the top of a module unless they load an optional dependency, no
module reaches into another's private names, one evaluation never leaves the core, the weights are
read once per load, and only the user-error type becomes exit 2."""

from __future__ import annotations

import ast
import re
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


# What may be imported inside a function: the optional dependencies (and Dask, which the CLI loads only
# for the commands that use it), or a module of ours whose own top-level imports load one of them.
OPTIONAL = ("av", "cv2", "cupy", "cupyx", "matplotlib", "distributed", "dask", "torch")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _target(name: str) -> str | None:
    """The module of ours that an imported name lives in (a module, or the module holding the name)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _import_nodes(path: Path):
    """(node, at top level?) for every import statement of a file; imports under `if TYPE_CHECKING` skipped."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, id(node) in top or _in_module_level_try(tree, node)


def _in_module_level_try(tree: ast.Module, node) -> bool:
    """An import in a top-level try/except (an optional dependency probed at import time) counts as top level."""
    return any(isinstance(stmt, ast.Try) and any(node is n for n in ast.walk(stmt)) for stmt in tree.body)


def _names(node) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level or not node.module:
        return []
    return [f"{node.module}.{alias.name}" for alias in node.names] or [node.module]


def _graph(top_only: bool) -> dict[str, set[str]]:
    """module -> the modules of ours it imports (at any depth of the file, or at its top level only)."""
    graph = {}
    for name, path in MODULES.items():
        edges = set()
        for node, at_top in _import_nodes(path):
            if top_only and not at_top:
                continue
            edges.update(t for t in map(_target, _names(node)) if t and t != name)
        graph[name] = edges
    return graph


def test_no_two_modules_import_each_other():
    """No circle in the import graph of the package, counting imports inside functions too."""
    graph, state, path = _graph(top_only=False), {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                raise AssertionError("import circle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)


def _loads_optional(graph: dict[str, set[str]], module: str, seen=None) -> bool:
    """Whether importing `module` loads an optional dependency (through its top-level imports)."""
    seen = set() if seen is None else seen
    if module in seen:
        return False
    seen.add(module)
    for node, at_top in _import_nodes(MODULES[module]):
        if at_top and any(n.split(".")[0] in OPTIONAL for n in _names(node)):
            return True
    return any(_loads_optional(graph, m, seen) for m in graph[module])


def test_imports_sit_at_the_top_unless_they_load_an_optional_dependency():
    graph, late = _graph(top_only=True), []
    for name, path in MODULES.items():
        for node, at_top in _import_nodes(path):
            if at_top:
                continue
            for imported in _names(node):
                ours = _target(imported)
                optional = imported.split(".")[0] in OPTIONAL or (ours is not None and _loads_optional(graph, ours))
                if not optional and imported.split(".")[0] in ("scratchnst", *OPTIONAL):
                    late.append(f"{path.relative_to(PACKAGE)}:{node.lineno} imports {imported}")
    assert not late, "imports inside functions that could be at the top:\n" + "\n".join(late)


def test_lazy_imports_are_named_in_a_comment():
    """A module that imports something inside a function says so, and why, in a comment ("lazy", "lazily")."""
    silent = []
    for name, path in MODULES.items():
        if name == "scratchnst" or name.endswith("__main__"):
            continue
        if any(not at_top for _, at_top in _import_nodes(path)) and not re.search(r"\blaz(y|ily)\b", path.read_text(), re.I):
            silent.append(str(path.relative_to(PACKAGE)))
    assert not silent, f"modules with imports inside functions and no comment saying which stay lazy: {silent}"


def test_no_module_reaches_another_modules_private_names():
    reaches = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        aliases = {}  # local name -> a module of ours
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("scratchnst"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    if alias.name.startswith("_") and not alias.name.startswith("__") and _target(full) != name:
                        reaches.append(f"{path.relative_to(PACKAGE)}:{node.lineno} imports {full}")
                    if full in MODULES:
                        aliases[alias.asname or alias.name] = full
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in MODULES and alias.asname:
                        aliases[alias.asname] = alias.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__") and aliases[node.value.id] != name):
                reaches.append(f"{path.relative_to(PACKAGE)}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    assert not reaches, "\n".join(reaches)


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


def test_the_command_line_and_the_api_start_without_dask_or_the_web_server():
    """Importing the CLI and the Python API loads neither Dask nor tornado: only batch, video, serve and
    a stylize run on a cluster do, where they are used (lazy imports)."""
    code = "import sys, scratchnst, scratchnst.app.cli\nprint(sorted(m for m in ('distributed', 'dask', 'tornado') if m in sys.modules))\n"
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


def test_the_documented_api_resolves():
    """The names the README documents: the top-level package's API and the module paths it names."""
    import importlib

    for name in ("stylize", "load_vgg16", "NSTObjective", "preprocess", "deprocess", "batch", "VGG16", "Result"):
        assert callable(getattr(scratchnst, name)), name
    assert set(scratchnst.__all__) >= {"stylize", "load_vgg16", "NSTObjective", "preprocess", "deprocess", "batch", "gradcheck", "ops"}
    for name in ("run_checks", "explain_op", "vgg_layer_check", "numeric_gradient", "rel_error", "format_op_report", "format_layer_report"):
        assert callable(getattr(scratchnst.gradcheck, name)), name
    for module, name in (("scratchnst.app.video", "video"), ("scratchnst.app.batch", "grid"), ("scratchnst.app.picture.stylize", "resume")):
        assert callable(getattr(importlib.import_module(module), name)), f"{module}.{name}"
