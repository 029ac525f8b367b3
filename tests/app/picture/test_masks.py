"""scratchnst.app.picture.masks: style masks load as greyscale weights and resize by area; a bad mask is
one line and exit 2 before the net loads (in this process and through the command line); two styles
in two regions end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from scratchnst.app.cli import main
from scratchnst.app.picture import stylize as stylize_module
from scratchnst.app.picture.masks import load_mask, masks_at
from scratchnst.errors import ScratchnstError


def test_masks_load_and_resize(tmp_path):
    grey = np.zeros((20, 30), np.uint8)
    grey[:, :15] = 255
    Image.fromarray(grey).save(tmp_path / "m.png")
    m = load_mask(tmp_path / "m.png", 0)
    assert m.shape == (20, 30) and m.max() == 1 and m.min() == 0
    (small,) = masks_at([m], 15, 10)  # area averaging: column 7 straddles the edge
    assert np.allclose(small[:, :7], 1) and np.allclose(small[:, 8:], 0) and np.isclose(small[0, 7], 0.5)
    assert np.allclose(load_mask(np.full((4, 4), 0.25), 0), 0.25) and load_mask(np.eye(3, dtype=bool), 0).sum() == 3


@pytest.mark.parametrize("case", ["colour", "zero", "unreadable", "aspect", "count", "array"])
def test_bad_masks_are_one_line_exit_2_before_the_net_loads(tmp_path, capsys, rng, two_regions, case):
    # Weights that do not exist: had the net been loaded before the masks were checked, the error
    # would name them instead.
    no_weights = str(tmp_path / "no.h5")
    content, style, masks = two_regions["content"], two_regions["red"], two_regions["masks"]
    needle = {"colour": "must be greyscale", "zero": "all zero", "unreadable": "not an image", "aspect": "shapes differ",
              "count": "has 1 masks for 2 style images", "array": "must be 2-D"}[case]
    if case == "colour":
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(masks[1])
    elif case == "zero":
        Image.fromarray(np.zeros((40, 48), np.uint8)).save(masks[1])
    elif case == "unreadable":
        masks[1].write_bytes(b"not a png at all")
    elif case == "aspect":
        Image.fromarray(np.full((40, 20), 255, np.uint8)).save(masks[1])
    if case == "array":
        with pytest.raises(ScratchnstError, match=needle):
            stylize_module.stylize(str(content), [str(style)] * 2, style_masks=[np.ones((40, 48)), np.ones((40, 48, 3))], quiet=True,
                                   weights=no_weights)
        return
    argv = ["stylize", str(content), str(style), str(style), "-o", str(tmp_path / "o.png"), "--quiet", "--weights", no_weights,
            "--style-masks", *map(str, masks)]
    if case == "count":
        argv = argv[:-1]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.weights
def test_regions_normalized_gradients_and_the_manifest(tmp_path, two_regions, tiny, weights_env, capsys):
    pics = two_regions
    out = tmp_path / "out.png"
    argv = ["stylize", str(pics["content"]), str(pics["red"]), str(pics["blue"]), "-o", str(out), *tiny.but(size=40, iterations=4).argv,
            "--init", "content", "--optimizer", "adam", "--learning-rate", "4", "--normalize-gradients",
            "--style-weight", "3", "--style-masks", *map(str, pics["masks"])]
    assert main(argv) == 0, capsys.readouterr().err
    args = json.loads(out.with_suffix(".json").read_text())["args"]
    assert args["style_masks"] == [str(p.resolve()) for p in pics["masks"]] and args["normalize_gradients"] and args["color"] == "none"
    rgb = np.asarray(Image.open(out), dtype=float)
    start = np.asarray(Image.open(pics["content"]).resize((40, 33), Image.Resampling.LANCZOS), dtype=float)
    change = rgb - start  # red style on the left, blue on the right: the halves move apart in red minus blue
    shift = change[..., 0] - change[..., 2]
    assert shift[:, :18].mean() > shift[:, 22:].mean() + 1


BAD_MASKS = {
    "missing": "no such file",
    "corrupt": "corrupt or truncated",
    "colour": "must be greyscale",
    "all-zero": "style mask is all zero",
    "other-shape": "their shapes differ",
}


@pytest.mark.weights
@pytest.mark.usefixtures("weights_env")
@pytest.mark.parametrize("kind", BAD_MASKS)
def test_bad_style_mask_is_one_line_exit_2(tmp_path, pictures, pics, out, tiny, run_cli, refused, kind):
    rng = np.random.default_rng(2)
    mask = tmp_path / ("nope.png" if kind == "missing" else "mask.png")
    if kind == "corrupt":  # header intact, compressed stream overwritten with noise
        Image.fromarray(pictures.rgb(rng=rng)).save(mask)
        data = mask.read_bytes()
        mask.write_bytes(data[:60] + bytes(rng.integers(0, 256, len(data) - 60, dtype=np.uint8)))
    elif kind != "missing":
        a = {"colour": pictures.rgb(rng=rng), "all-zero": np.zeros((40, 48), np.uint8), "other-shape": np.full((48, 20), 255, np.uint8)}[kind]
        Image.fromarray(a).save(mask)
    # A weights file that does not exist: the mask must be refused before the net is loaded.
    r = run_cli("stylize", *pics, "-o", out, *tiny.argv, "--weights", tmp_path / "no.h5", "--style-masks", mask, cwd=tmp_path)
    refused(r, out, BAD_MASKS[kind], mask.name)
