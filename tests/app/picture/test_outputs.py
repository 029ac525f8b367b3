"""scratchnst.app.picture.outputs, through `python -m scratchnst stylize`: the picture at its size, the
manifest beside it (its keys, the weights' hash, the history and how its losses add up), the loss plot
(--plot) and the intermediate images (--save-every)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

pytestmark = [pytest.mark.weights, pytest.mark.usefixtures("weights_env")]


def test_cli_writes_image_and_manifest(tmp_path, pics, tiny, run_cli):
    out = tmp_path / "out" / "result.png"
    r = run_cli("stylize", str(pics.content), str(pics.style), "-o", str(out), *tiny.but(size=40, iterations=3).argv,
                "--plot", "--save-every", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert Image.open(out).size == (40, 33)  # long side 40, aspect of the 48×40 content
    m = json.loads(out.with_suffix(".json").read_text())
    assert m["status"] == "done"
    for key in ("version", "args", "backend", "dtype", "weights_sha256", "content_size", "style_sizes", "evaluations", "history", "final_loss", "elapsed_s"):
        assert key in m, key
    for key in ("content_weight", "style_weight", "tv_weight", "content_layers", "style_layers", "size", "style_scale", "init", "optimizer", "seed"):
        assert key in m["args"], key
    assert m["args"]["size"] == 40 and m["content_size"] == [48, 40] and m["style_sizes"] == [[40, 44]]
    assert m["weights_sha256"] == "d9a27cc1fc7f975ef8cff49180e794ccd7c4bc868ebb49740803b3bbaa8dbefd"
    assert [h["iteration"] for h in m["history"]] == [1, 2, 3]
    assert m["history"][-1]["loss"] < m["history"][0]["loss"]
    assert m["evaluations"] >= 4 and m["history"][-1]["evaluations"] == m["evaluations"]
    for h in m["history"]:
        total = m["args"]["content_weight"] * h["content"] + m["args"]["style_weight"] * h["style"] + m["args"]["tv_weight"] * h["tv"]
        assert h["loss"] == pytest.approx(total, rel=1e-5)
    assert (tmp_path / "out" / "result_loss.png").is_file()
    assert (tmp_path / "out" / "result_iter0002.png").is_file()
