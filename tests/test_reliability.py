"""Reliability: every bad input gets one clear line and exit 2 before heavy work; no run loses its work.

Table-driven: each row is a generated input and a subprocess run of `python -m scratchnst stylize`.
docs/reliability.md lists the cases and their outcomes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from scratchnst.app.files import images as im
from scratchnst.core.preprocess import deprocess, preprocess
from scratchnst.app.picture import memory
from scratchnst.core import ops
from scratchnst.core import host
from scratchnst.app.files import weights as wts
from scratchnst.app.picture.settings import Settings
from scratchnst.app.picture.stylize import NOISE_STD

pytestmark = pytest.mark.weights

TINY = ["--size", "32", "--iterations", "1", "--scales", "1", "--quiet"]
PRECIOUS = b"precious: an earlier result that must survive"


# -- generated inputs ------------------------------------------------------------------------------


def _rgb(rng, w=48, h=40) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([80 + 60 * np.sin(xx / 3 + c) + 60 * np.cos(yy / 4) for c in range(3)], -1)
    return np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)


def _png_header_only(path: Path, w: int, h: int) -> Path:
    """A PNG whose IHDR claims w x h, with almost no data (a decompression bomb's first bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def _make_bad_image(kind: str, d: Path, rng) -> Path:
    if kind == "missing":
        return d / "nope.png"
    if kind == "directory":
        (d / "adir.png").mkdir()
        return d / "adir.png"
    if kind == "empty":
        (d / "empty.png").write_bytes(b"")
        return d / "empty.png"
    if kind in ("truncated", "corrupt"):
        p = d / f"{kind}.png"
        Image.fromarray(_rgb(rng)).save(p)
        data = p.read_bytes()
        if kind == "truncated":
            p.write_bytes(data[: len(data) // 2])
        else:  # header intact, compressed stream overwritten with noise
            p.write_bytes(data[:60] + bytes(rng.integers(0, 256, len(data) - 60, dtype=np.uint8)))
        return p
    if kind == "text-named-jpg":
        (d / "notes.jpg").write_text("these are not pixels\n" * 20)
        return d / "notes.jpg"
    if kind == "unsupported-svg":
        (d / "vector.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><rect width="64" height="64"/></svg>')
        return d / "vector.svg"
    if kind == "bomb":
        return _png_header_only(d / "bomb.png", 40000, 40000)
    if kind == "too-small":
        Image.fromarray(_rgb(rng, 12, 10)).save(d / "small.png")
        return d / "small.png"
    if kind == "too-elongated":
        Image.fromarray(_rgb(rng, 640, 16)).save(d / "strip.png")
        return d / "strip.png"
    raise AssertionError(kind)


def _make_unusual(kind: str, d: Path, rng) -> Path:
    """Valid images in awkward modes. Each has a distinct content, so a mix-up would show."""
    a = _rgb(rng)
    p = d / f"{kind}.png"
    if kind == "gray":
        Image.fromarray(a[..., 0]).save(p)
    elif kind == "palette":
        Image.fromarray(a).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(p)
    elif kind == "rgba":
        Image.fromarray(np.dstack([a, np.linspace(0, 255, a.shape[1], dtype=np.uint8)[None].repeat(a.shape[0], 0)])).save(p)
    elif kind == "la":
        Image.fromarray(np.dstack([a[..., 0], a[..., 1]]), mode="LA").save(p)
    elif kind == "gray16":
        Image.fromarray(a[..., 0].astype(np.uint16) * 257).save(p)
    elif kind == "cmyk":
        p = d / "cmyk.jpg"
        Image.fromarray(a).convert("CMYK").save(p, quality=95)
    else:
        raise AssertionError(kind)
    return p


@pytest.fixture(autouse=True)
def _weights(vgg_weights_path, monkeypatch):
    monkeypatch.setenv("SCRATCHNST_WEIGHTS", str(vgg_weights_path))


@pytest.fixture
def pics(tmp_path):
    rng = np.random.default_rng(7)
    content, style = tmp_path / "content.png", tmp_path / "style.png"
    Image.fromarray(_rgb(rng)).save(content)
    Image.fromarray(_rgb(rng, 40, 44)).save(style)
    return content, style


def _cli(args, cwd, env=None, timeout=120):
    env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "scratchnst", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)


def _refused(r, out: Path | None, *needles: str, code: int = 2) -> None:
    """Exit `code`, exactly one line on stderr naming the problem, no traceback, OUT untouched."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code, r.stderr
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for needle in needles:
        assert needle in r.stderr, (needle, r.stderr)
    if out is not None:
        assert out.read_bytes() == PRECIOUS
        assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".")], "temp files left behind"


@pytest.fixture
def out(tmp_path):
    p = tmp_path / "result.png"
    p.write_bytes(PRECIOUS)
    return p


# -- bad images ------------------------------------------------------------------------------------

BAD_IMAGES = {
    "missing": "no such file",
    "directory": "is a directory",
    "empty": "file is empty",
    "truncated": "corrupt or truncated",
    "corrupt": "corrupt or truncated",
    "text-named-jpg": "not an image",
    "unsupported-svg": "not an image, or an unsupported image format",
    "bomb": "decompression bomb",
    "too-small": "smaller than 16 px",
    "too-elongated": "use --size ≥ 640",
}


@pytest.mark.parametrize("kind,role", [(k, "content") for k in BAD_IMAGES] + [(k, "style") for k in ("missing", "corrupt", "too-elongated")])
def test_bad_image_is_one_line_exit_2(tmp_path, pics, out, kind, role):
    bad = _make_bad_image(kind, tmp_path, np.random.default_rng(1))
    content, style = (bad, pics[1]) if role == "content" else (pics[0], bad)
    # A weights file that does not exist: the image must be refused before the net is loaded.
    r = _cli(["stylize", str(content), str(style), "-o", str(out), *TINY, "--weights", str(tmp_path / "no.h5")], tmp_path)
    _refused(r, out, BAD_IMAGES[kind], bad.name)


BAD_MASKS = {
    "missing": "no such file",
    "corrupt": "corrupt or truncated",
    "colour": "must be greyscale",
    "all-zero": "style mask is all zero",
    "other-shape": "their shapes differ",
}


@pytest.mark.parametrize("kind", BAD_MASKS)
def test_bad_style_mask_is_one_line_exit_2(tmp_path, pics, out, kind):
    rng = np.random.default_rng(2)
    mask = {"missing": lambda: _make_bad_image("missing", tmp_path, rng), "corrupt": lambda: _make_bad_image("corrupt", tmp_path, rng)}.get(kind)
    if mask is None:
        a = {"colour": _rgb(rng), "all-zero": np.zeros((40, 48), np.uint8), "other-shape": np.full((48, 20), 255, np.uint8)}[kind]
        Image.fromarray(a).save(tmp_path / "mask.png")
        mask = tmp_path / "mask.png"
    else:
        mask = mask()
    # A weights file that does not exist: the mask must be refused before the net is loaded.
    r = _cli(["stylize", *map(str, pics), "-o", str(out), *TINY, "--weights", str(tmp_path / "no.h5"), "--style-masks", str(mask)], tmp_path)
    _refused(r, out, BAD_MASKS[kind], mask.name)


def test_bad_init_image_is_refused(tmp_path, pics, out):
    r = _cli(["stylize", *map(str, pics), "-o", str(out), *TINY, "--init", str(tmp_path / "nope.png")], tmp_path)
    _refused(r, out, "nope.png", "no such file")


def test_unusual_valid_images_just_work(tmp_path, pics):
    """Grey, palette, RGBA, LA, 16-bit, CMYK styles with an EXIF-rotated content; OUT's folder is created."""
    rng = np.random.default_rng(3)
    styles = [_make_unusual(k, tmp_path, rng) for k in ("gray", "palette", "rgba", "la", "gray16", "cmyk")]
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 48x32 landscape, shown rotated 90° clockwise: 32x48 portrait
    rotated = tmp_path / "rotated.jpg"
    Image.fromarray(_rgb(rng, 48, 32)).save(rotated, exif=exif, quality=95)
    out = tmp_path / "new" / "nested" / "out.png"
    r = _cli(["stylize", str(rotated), *map(str, styles), "-o", str(out), *TINY], tmp_path)
    assert r.returncode == 0, r.stderr
    assert Image.open(out).size == (21, 32)  # portrait: the orientation was honoured
    m = json.loads(out.with_suffix(".json").read_text())
    assert m["status"] == "done" and m["content_size"] == [32, 48]
    assert len(m["styles"]) == 6 and all(size == [48, 40] for size in m["style_sizes"])


def test_transparency_is_composited_over_white(tmp_path):
    Image.new("RGBA", (20, 20), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    Image.new("LA", (20, 20), (0, 128)).save(tmp_path / "half.png")
    assert (np.asarray(im.load_image(tmp_path / "clear.png")) == 255).all()
    assert (np.abs(np.asarray(im.load_image(tmp_path / "half.png")).astype(int) - 127).max()) <= 1


# -- bad options -----------------------------------------------------------------------------------

BAD_OPTIONS = [
    (["--size", "0"], "--size"),
    (["--size", "-3"], "--size"),
    (["--size", "big"], "--size"),
    (["--size", "1.5"], "--size"),
    (["--iterations", "0"], "--iterations"),
    (["--scales", "0.5,,1"], "--scales"),
    (["--scales", "0"], "--scales"),
    (["--scales", "10"], "--scales"),
    (["--scales", "-1"], "--scales"),
    (["--seed", "-1"], "--seed"),
    (["--content-weight", "nan"], "--content-weight"),
    (["--style-weight", "inf"], "--style-weight"),
    (["--style-weight", "1e400"], "--style-weight"),
    (["--tv-weight", "-1"], "--tv-weight"),
    (["--style-scale", "0"], "--style-scale"),
    (["--learning-rate", "0"], "--learning-rate"),
    (["--learning-rate", "-inf"], "--learning-rate"),
    (["--lbfgs-history", "0"], "--lbfgs-history"),
    (["--save-every", "-1"], "--save-every"),
    (["--checkpoint-every", "x"], "--checkpoint-every"),
    (["--content-layers", "relu9_9"], "relu9_9"),
    (["--style-layers", "relu1_1,relu1_1"], "listed twice"),
    (["--content-layers", "", "--style-layers", ""], "nothing to optimise"),
    (["--style-layer-weights", "1,2"], "--style-layer-weights has 2 values for 5 style layers"),
    (["--style-blend", "1,2"], "--style-blend has 2 values for 1 style images"),
    (["--style-blend", "0"], "--style-blend must not sum to 0"),
    (["--backend", "tpu"], "--backend"),
    (["--dtype", "float16"], "--dtype"),
    (["--optimizer", "sgd"], "--optimizer"),
    (["--pooling", "median"], "--pooling"),
    (["--max-memory", "lots"], "--max-memory"),
    (["--max-memory", "0"], "--max-memory"),
    (["--bogus-flag"], "unrecognized arguments"),
    (["--color", "sepia"], "--color"),
    (["--preserve-colors", "--color", "histogram"], "contradicts --color histogram"),
    (["--normalize-gradients"], "--normalize-gradients needs --optimizer adam"),
    (["--style-masks", "a.png", "b.png"], "--style-masks has 2 masks for 1 style images"),
    (["--style-blend", "1", "--style-masks", "a.png"], "with --style-masks each style has its own region"),
]


@pytest.mark.parametrize("args,needle", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_bad_option_is_one_line_exit_2_before_images(tmp_path, pics, out, args, needle):
    # The content does not exist: the option must be refused first (cheap checks before loading).
    r = _cli(["stylize", str(tmp_path / "missing.png"), str(pics[1]), "-o", str(out), *TINY, *args], tmp_path)
    _refused(r, out, needle)


@pytest.mark.parametrize("args,needle", [
    (["-o", "out.gif"], "unsupported output extension"),
    (["--resume", "nothing.json"], "cannot read the run manifest"),
])
def test_other_usage_errors(tmp_path, args, needle):
    r = _cli(["stylize", *args], tmp_path)
    _refused(r, None, needle)


def test_content_without_style(tmp_path, pics):
    _refused(_cli(["stylize", str(pics[0])], tmp_path), None, "at least one STYLE")


def test_cupy_backend_without_a_gpu(tmp_path, pics, out):
    from scratchnst.core.backend import get_backend, is_cupy

    if is_cupy(get_backend("auto")):
        pytest.skip("a CUDA device is present")
    _refused(_cli(["stylize", *map(str, pics), "-o", str(out), *TINY, "--backend", "cupy"], tmp_path), out, "needs CuPy")


@pytest.mark.parametrize("where", ["top", "sub"])
def test_debug_shows_the_traceback(tmp_path, pics, where):
    args = ["stylize", str(tmp_path / "missing.png"), str(pics[1])]
    args = ["--debug", *args] if where == "top" else [*args, "--debug"]
    r = _cli(args, tmp_path)
    assert r.returncode == 2 and "Traceback" in r.stderr and "no such file" in r.stderr.splitlines()[-1]


# -- bad weights -----------------------------------------------------------------------------------


def _make_bad_weights(kind: str, d: Path, real: Path) -> Path:
    p = d / f"{kind}.h5"
    if kind == "missing":
        return p
    if kind == "directory":
        p.mkdir()
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "truncated":
        with open(real, "rb") as f:
            p.write_bytes(f.read(1 << 20))
    elif kind == "not-hdf5":
        p.write_text("definitely not HDF5\n" * 100)
    elif kind == "no-vgg-layers":
        with h5py.File(p, "w") as f:
            f["something"] = np.zeros(3)
    elif kind == "wrong-shape":
        wts.write_keras_h5([("block1_conv1", np.zeros((3, 3, 3, 32), np.float32), np.zeros(32, np.float32))], p)
    elif kind == "wrong-dtype":
        wts.write_keras_h5([("block1_conv1", np.zeros((3, 3, 3, 64), np.float64), np.zeros(64, np.float64))], p)
    elif kind == "tampered":
        shutil.copyfile(real, p)
        with h5py.File(p, "r+") as f:
            f["block5_conv3/block5_conv3_b_1:0"][0] += 1.0
    return p


BAD_WEIGHTS = {
    "missing": "does not exist",
    "directory": "is a directory",
    "empty": "is empty",
    "truncated": "not an HDF5 file",  # the superblock survives only if the cut is late; 1 MB keeps it out
    "not-hdf5": "is not an HDF5 file",
    "no-vgg-layers": "has no group 'block1_conv1'",
    "wrong-shape": "expected (3, 3, 3, 64)",
    "wrong-dtype": "expected float32",
    "tampered": "checksum mismatch",
}


@pytest.mark.parametrize("kind,via", [(k, "flag") for k in BAD_WEIGHTS] + [("missing", "env"), ("tampered", "env")])
def test_bad_weights_are_never_used_and_named(tmp_path, pics, out, vgg_weights_path, kind, via):
    """--weights (or $SCRATCHNST_WEIGHTS, which shares the checks) naming a bad file: refused, named."""
    bad = _make_bad_weights(kind, tmp_path, vgg_weights_path)
    args = ["stylize", *map(str, pics), "-o", str(out), *TINY]
    env = {"SCRATCHNST_WEIGHTS": str(bad)}
    if via == "flag":
        args += ["--weights", str(bad)]
        env = {}
    r = _cli(args, tmp_path, env=env)
    needle = BAD_WEIGHTS[kind]
    if kind == "truncated" and "truncated or corrupt" in r.stderr:
        needle = "truncated or corrupt"
    _refused(r, out, str(bad), needle, *(["$SCRATCHNST_WEIGHTS"] if via == "env" else []))


# -- bad output paths ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["same", "relative", "symlink", "hardlink", "init", "mask"])
def test_output_may_not_overwrite_an_input(tmp_path, pics, case):
    content, style = pics
    before = content.read_bytes()
    args = [str(content), str(style)]
    if case == "same":
        target = str(content)
    elif case == "relative":
        (tmp_path / "sub").mkdir()
        target = os.path.join("..", content.name)
        r = _cli(["stylize", *args, "-o", target, *TINY], tmp_path / "sub")
        _refused(r, None, "would overwrite the input image")
        assert content.read_bytes() == before
        return
    elif case == "symlink":
        (tmp_path / "link.png").symlink_to(content)
        target = str(tmp_path / "link.png")
    elif case == "hardlink":
        os.link(content, tmp_path / "hard.png")
        target = str(tmp_path / "hard.png")
    elif case == "init":
        shutil.copyfile(content, tmp_path / "init.png")
        target = str(tmp_path / "init.png")
        args += ["--init", target]
    else:
        Image.fromarray(np.full((40, 48), 255, np.uint8)).save(tmp_path / "mask.png")
        target = str(tmp_path / "mask.png")
        args += ["--style-masks", target]
    r = _cli(["stylize", *args, "-o", target, *TINY], tmp_path)
    _refused(r, None, "would overwrite the input image")
    assert content.read_bytes() == before


@pytest.mark.parametrize("case,needle", [
    ("is-directory", "is a directory"),
    ("parent-is-file", "is not a directory"),
    ("not-writable", "is not writable"),
])
def test_bad_output_path(tmp_path, pics, case, needle):
    if case == "is-directory":
        target = tmp_path / "adir.png"
        target.mkdir()
    elif case == "parent-is-file":
        (tmp_path / "afile").write_text("x")
        target = tmp_path / "afile" / "out.png"
    else:  # /sys refuses new files even to root, where a chmod'ed folder would not
        target = Path("/sys/scratchnst-test/out.png")
        if not Path("/sys").is_dir():
            pytest.skip("no /sys")
    r = _cli(["stylize", *map(str, pics), "-o", str(target), *TINY, "--weights", str(tmp_path / "no.h5")], tmp_path)
    _refused(r, None, needle)


# -- memory ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,expect", [
    ("123456", 123456), ("500M", 500 * 2**20), ("2G", 2 * 2**30), ("1.5GiB", 3 * 2**29), ("64kb", 65536), (" 1t ", 2**40),
])
def test_parse_bytes(text, expect):
    assert memory.parse_bytes(text) == expect


@pytest.mark.parametrize("text", ["", "G", "-1G", "2X", "nan", "0", "1e999"])
def test_parse_bytes_rejects(text):
    with pytest.raises(ValueError):
        memory.parse_bytes(text)


def test_memory_refusal_names_the_estimate_and_the_largest_size(tmp_path, pics, out):
    r = _cli(["stylize", *map(str, pics), "-o", str(out), *TINY, "--size", "4000", "--max-memory", "1G",
              "--weights", str(tmp_path / "no.h5")], tmp_path)
    _refused(r, out, "estimated peak memory", "allowed by --max-memory", "largest --size that fits:")
    best = int(r.stderr.split("largest --size that fits: ")[1].split()[0])
    s = Settings(size=best, scales=(1.0,), iterations=1).validated(1)
    sizes = (Image.open(pics[0]).size, [Image.open(pics[1]).size])
    assert memory.estimate_peak_bytes(s, *sizes) <= 2**30
    s.size = best + 1
    assert memory.estimate_peak_bytes(s, *sizes) > 2**30


def test_memory_estimate_on_a_gpu_counts_its_larger_im2col_bands(pics):
    from scratchnst.core.ops import conv

    sizes = (Image.open(pics[0]).size, [Image.open(pics[1]).size])
    estimates = lambda size: [
        memory.estimate_peak_bytes(Settings(size=size, scales=(1.0,), iterations=1).validated(1), *sizes, gpu=gpu)
        for gpu in (False, True)
    ]
    from scratchnst.core.ops import winograd

    on_host, on_gpu = estimates(2048)  # conv1_2's band at 2048² (~11 GB) is far over both tile bounds
    im2col = conv.DEVICE_TILE_BYTES - conv.TILE_BYTES * host.workers()
    winograd_bands = int(1.5 * winograd.DEVICE_BAND_BYTES) - int(1.5 * winograd.BAND_BYTES * host.workers())  # Winograd's, likewise
    assert on_gpu - on_host == im2col + winograd_bands
    on_host, on_gpu = estimates(32)  # a whole 32² band (~3 MB) is under both: the same estimate
    assert on_gpu == on_host
    s = Settings(size=2048, scales=(1.0,), iterations=1).validated(1)
    limit = sum(estimates(1024)) // 2  # the host's 1024² fits, the GPU's does not
    assert memory.largest_size_that_fits(s, *sizes, limit, gpu=True) < memory.largest_size_that_fits(s, *sizes, limit)


def test_memory_refusal_against_the_machine(tmp_path, pics, out):
    assert memory.available_bytes() > 0
    r = _cli(["stylize", *map(str, pics), "-o", str(out), *TINY, "--size", "300000"], tmp_path)
    _refused(r, out, "estimated peak memory", "available on this machine")


def test_max_memory_overrides_the_machine(tmp_path, pics):
    """A limit the run fits in lets it run (the estimate of this tiny run is ~0.2 GB)."""
    out = tmp_path / "ok.png"
    r = subprocess.run(
        [sys.executable, "-c",
         # VmHWM, not ru_maxrss: ru_maxrss survives exec, so a child forked from a big pytest
         # process would report the parent's resident size.
         "import re, sys; from scratchnst.app.cli import main; rc = main(sys.argv[1:]); "
         "print(int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) * 1024); sys.exit(rc)",
         "stylize", *map(str, pics), "-o", str(out), *TINY, "--size", "64", "--max-memory", "1G"],
        cwd=tmp_path, capture_output=True, text=True, env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    measured = int(r.stdout.split()[-1])
    s = Settings(size=64, scales=(1.0,), iterations=1).validated(1)
    estimate = memory.estimate_peak_bytes(s, Image.open(pics[0]).size, [Image.open(pics[1]).size])
    assert measured <= estimate <= 1.6 * measured, (measured, estimate)


# -- no lost work: interrupts, kills, resume -------------------------------------------------------

RUN = ["--size", "40", "--scales", "0.5,1", "--iterations", "5", "--seed", "1", "--quiet"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, vgg_weights_path):
    """The uninterrupted run every resumed run must reproduce: (dir, content, style, image bytes, losses)."""
    d = tmp_path_factory.mktemp("reference")
    rng = np.random.default_rng(11)
    content, style = d / "c.png", d / "s.png"
    Image.fromarray(_rgb(rng)).save(content)
    Image.fromarray(_rgb(rng, 40, 44)).save(style)
    r = _cli(["stylize", str(content), str(style), "-o", str(d / "ref.png"), *RUN], d, env={"SCRATCHNST_WEIGHTS": str(vgg_weights_path)})
    assert r.returncode == 0, r.stderr
    m = json.loads((d / "ref.json").read_text())
    assert len(m["history"]) == 10
    return content, style, (d / "ref.png").read_bytes(), [h["loss"] for h in m["history"]]


def _start(args, cwd):
    return subprocess.Popen([sys.executable, "-m", "scratchnst", "stylize", *args], cwd=cwd, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc, timeout=120.0):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.002)


def _resume_and_compare(manifest: Path, cwd: Path, reference) -> dict:
    r = _cli(["stylize", "--resume", str(manifest), "--quiet"], cwd)
    assert r.returncode == 0, r.stderr
    m = json.loads(manifest.read_text())
    assert m["status"] == "done"
    assert [h["loss"] for h in m["history"]] == reference[3]
    assert [h["iteration"] for h in m["history"]] == list(range(1, 11))
    assert Path(m["output"]).read_bytes() == reference[2]
    return m


def test_sigkill_after_a_checkpoint_at_the_scale_boundary_resumes_identically(tmp_path, reference):
    out = tmp_path / "b.png"
    out.write_bytes(PRECIOUS)
    proc = _start([str(reference[0]), str(reference[1]), "-o", str(out), *RUN, "--checkpoint-every", "5"], tmp_path)
    _wait_for(out.with_suffix(".json"), proc)  # written just after the checkpoint at iteration 5
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert out.read_bytes() == PRECIOUS  # a killed run leaves OUT untouched
    m = json.loads(out.with_suffix(".json").read_text())
    assert m["status"] == "running" and len(m["history"]) == 5 and m["history"][-1]["scale"] == 0
    _resume_and_compare(out.with_suffix(".json"), tmp_path, reference)


def test_sigterm_mid_run_saves_and_resumes_identically(tmp_path, reference):
    out = tmp_path / "c.png"
    proc = _start([str(reference[0]), str(reference[1]), "-o", str(out), *RUN, "--checkpoint-every", "6"], tmp_path)
    _wait_for(out.with_suffix(".json"), proc)  # iteration 6: inside the second scale
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    m = json.loads(out.with_suffix(".json").read_text())
    assert proc.returncode == 143 and m["status"] == "interrupted", err
    assert "Traceback" not in err and Image.open(out).size == (40, 33)
    assert 6 <= len(m["history"]) < 10 and Path(m["checkpoint"]).is_file()
    _resume_and_compare(out.with_suffix(".json"), tmp_path, reference)


def test_resume_refuses_a_finished_run_and_a_missing_checkpoint(tmp_path, reference):
    d = tmp_path
    done = d / "done.json"
    done.write_text(json.dumps({"status": "done", "args": {}, "output": str(d / "done.png")}))
    _refused(_cli(["stylize", "--resume", str(done)], d), None, "already done")
    lost = d / "lost.json"
    lost.write_text(json.dumps({"status": "running", "args": {}, "output": str(d / "lost.png")}))
    _refused(_cli(["stylize", "--resume", str(lost)], d), None, "no checkpoint")
    (d / "junk.json").write_text("[1, 2]")
    _refused(_cli(["stylize", "--resume", str(d / "junk.json")], d), None, "not a scratchnst run manifest")
    _refused(_cli(["stylize", str(reference[0]), "--resume", str(done)], d), None, "--resume takes no CONTENT")


# -- non-finite ------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    ["--optimizer", "adam", "--learning-rate", "1e30"],
    ["--style-weight", "1e38"],
], ids=["adam-lr-1e30", "style-weight-1e38"])
def test_nonfinite_stops_keeps_the_last_finite_image_exit_1(tmp_path, pics, args):
    out = tmp_path / "nf.png"
    r = _cli(["stylize", *map(str, pics), "-o", str(out), "--size", "32", "--iterations", "3", "--scales", "1", "--quiet", *args], tmp_path)
    _refused(r, None, "NaN/inf", "lower --learning-rate", str(out), code=1)
    m = json.loads(out.with_suffix(".json").read_text())
    assert m["status"] == "failed" and "NaN/inf" in m["error"] and m["history"] == []
    # The last finite image is the noise start (seed 0): nothing finite came after it.
    noise = np.random.default_rng(0).normal(0.0, NOISE_STD, (1, 3, 27, 32)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(Image.open(out)), deprocess(noise))
    _refused(_cli(["stylize", "--resume", str(out.with_suffix(".json"))], tmp_path), None, "that run failed")


# -- properties ------------------------------------------------------------------------------------


# -- interrupts at awkward moments (in-process, deterministic) -------------------------------------


@pytest.mark.parametrize("moment", ["between-scales", "before-bookkeeping"])
def test_interrupt_at_an_awkward_moment_still_resumes_identically(tmp_path, reference, monkeypatch, moment):
    """KeyboardInterrupt while scale 1's images are prepared (the optimiser still belongs to scale 0),
    or right after opt.step() returned but before the iteration was recorded."""
    sty = sys.modules["scratchnst.app.picture.stylize"]  # the package exports a function of the same name
    calls = {"n": 0}
    if moment == "between-scales":
        original = sty.Stylizer._images_at

        def images_at(self, long_side):
            if long_side == self.sizes[1]:  # scale 1's images: its optimiser does not exist yet
                raise KeyboardInterrupt
            return original(self, long_side)

        monkeypatch.setattr(sty.Stylizer, "_images_at", images_at)
    else:
        original = sty.Stylizer._record

        def record(self):
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt
            return original(self)

        monkeypatch.setattr(sty.Stylizer, "_record", record)
    out = tmp_path / "d.png"
    res = sty.stylize(str(reference[0]), [str(reference[1])], out=out, size=40, scales=(0.5, 1.0), iterations=5, seed=1, quiet=True)
    assert res.status == "interrupted"
    # Between scales: all of scale 0 is kept. Before the bookkeeping: the finished step 3 is counted.
    assert [h["iteration"] for h in res.history] == list(range(1, 6 if moment == "between-scales" else 4))
    monkeypatch.undo()
    m = sty.resume(out.with_suffix(".json"), quiet=True).manifest
    assert [h["loss"] for h in m["history"]] == reference[3]
    assert out.read_bytes() == reference[2]
