"""`python -m scratchnst stylize` end to end on small generated images (real weights, tiny sizes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import scratchnst
from scratchnst.app.files import images as im
from scratchnst.app.picture.stylize import resume

pytestmark = pytest.mark.weights

FAST = ["--size", "40", "--iterations", "3", "--scales", "1", "--quiet"]


@pytest.fixture(autouse=True)
def _weights(vgg_weights_path, monkeypatch):
    monkeypatch.setenv("SCRATCHNST_WEIGHTS", str(vgg_weights_path))


def _picture(path, rng, size=(48, 40), smooth=True):
    """A random but structured RGB picture: smooth colour blobs plus stripes."""
    h, w = size[1], size[0]
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.uniform(0, 255, 3)
    img = np.stack([base[c] * 0.5 + 60 * np.sin(xx / rng.uniform(2, 6) + c) + 60 * np.cos(yy / rng.uniform(2, 6)) for c in range(3)], -1)
    img = np.clip(img + (0 if smooth else rng.normal(0, 20, img.shape)), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path)
    return path


def _run(args, cwd, env_extra=None, **kw):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "scratchnst", "stylize", *args], cwd=cwd, capture_output=True, text=True, env=env, **kw)


@pytest.fixture
def pics(tmp_path, rng):
    return {
        "content": _picture(tmp_path / "content.png", rng),
        "style": _picture(tmp_path / "style.png", rng, size=(30, 52), smooth=False),
        "style2": _picture(tmp_path / "style2.png", rng, size=(44, 44)),
    }


def test_cli_writes_image_and_manifest(tmp_path, pics):
    out = tmp_path / "out" / "result.png"
    r = _run([str(pics["content"]), str(pics["style"]), "-o", str(out), *FAST, "--plot", "--save-every", "2"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert Image.open(out).size == (40, 33)  # long side 40, aspect of the 48×40 content
    m = json.loads(out.with_suffix(".json").read_text())
    assert m["status"] == "done"
    for key in ("version", "args", "backend", "dtype", "weights_sha256", "content_size", "style_sizes", "evaluations", "history", "final_loss", "elapsed_s"):
        assert key in m, key
    for key in ("content_weight", "style_weight", "tv_weight", "content_layers", "style_layers", "size", "style_scale", "init", "optimizer", "seed"):
        assert key in m["args"], key
    assert m["args"]["size"] == 40 and m["content_size"] == [48, 40] and m["style_sizes"] == [[30, 52]]
    assert m["weights_sha256"] == "d9a27cc1fc7f975ef8cff49180e794ccd7c4bc868ebb49740803b3bbaa8dbefd"
    assert [h["iteration"] for h in m["history"]] == [1, 2, 3]
    assert m["history"][-1]["loss"] < m["history"][0]["loss"]
    assert m["evaluations"] >= 4 and m["history"][-1]["evaluations"] == m["evaluations"]
    for h in m["history"]:
        total = m["args"]["content_weight"] * h["content"] + m["args"]["style_weight"] * h["style"] + m["args"]["tv_weight"] * h["tv"]
        assert h["loss"] == pytest.approx(total, rel=1e-5)
    assert (tmp_path / "out" / "result_loss.png").is_file()
    assert (tmp_path / "out" / "result_iter0002.png").is_file()


def test_no_arguments_runs_the_embedded_default(tmp_path):
    r = _run(["--size", "32", "--iterations", "2", "--scales", "1", "--quiet"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "stylized.png").size == (32, 32)
    m = json.loads((tmp_path / "stylized.json").read_text())
    assert m["content"] == "<default>" and m["styles"] == ["<default>"]


def test_same_seed_same_bytes_other_seed_differs(tmp_path, pics):
    outs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        out = tmp_path / f"{name}.png"
        r = _run([str(pics["content"]), str(pics["style"]), "-o", str(out), *FAST, "--seed", str(seed)], tmp_path)
        assert r.returncode == 0, r.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    assert outs[0] != outs[2]


def test_same_bytes_whatever_the_thread_count(tmp_path, pics):
    """The work split over our threads never changes the order of a floating-point sum: 1, 2 or 4
    threads, and the machine's default, give the same output bytes. 96 px, so that the convs' bands,
    ReLU and pooling are really split."""
    outs = {}
    for threads in ("1", "2", "4", None):
        out = tmp_path / f"t{threads}.png"
        env = {} if threads is None else {"OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}
        if threads is None:
            env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
        args = [str(pics["content"]), str(pics["style"]), "-o", str(out), "--size", "96", "--iterations", "2", "--scales", "1", "--quiet"]
        proc = subprocess.run([sys.executable, "-m", "scratchnst", "stylize", *args], cwd=tmp_path, capture_output=True, text=True,
                              env=env if threads is None else {**os.environ, **env}, timeout=300)
        assert proc.returncode == 0, proc.stderr
        outs[threads] = out.read_bytes()
    assert len(set(outs.values())) == 1, [k for k in outs if outs[k] != outs["1"]]


def test_style_blend_weights_reach_the_objective(tmp_path, pics):
    """Blend 1,0 over (style, style2) must give exactly the single-style result; 0,1 must not."""
    common = ["--init", "content", *FAST]
    single = scratchnst.stylize(str(pics["content"]), [str(pics["style"])], **_api(common)).image
    blend = scratchnst.stylize(str(pics["content"]), [str(pics["style"]), str(pics["style2"])], style_blend=(1, 0), **_api(common)).image
    other = scratchnst.stylize(str(pics["content"]), [str(pics["style"]), str(pics["style2"])], style_blend=(0, 1), **_api(common)).image
    assert np.array_equal(np.asarray(single), np.asarray(blend))
    assert not np.array_equal(np.asarray(single), np.asarray(other))


def _api(args):
    """The FAST CLI flags as API keywords."""
    out, it = {}, iter(args)
    for flag in it:
        key = flag.lstrip("-").replace("-", "_")
        if key == "quiet":
            out[key] = True
        elif key == "scales":
            out[key] = tuple(float(v) for v in next(it).split(","))
        else:
            value = next(it)
            out[key] = int(value) if value.isdigit() else value
    return out


def test_preserve_colors_keeps_the_content_chroma(tmp_path, pics):
    res = scratchnst.stylize(str(pics["content"]), [str(pics["style"])], preserve_colors=True, **_api(FAST))
    content = np.asarray(im.resize_to(im.load_image(pics["content"]), *res.image.size))
    ycc = lambda a: a.astype(float) @ np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]]).T
    got, want = ycc(np.asarray(res.image)), ycc(content)
    # Chroma is the content's (up to rounding and gamut clipping), luma is not.
    assert np.median(np.abs(got[..., 1:] - want[..., 1:])) <= 1.0
    assert np.median(np.abs(got[..., 0] - want[..., 0])) > 1.0


def test_content_layers_and_weights_reach_the_objective(tmp_path, pics):
    """With style weight 0 and content init, the loss is already 0: the optimiser's first evaluation
    finds a zero gradient and takes no step (with a style weight it would)."""
    res = scratchnst.stylize(str(pics["content"]), [str(pics["style"])], style_weight=0, tv_weight=0, init="content", content_layers=("relu2_1",), **_api(FAST))
    assert res.history == [] and res.manifest["final_loss"] == 0.0 and res.manifest["evaluations"] == 1
    assert res.manifest["args"]["content_layers"] == ["relu2_1"]
    styled = scratchnst.stylize(str(pics["content"]), [str(pics["style"])], tv_weight=0, init="content", content_layers=("relu2_1",), **_api(FAST))
    assert len(styled.history) == 3 and styled.history[-1]["content"] > 0 and styled.history[-1]["style"] > 0


def test_multiscale_runs_each_scale(tmp_path, pics):
    res = scratchnst.stylize(str(pics["content"]), [str(pics["style"])], size=48, iterations=2, scales=(0.5, 1.0), quiet=True)
    assert [h["size"] for h in res.history] == [24, 24, 48, 48]
    assert res.image.size == (48, 40)


@pytest.mark.parametrize("args,needle", [
    (["--size", "0"], "--size"),
    (["--style-weight", "nan"], "--style-weight"),
    (["--content-layers", "relu9_9"], "relu9_9"),
    (["--style-blend", "1,2"], "style-blend"),
    (["--optimizer", "sgd"], "--optimizer"),
    (["--scales", "0.5,,1"], "--scales"),
])
def test_bad_options_are_one_line_usage_errors(tmp_path, pics, args, needle):
    out = tmp_path / "out.png"
    out.write_bytes(b"precious")
    r = _run([str(pics["content"]), str(pics["style"]), "-o", str(out), *FAST, *args], tmp_path)
    assert r.returncode == 2
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert out.read_bytes() == b"precious"


def test_sigint_saves_image_and_interrupted_manifest(tmp_path, pics):
    out = tmp_path / "out.png"
    args = [str(pics["content"]), str(pics["style"]), "-o", str(out), "--size", "48", "--iterations", "100000", "--scales", "1", "--quiet", "--save-every", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "scratchnst", "stylize", *args], cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "out_iter0002.png").exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    m = json.loads(out.with_suffix(".json").read_text())
    assert m["status"] == "interrupted" and len(m["history"]) >= 2
    assert Image.open(out).size == (48, 40)
    assert "Traceback" not in err


def test_on_progress_returning_true_stops_the_run_as_ctrl_c_does(tmp_path, pics):
    """The explicit stop (batch's and video's interrupt): status "interrupted", the image and a
    checkpoint kept, and a resume continues to the same end as an uninterrupted run."""
    out = tmp_path / "out.png"
    seen = []
    args = dict(size=40, iterations=5, scales=(1.0,), quiet=True)
    res = scratchnst.stylize(str(pics["content"]), [str(pics["style"])], out=out, on_progress=lambda e: seen.append(e) or len(seen) == 2, **args)
    assert res.status == "interrupted" and [h["iteration"] for h in res.history] == [1, 2] and len(seen) == 2
    m = json.loads(out.with_suffix(".json").read_text())
    assert m["status"] == "interrupted" and os.path.isfile(m["checkpoint"])
    done = resume(out.with_suffix(".json"), quiet=True)
    whole = scratchnst.stylize(str(pics["content"]), [str(pics["style"])], out=tmp_path / "whole.png", **args)
    assert done.status == "done" and [h["loss"] for h in done.history] == [h["loss"] for h in whole.history]
    assert out.read_bytes() == (tmp_path / "whole.png").read_bytes()
