"""The picture tests' shared run: the uninterrupted two-scale run that every stopped and resumed run
(test_resume.py, test_coarse_to_fine.py) must reproduce."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import pytest


class Reference(NamedTuple):
    content: Path
    style: Path
    image: bytes  # the output's bytes
    losses: list  # the 10 losses of its history
    run: dict  # its options (conftest's Run): .argv for the command line, **run for stylize()


@pytest.fixture(scope="session")
def reference(tmp_path_factory, make_pictures, run_cli, vgg_weights_path, tiny) -> Reference:
    """The uninterrupted run, 40 px at scales 0.5 and 1, 5 iterations each, seed 1, on generated
    pictures of its own."""
    d = tmp_path_factory.mktemp("reference")
    pictures = make_pictures(d, seed=11)
    content, style = pictures.save("c.png"), pictures.save("s.png", 40, 44)
    run = tiny.but(size=40, scales=(0.5, 1.0), iterations=5, seed=1)
    r = run_cli("stylize", str(content), str(style), "-o", str(d / "ref.png"), *run.argv, cwd=d,
                env={"SCRATCHNST_WEIGHTS": str(vgg_weights_path)})
    assert r.returncode == 0, r.stderr
    m = json.loads((d / "ref.json").read_text())
    assert len(m["history"]) == 10
    return Reference(content, style, (d / "ref.png").read_bytes(), [h["loss"] for h in m["history"]], run)
