"""The peak-memory estimate behind --max-memory (app/picture/memory.py): its numbers pinned, and the
conv bands it counts taken from the op modules."""

import pytest

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
