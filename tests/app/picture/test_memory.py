"""The peak-memory estimate behind --max-memory (app/picture/memory.py): its numbers pinned, the conv
bands it counts taken from the op modules, sizes as text; a run refused for memory names the estimate
and the largest size that fits, and a run's measured peak stays under its estimate."""

import pytest
from PIL import Image

from scratchnst.app.picture import memory
from scratchnst.app.picture.settings import Settings
from scratchnst.core import host
from scratchnst.core.ops import conv, winograd

CONTENT, STYLES = (640, 480), [(512, 700)]


@pytest.mark.parametrize(
    "threads, size, options, gpu, expected",
    [  # values of the estimate before its band sizes moved into the op modules
        (2, 64, {}, False, 400_294_952),  # every band the whole image's
        (2, 512, {}, False, 1_047_172_136),  # Winograd on the deep convs (float32, conv auto)
        (4, 512, {}, False, 1_124_766_760),
        (2, 512, {}, True, 1_661_637_672),
        (1, 1024, {"dtype": "float64"}, False, 4_708_444_240),  # im2col only
        (4, 2048, {"conv": "winograd"}, False, 9_521_725_480),
        (2, 2048, {"conv": "winograd"}, True, 11_987_976_232),
        (2, 777, {"optimizer": "adam", "style_scale": 1.5, "scales": (0.5, 1.0)}, False, 2_769_998_680),
        (2, 300, {"content_layers": ("relu2_2",), "style_layers": ("relu1_1", "conv3_1")}, False, 417_393_464),
    ],
)
def test_estimates_are_pinned(monkeypatch, threads, size, options, gpu, expected):
    monkeypatch.setattr(host, "THREADS", threads)
    s = Settings(size=size, iterations=1, **{"scales": (1.0,), **options}).validated(1)
    assert memory.estimate_peak_bytes(s, CONTENT, STYLES, gpu=gpu) == expected


def test_the_estimate_follows_the_ops_band_bounds(monkeypatch):
    """At 2048² conv1_2's band is far over every bound: each op's bound enters the estimate once per
    worker thread (Winograd's with its scratch, x1.5)."""
    monkeypatch.setattr(host, "THREADS", 2)
    s = Settings(size=2048, scales=(1.0,), iterations=1).validated(1)
    before = memory.estimate_peak_bytes(s, CONTENT, STYLES)
    monkeypatch.setattr(conv, "TILE_BYTES", conv.TILE_BYTES + 2**20)
    assert memory.estimate_peak_bytes(s, CONTENT, STYLES) - before == 2 * 2**20
    monkeypatch.setattr(winograd, "BAND_BYTES", winograd.BAND_BYTES + 2**20)
    assert memory.estimate_peak_bytes(s, CONTENT, STYLES) - before == 2 * 2**20 + int(1.5 * 2 * 2**20)


def test_a_workers_estimate_counts_one_tile_and_twice_what_it_is_sent():
    """A Dask worker's estimate, worked by hand between two images whose largest crop is the same:
    twice (as received, as arrays) the image's 3 values a pixel and relu4_1's content target (512
    channels at 1/64 of the pixels: 8), and each style mask's bytes a pixel; between scales a worker
    keeps the process and the net."""
    s = Settings(size=2048, scales=(1.0,), iterations=1).validated(1)
    names = (*s.content_layers, *s.style_layers)
    short, square = (2048, 1536), (2048, 2048)
    assert memory.tile_pixels(short, 512, names)[0] == memory.tile_pixels(square, 512, names)[0]
    more = 2048 * 512  # pixels
    assert memory.worker_peak_bytes(s, square, 512) - memory.worker_peak_bytes(s, short, 512) == 2 * (3 + 8) * more * 4
    masked = Settings(size=2048, scales=(1.0,), iterations=1, style_masks=("a.png", "b.png")).validated(2)
    assert memory.worker_peak_bytes(masked, short, 512) - memory.worker_peak_bytes(s, short, 512) \
        == 2 * 2 * (8 + 4 * 4 / 3) * 2048 * 1536  # MASK_BYTES: float64 at the scale's size, the run's dtype on a third more
    assert memory.idle_worker_bytes(s) == memory.BASELINE + 2 * memory.CANONICAL_SIZE  # the net, and the file it was read from


@pytest.mark.parametrize("text,expect", [
    ("123456", 123456), ("500M", 500 * 2**20), ("2G", 2 * 2**30), ("1.5GiB", 3 * 2**29), ("64kb", 65536), (" 1t ", 2**40),
])
def test_parse_bytes(text, expect):
    assert memory.parse_bytes(text) == expect


