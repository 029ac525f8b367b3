"""scratchnst.app.files.images: loading odd and broken files (by itself and through a run: one line, exit
2, before the net loads), the output path's checks, saving, colour, the shipped images."""

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import scratchnst
from scratchnst.app.files import images as im
from scratchnst.core.preprocess import MIN_SIDE
from scratchnst.errors import ScratchnstError

# Independent reference: BT.601 full-range RGB -> (Y, Cb - 128, Cr - 128).
YCC = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


def ycc(rgb):
    return np.asarray(rgb, dtype=np.float64) @ YCC.T


def rand_rgb(rng, h, w):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------- resize

@pytest.mark.parametrize("w, h, size, expect", [
    (100, 50, 40, (40, 20)), (50, 100, 40, (20, 40)), (33, 33, 64, (64, 64)),
    (1000, 10, 16, (16, 1)), (101, 51, 50, (50, 25)),
])
def test_resize_long_side(w, h, size, expect):
    assert im.resize_long_side(Image.new("RGB", (w, h)), size).size == expect


def test_resize_noop_and_errors():
    img = Image.new("RGB", (64, 30))
    assert im.resize_long_side(img, 64) is img
    assert im.resize_to(img, 64, 30) is img
    assert im.resize_to(img, 17, 19).size == (17, 19)
    with pytest.raises(ScratchnstError):
        im.resize_long_side(img, 0)
    with pytest.raises(ScratchnstError):
        im.resize_to(img, 0, 5)


# ---------------------------------------------------------------- load_image: broken inputs

def png_bytes(img):
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def forged_png(w, h):
    """A tiny valid PNG whose IHDR claims w x h (CRC fixed), as a decompression bomb stand-in."""
    data = bytearray(png_bytes(Image.new("L", (16, 16))))
    data[16:24] = struct.pack(">II", w, h)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def noisy_png(rng):
    return png_bytes(Image.fromarray(rand_rgb(rng, 64, 64)))


def corrupt_png(rng):
    data = bytearray(noisy_png(rng))
    i = data.index(b"IDAT") + 40
    data[i:i + 20] = b"\x00" * 20  # break the zlib stream and the chunk CRC
    return bytes(data)


def jpeg_bytes(rng):
    buf = io.BytesIO()
    Image.fromarray(rand_rgb(rng, 64, 64)).save(buf, "JPEG")
    return buf.getvalue()


