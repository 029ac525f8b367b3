"""scratchnst.app.picture.stylize, the workflow end to end on small generated pictures (real weights,
tiny sizes): the embedded default pictures, the same bytes for the same seed and any thread count, the
style blend and the content layers reaching the objective."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import scratchnst

pytestmark = [pytest.mark.weights, pytest.mark.usefixtures("weights_env")]


@pytest.fixture
def small(tiny):
    """The tiny run at 40 px for 3 iterations."""
    return tiny.but(size=40, iterations=3)


def test_no_arguments_runs_the_embedded_default(tmp_path, tiny, run_cli):
    r = run_cli("stylize", *tiny.but(iterations=2).argv, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "stylized.png").size == (32, 32)
    m = json.loads((tmp_path / "stylized.json").read_text())
    assert m["content"] == "<default>" and m["styles"] == ["<default>"]


def test_same_seed_same_bytes_other_seed_differs(tmp_path, pics, small, run_cli):
    outs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        out = tmp_path / f"{name}.png"
        r = run_cli("stylize", str(pics.content), str(pics.style), "-o", str(out), *small.but(seed=seed).argv, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    assert outs[0] != outs[2]


def test_same_bytes_whatever_the_thread_count(tmp_path, pics, tiny, run_cli, monkeypatch):
    """The work split over our threads never changes the order of a floating-point sum: 1, 2 or 4
    threads, and the machine's default, give the same output bytes. 96 px, so that the convs' bands,
    ReLU and pooling are really split."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # the default: no thread count set
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    outs = {}
    for threads in ("1", "2", "4", None):
        out = tmp_path / f"t{threads}.png"
        env = {} if threads is None else {"OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}
        args = [str(pics.content), str(pics.style), "-o", str(out), *tiny.but(size=96, iterations=2).argv]
        proc = run_cli("stylize", *args, cwd=tmp_path, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
        outs[threads] = out.read_bytes()
    assert len(set(outs.values())) == 1, [k for k in outs if outs[k] != outs["1"]]


def test_style_blend_weights_reach_the_objective(pictures, pics, small):
    """Blend 1,0 over (style, style2) must give exactly the single-style result; 0,1 must not."""
    content, style, style2 = str(pics.content), str(pics.style), str(pictures.save("style2.png", 44, 44))
    run = small.but(init="content")
    single = scratchnst.stylize(content, [style], **run).image
    blend = scratchnst.stylize(content, [style, style2], style_blend=(1, 0), **run).image
    other = scratchnst.stylize(content, [style, style2], style_blend=(0, 1), **run).image
    assert np.array_equal(np.asarray(single), np.asarray(blend))
    assert not np.array_equal(np.asarray(single), np.asarray(other))


def test_content_layers_and_weights_reach_the_objective(pics, small):
    """With style weight 0 and content init, the loss is already 0: the optimiser's first evaluation
    finds a zero gradient and takes no step (with a style weight it would)."""
    res = scratchnst.stylize(str(pics.content), [str(pics.style)], style_weight=0, tv_weight=0, init="content", content_layers=("relu2_1",), **small)
    assert res.history == [] and res.manifest["final_loss"] == 0.0 and res.manifest["evaluations"] == 1
    assert res.manifest["args"]["content_layers"] == ["relu2_1"]
    styled = scratchnst.stylize(str(pics.content), [str(pics.style)], tv_weight=0, init="content", content_layers=("relu2_1",), **small)
    assert len(styled.history) == 3 and styled.history[-1]["content"] > 0 and styled.history[-1]["style"] > 0