@pytest.mark.parametrize("text", ["", "G", "-1G", "2X", "nan", "0", "1e999"])
def test_parse_bytes_rejects(text):
    with pytest.raises(ValueError):
        memory.parse_bytes(text)


# -- through a run ----------------------------------------------------------------------------------


@pytest.mark.weights
@pytest.mark.usefixtures("weights_env")
def test_memory_refusal_names_the_estimate_and_the_largest_size(tmp_path, pics, out, tiny, run_cli, refused):
    """--tile 0 (never tile): the whole run must fit, as before tiling."""
    r = run_cli("stylize", *map(str, pics), "-o", str(out), *tiny.argv, "--size", "4000", "--max-memory", "1G", "--tile", "0",
                "--weights", str(tmp_path / "no.h5"), cwd=tmp_path)
    refused(r, out, "estimated peak memory", "allowed by --max-memory", "largest --size that fits:")
    best = int(r.stderr.split("largest --size that fits: ")[1].split()[0])
    s = Settings(size=best, scales=(1.0,), iterations=1).validated(1)
    sizes = (Image.open(pics[0]).size, [Image.open(pics[1]).size])
    assert memory.estimate_peak_bytes(s, *sizes) <= 2**30
    s.size = best + 1
    assert memory.estimate_peak_bytes(s, *sizes) > 2**30


@pytest.mark.weights
@pytest.mark.usefixtures("weights_env")
def test_memory_estimate_on_a_gpu_counts_its_larger_im2col_bands(pics):
    sizes = (Image.open(pics[0]).size, [Image.open(pics[1]).size])
    estimates = lambda size: [
        memory.estimate_peak_bytes(Settings(size=size, scales=(1.0,), iterations=1).validated(1), *sizes, gpu=gpu)
        for gpu in (False, True)
    ]
    on_host, on_gpu = estimates(2048)  # conv1_2's band at 2048² (~11 GB) is far over both tile bounds
    im2col = conv.DEVICE_TILE_BYTES - conv.TILE_BYTES * host.workers()
    winograd_bands = int(1.5 * winograd.DEVICE_BAND_BYTES) - int(1.5 * winograd.BAND_BYTES * host.workers())  # Winograd's, likewise
    assert on_gpu - on_host == im2col + winograd_bands
    on_host, on_gpu = estimates(32)  # a whole 32² band (~3 MB) is under both: the same estimate
    assert on_gpu == on_host
    s = Settings(size=2048, scales=(1.0,), iterations=1).validated(1)
    limit = sum(estimates(1024)) // 2  # the host's 1024² fits, the GPU's does not
    assert memory.largest_size_that_fits(s, *sizes, limit, gpu=True) < memory.largest_size_that_fits(s, *sizes, limit)


@pytest.mark.weights
@pytest.mark.usefixtures("weights_env")
def test_memory_refusal_against_the_machine(tmp_path, pics, out, tiny, run_cli, refused):
    assert memory.available_bytes() > 0
    r = run_cli("stylize", *map(str, pics), "-o", str(out), *tiny.argv, "--size", "300000", cwd=tmp_path)
    refused(r, out, "estimated peak memory", "available on this machine")


@pytest.mark.weights
@pytest.mark.usefixtures("weights_env")
def test_max_memory_overrides_the_machine(tmp_path, pics, tiny, run_cli):
    """A limit the run fits in lets it run (the estimate of this tiny run is ~0.2 GB)."""
    out = tmp_path / "ok.png"
    r = run_cli(
        "stylize", *map(str, pics), "-o", str(out), *tiny.argv, "--size", "64", "--max-memory", "1G", cwd=tmp_path,
        # VmHWM, not ru_maxrss: ru_maxrss survives exec, so a child forked from a big pytest
        # process would report the parent's resident size.
        code="import re, sys; from scratchnst.app.cli import main; rc = main(sys.argv[1:]); "
             "print(int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) * 1024); sys.exit(rc)")
    assert r.returncode == 0, r.stderr
    measured = int(r.stdout.split()[-1])
    s = Settings(size=64, scales=(1.0,), iterations=1).validated(1)
    estimate = memory.estimate_peak_bytes(s, Image.open(pics[0]).size, [Image.open(pics[1]).size])
    assert measured <= estimate <= 1.6 * measured, (measured, estimate)