BROKEN = {  # name: (file name, bytes or None for missing / "dir", expected message part)
    "missing": ("nope.png", None, "no such file"),
    "directory": ("folder.png", "dir", "directory"),
    "empty": ("empty.png", lambda r: b"", "empty"),
    "truncated_png": ("cut.png", lambda r: noisy_png(r)[:600], "truncated"),
    "truncated_jpeg": ("cut.jpg", lambda r: jpeg_bytes(r)[:700], "truncated"),
    "corrupt_png": ("bad.png", corrupt_png, "corrupt"),
    "text_as_jpg": ("notes.jpg", lambda r: b"hello, I am not a picture\n" * 10, "not an image"),
    "svg": ("drawing.svg", lambda r: b'<svg xmlns="http://www.w3.org/2000/svg"/>', "not an image"),
    "bomb_pil_limit": ("bomb.png", lambda r: forged_png(30000, 30000), "900,000,000 pixels"),
    "bomb_our_limit": ("big.png", lambda r: forged_png(12000, 12000), "12000x12000"),
    "too_small": ("tiny.png", lambda r: png_bytes(Image.new("RGB", (40, 15))), "smaller than 16"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_load_image_rejects(tmp_path, rng, case):
    name, make, expect = BROKEN[case]
    path = tmp_path / name
    if make == "dir":
        path.mkdir()
    elif make is not None:
        path.write_bytes(make(rng))
    with pytest.raises(ScratchnstError) as info:
        im.load_image(path)
    msg = str(info.value)
    assert str(path) in msg and expect in msg and "\n" not in msg, msg


# ---------------------------------------------------------------- load_image: unusual valid inputs

def exif_rotated(path):
    a = np.zeros((20, 40, 3), np.uint8)  # stored 40 wide, 20 high: left half red, right blue
    a[:, :20] = (255, 0, 0)
    a[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    Image.fromarray(a).save(path, "JPEG", quality=95, exif=exif.tobytes())


def check_exif(out):
    assert out.size == (20, 40)
    a = np.asarray(out).astype(int)
    assert a[5, 10, 0] > 200 and a[5, 10, 2] < 60  # top is the stored left (red)
    assert a[35, 10, 2] > 200 and a[35, 10, 0] < 60


def rgba(path):
    a = np.zeros((20, 24, 4), np.uint8)
    a[:10] = (255, 0, 0, 255)  # opaque red
    a[10:, :12] = (0, 0, 0, 0)  # fully transparent black -> white
    a[10:, 12:] = (0, 0, 0, 128)  # half-transparent black -> mid grey
    Image.fromarray(a, "RGBA").save(path)


def check_rgba(out):
    a = np.asarray(out)
    assert tuple(a[0, 0]) == (255, 0, 0) and tuple(a[15, 0]) == (255, 255, 255)
    assert all(abs(int(v) - 127) <= 1 for v in a[15, 20])


def la(path):
    a = np.zeros((20, 20, 2), np.uint8)
    a[..., 0] = 30
    a[:, 10:, 1] = 255
    Image.fromarray(a, "LA").save(path)


def check_la(out):
    a = np.asarray(out)
    assert tuple(a[0, 0]) == (255, 255, 255) and tuple(a[0, 15]) == (30, 30, 30)


def palette_transparent(path):
    p = Image.new("P", (20, 18), 0)
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    p.paste(1, (0, 0, 10, 18))
    p.save(path, transparency=0)


def check_palette_transparent(out):
    a = np.asarray(out)
    assert tuple(a[0, 0]) == (255, 0, 0) and tuple(a[0, 15]) == (255, 255, 255)


def grey16(path, mode="I;16"):
    a = np.zeros((16, 20), np.uint16)
    a[:, 5:10] = 128 * 257
    a[:, 10:] = 65535
    Image.fromarray(a.astype(">u2") if mode == "I;16B" else a).save(path)


def check_grey16(out):
    a = np.asarray(out)
    assert tuple(a[0, 0]) == (0, 0, 0) and tuple(a[0, 7]) == (128,) * 3
    assert tuple(a[0, 15]) == (255,) * 3


def int32(path):
    a = np.zeros((16, 20), np.int32)
    a[:, 5:10] = 128 * 257
    a[:, 10:] = 65535
    Image.fromarray(a, "I").save(path)


def float32(path):
    a = np.full((16, 20), 0.5, np.float32)
    a[:, 10:] = 1.0
    Image.fromarray(a, "F").save(path)


def check_float(out):
    a = np.asarray(out)
    assert tuple(a[0, 0]) == (128,) * 3 and tuple(a[0, 15]) == (255,) * 3


def cmyk(path):
    Image.new("CMYK", (24, 16), (0, 255, 255, 0)).save(path)  # red ink-wise


def check_red(out):
    r, g, b = np.asarray(out)[8, 12].astype(int)
    assert r > 200 and g < 60 and b < 60


def one_bit(path):
    a = np.zeros((16, 24), bool)
    a[:, 12:] = True
    Image.fromarray(a).save(path)


def check_one_bit(out):
    a = np.asarray(out)
    assert tuple(a[0, 0]) == (0, 0, 0) and tuple(a[0, 20]) == (255, 255, 255)


def grey(path):
    Image.new("L", (20, 16), 77).save(path)


def png_named_jpg(path):
    Image.new("RGB", (24, 16), (255, 0, 0)).save(path, "PNG")


def check_77(out):
    assert tuple(np.asarray(out)[3, 3]) == (77, 77, 77)


VALID = {  # name: (file name, writer, expected (width, height), checker)
    "exif_orientation_6": ("rot.jpg", exif_rotated, (20, 40), check_exif),
    "rgba": ("rgba.png", rgba, (24, 20), check_rgba),
    "la": ("la.png", la, (20, 20), check_la),
    "palette_transparency": ("pal.png", palette_transparent, (20, 18), check_palette_transparent),
    "grey16_png": ("g16.png", grey16, (20, 16), check_grey16),
    "grey16_tiff": ("g16.tif", grey16, (20, 16), check_grey16),
    "grey16_big_endian": ("g16b.tif", lambda p: grey16(p, "I;16B"), (20, 16), check_grey16),
    "int32_tiff": ("i32.tif", int32, (20, 16), check_grey16),
    "grey16_pgm": ("g16.pgm", grey16, (20, 16), check_grey16),  # opens as mode "I"
    "float_tiff": ("f.tif", float32, (20, 16), check_float),
    "cmyk_jpeg": ("cmyk.jpg", cmyk, (24, 16), check_red),
    "cmyk_tiff": ("cmyk.tif", cmyk, (24, 16), check_red),
    "one_bit": ("bw.png", one_bit, (24, 16), check_one_bit),
    "grey": ("grey.png", grey, (20, 16), check_77),
    "png_named_jpg": ("red.jpg", png_named_jpg, (24, 16), check_red),
}


@pytest.mark.parametrize("case", sorted(VALID))
def test_load_image_unusual_valid(tmp_path, case):
    name, write, size, check = VALID[case]
    path = tmp_path / name
    write(path)
    out = im.load_image(path)
    assert out.mode == "RGB" and out.size == size
    check(out)


def test_load_image_fully_decoded(tmp_path, rng):
    a = rand_rgb(rng, 20, 30)
    path = tmp_path / "x.png"
    Image.fromarray(a).save(path)
    out = im.load_image(path)
    path.unlink()  # pixels must already be in memory
    np.testing.assert_array_equal(np.asarray(out), a)


def test_max_pixels_limit(tmp_path, monkeypatch):
    path = tmp_path / "m.png"
    Image.new("RGB", (40, 30)).save(path)
    monkeypatch.setattr(im, "MAX_PIXELS", 1000)
    with pytest.raises(ScratchnstError, match="40x30 = 1,200 pixels"):
        im.load_image(path)


# ---------------------------------------------------------------- save_image

@pytest.mark.parametrize("ext, fmt", [(".png", "PNG"), (".jpg", "JPEG"), (".jpeg", "JPEG"),
                                      (".webp", "WEBP"), (".PNG", "PNG")])
def test_save_formats(tmp_path, rng, ext, fmt):
    a = rand_rgb(rng, 24, 40)
    for src in (a, Image.fromarray(a)):
        path = tmp_path / f"out{ext}"
        im.save_image(src, path, quality=90)
        with Image.open(path) as back:
            assert back.format == fmt and back.size == (40, 24)
            if fmt == "PNG":
                np.testing.assert_array_equal(np.asarray(back), a)
    assert sorted(os.listdir(tmp_path)) == [f"out{ext}"]
    assert (path.stat().st_mode & 0o777) == 0o644


@pytest.mark.parametrize("name", ["out.bmp", "out.gif", "out", "out.png.txt"])
def test_save_unknown_extension(tmp_path, name):
    with pytest.raises(ScratchnstError, match=r"\.png.*\.jpg.*\.webp"):
        im.save_image(np.zeros((16, 16, 3), np.uint8), tmp_path / name)
    assert os.listdir(tmp_path) == []


def test_save_creates_parent(tmp_path):
    path = tmp_path / "a" / "b" / "out.png"
    assert im.check_output_path(path) == path.resolve()
    assert not (tmp_path / "a").exists()  # the check creates nothing
    im.save_image(np.zeros((16, 16, 3), np.uint8), path)
    assert path.is_file()


def test_output_path_under_a_file(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ScratchnstError, match="not a directory"):
        im.check_output_path(tmp_path / "file.txt" / "out.png")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(ScratchnstError, match="is a directory"):
        im.check_output_path(tmp_path / "dir.png")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write anywhere")
def test_output_path_unwritable(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ScratchnstError, match="not writable"):
            im.check_output_path(ro / "out.png")
    finally:
        ro.chmod(0o700)


# ---------------------------------------------------------------- colour

def test_preserve_colors_luma_and_chroma(rng):
    content = rng.integers(100, 157, (20, 30, 3), dtype=np.uint8)  # low chroma: stays in gamut
    stylized = rng.integers(64, 193, (20, 30, 3), dtype=np.uint8)
    out = im.preserve_colors(content, stylized)
    assert out.dtype == np.uint8 and out.shape == stylized.shape
    y_out, y_sty, y_con = ycc(out), ycc(stylized), ycc(content)
    np.testing.assert_allclose(y_out[..., 0], y_sty[..., 0], atol=1.0)
    np.testing.assert_allclose(y_out[..., 1:], y_con[..., 1:], atol=1.0)


def test_preserve_colors_resizes_content(rng):
    content = np.full((40, 60, 3), (150, 110, 100), np.uint8)
    stylized = rng.integers(80, 170, (20, 30, 3), dtype=np.uint8)
    out = im.preserve_colors(Image.fromarray(content), stylized)
    assert out.shape == (20, 30, 3)
    want = np.broadcast_to(ycc(content[0, 0])[1:], (20, 30, 2))
    np.testing.assert_allclose(ycc(out)[..., 1:], want, atol=1.0)


def test_match_luminance(rng):
    style = rand_rgb(rng, 24, 32)
    content = rng.integers(90, 140, (30, 20, 3), dtype=np.uint8)
    out = im.match_luminance(style, content)
    assert out.shape == (24, 32, 3) and out.dtype == np.uint8
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    y = out[..., 0].astype(float)
    yc = ycc(content)[..., 0]
    assert abs(y.mean() - yc.mean()) < 0.5 and abs(y.std() - yc.std()) < 0.5
    flat = im.match_luminance(np.full((16, 16, 3), 9, np.uint8), content)
    assert np.ptp(flat) == 0 and abs(int(flat[0, 0, 0]) - yc.mean()) <= 0.5


# ---------------------------------------------------------------- shipped images

def test_default_images():
    content, style = im.default_images()
    for img in (content, style):
        assert img.mode == "RGB" and max(img.size) == 512 and min(img.size) >= MIN_SIDE
    assets = Path(scratchnst.__file__).parent / "assets"
    for name in ("content.jpg", "style.jpg", "ATTRIBUTION.md"):
        assert (assets / name).is_file()
    assert (assets / "content.jpg").stat().st_size <= 300_000
    assert (assets / "style.jpg").stat().st_size <= 300_000
    assert np.asarray(style).std() > 40  # a bold, textured picture, not a flat fill


# ---------------------------------------------------------------- through a run: alpha, bad and unusual images, output paths


@pytest.mark.weights
@pytest.mark.parametrize("suffix", [".png", ".webp", ".jpg"])
def test_an_rgba_content_keeps_its_alpha(tmp_path, pics, vgg16, tiny, suffix, capsys):
    rgba = Image.open(pics.content).convert("RGBA")
    alpha = np.zeros((40, 48), np.uint8)
    alpha[8:32, 10:40] = 255
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(tmp_path / "rgba.png")
    out = tmp_path / f"out{suffix}"
    res = scratchnst.stylize(str(tmp_path / "rgba.png"), [str(pics.style)], out=out, net=vgg16(), **tiny.but(size=40, iterations=3))
    err = capsys.readouterr().err
    saved = Image.open(out)
    if suffix == ".jpg":
        assert saved.mode == "RGB" and "cannot carry the content's alpha" in err and len(err.strip().splitlines()) == 1
        return
    assert res.image.mode == "RGBA" and saved.mode == "RGBA" and saved.size == (40, 33) and "alpha" not in err
    a = np.asarray(saved.getchannel("A"))
    assert a[10:25, 15:32].min() > 200 and a[:3].max() < 30  # the content's alpha, resized


def _make_bad_image(kind: str, pictures, rng) -> Path:
    d = pictures.folder
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
        Image.fromarray(pictures.rgb(rng=rng)).save(p)
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
        (d / "bomb.png").write_bytes(forged_png(40000, 40000))
        return d / "bomb.png"
    if kind == "too-small":
        Image.fromarray(pictures.rgb(12, 10, rng)).save(d / "small.png")
        return d / "small.png"
    if kind == "too-elongated":
        Image.fromarray(pictures.rgb(640, 16, rng)).save(d / "strip.png")
        return d / "strip.png"
    raise AssertionError(kind)


def _make_unusual(kind: str, pictures, rng) -> Path:
    """Valid images in awkward modes. Each has a distinct content, so a mix-up would show."""
    a, d = pictures.rgb(rng=rng), pictures.folder
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


@pytest.mark.weights
@pytest.mark.usefixtures("weights_env")
@pytest.mark.parametrize("kind,role", [(k, "content") for k in BAD_IMAGES] + [(k, "style") for k in ("missing", "corrupt", "too-elongated")])
def test_bad_image_is_one_line_exit_2(tmp_path, pictures, pics, out, tiny, run_cli, refused, kind, role):
    bad = _make_bad_image(kind, pictures, np.random.default_rng(1))
    content, style = (bad, pics[1]) if role == "content" else (pics[0], bad)
    # A weights file that does not exist: the image must be refused before the net is loaded.
    r = run_cli("stylize", str(content), str(style), "-o", str(out), *tiny.argv, "--weights", str(tmp_path / "no.h5"), cwd=tmp_path)
    refused(r, out, BAD_IMAGES[kind], bad.name)


@pytest.mark.weights
@pytest.mark.usefixtures("weights_env")
def test_bad_init_image_is_refused(tmp_path, pics, out, tiny, run_cli, refused):
    r = run_cli("stylize", *map(str, pics), "-o", str(out), *tiny.argv, "--init", str(tmp_path / "nope.png"), cwd=tmp_path)
    refused(r, out, "nope.png", "no such file")


@pytest.mark.weights
@pytest.mark.usefixtures("weights_env")
def test_unusual_valid_images_just_work(tmp_path, pictures, tiny, run_cli):
    """Grey, palette, RGBA, LA, 16-bit, CMYK styles with an EXIF-rotated content; OUT's folder is created."""
    rng = np.random.default_rng(3)
    styles = [_make_unusual(k, pictures, rng) for k in ("gray", "palette", "rgba", "la", "gray16", "cmyk")]
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 48x32 landscape, shown rotated 90° clockwise: 32x48 portrait
    rotated = tmp_path / "rotated.jpg"
    Image.fromarray(pictures.rgb(48, 32, rng)).save(rotated, exif=exif, quality=95)
    out = tmp_path / "new" / "nested" / "out.png"
    r = run_cli("stylize", str(rotated), *map(str, styles), "-o", str(out), *tiny.argv, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert Image.open(out).size == (21, 32)  # portrait: the orientation was honoured
    m = json.loads(out.with_suffix(".json").read_text())
    assert m["status"] == "done" and m["content_size"] == [32, 48]
    assert len(m["styles"]) == 6 and all(size == [48, 40] for size in m["style_sizes"])


@pytest.mark.weights
@pytest.mark.usefixtures("weights_env")
def test_transparency_is_composited_over_white(tmp_path):
    Image.new("RGBA", (20, 20), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    Image.new("LA", (20, 20), (0, 128)).save(tmp_path / "half.png")
    assert (np.asarray(im.load_image(tmp_path / "clear.png")) == 255).all()
    assert (np.abs(np.asarray(im.load_image(tmp_path / "half.png")).astype(int) - 127).max()) <= 1


@pytest.mark.weights
@pytest.mark.usefixtures("weights_env")
@pytest.mark.parametrize("case,needle", [
    ("is-directory", "is a directory"),
    ("parent-is-file", "is not a directory"),
    ("not-writable", "is not writable"),
])
def test_bad_output_path(tmp_path, pics, tiny, run_cli, refused, case, needle):
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
    r = run_cli("stylize", *map(str, pics), "-o", str(target), *tiny.argv, "--weights", str(tmp_path / "no.h5"), cwd=tmp_path)
    refused(r, None, needle)
