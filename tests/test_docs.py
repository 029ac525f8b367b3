"""docs/how-it-works.md runs: its python blocks execute in order and assert their claims; every linked
file exists; every `scratchnst.x.y` name it mentions resolves."""

import importlib
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "how-it-works.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"\]\(([^)\s]+)\)")
NAME = re.compile(r"\bscratchnst(?:\.\w+)+")


def _text() -> str:
    return DOC.read_text(encoding="utf-8")


def test_the_examples_run():
    blocks = BLOCK.findall(_text())
    assert len(blocks) >= 10
    namespace = {"__name__": "how_it_works"}
    for k, code in enumerate(blocks, start=1):
        try:
            exec(compile(code, f"{DOC.name} block {k}", "exec"), namespace)
        except Exception as e:  # name the block, so a failure points at the paragraph
            pytest.fail(f"{DOC.name}, python block {k} failed: {type(e).__name__}: {e}\n{code}")


def test_links_point_at_files():
    links = [link for link in LINK.findall(_text()) if not link.startswith(("http://", "https://", "#"))]
    assert len(links) >= 10
    missing = [link for link in links if not (DOC.parent / link.split("#")[0]).resolve().exists()]
    assert not missing, f"links to missing files: {missing}"


def _resolve(dotted: str):
    """Import the longest importable prefix, then getattr the rest."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def test_every_named_function_exists():
    names = sorted(set(NAME.findall(_text())))
    assert len(names) >= 15
    unresolved = []
    for name in names:
        try:
            _resolve(name)
        except (ImportError, AttributeError):
            unresolved.append(name)
    assert not unresolved, f"names in the docs that do not exist: {unresolved}"


def test_each_step_links_its_code():
    text = _text()
    for target in ("core/preprocess.py", "core/ops/conv.py", "core/ops/relu.py", "core/ops/pool.py", "core/ops/gram.py",
                   "core/vgg.py", "core/losses.py", "core/objective.py", "core/optim.py"):
        assert f"](../scratchnst/{target})" in text, target
