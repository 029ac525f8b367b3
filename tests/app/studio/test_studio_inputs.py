"""scratchnst.app.studio.inputs: a run's options refused with the very line the CLI prints for the same
flag, the options the studio decides itself, the size limit; an upload checked as stylize reads an
image, its message naming the field and never the server's path."""

from __future__ import annotations

import pytest
from PIL import Image

from scratchnst.app import cli
from scratchnst.app.studio.inputs import FORM_OPTIONS, Limits, Refused, check_image, run_args
from scratchnst.errors import ScratchnstError


@pytest.mark.parametrize("options, argv", [
    ({"size": -1}, ["--size", "-1"]),
    ({"iterations": 0}, ["--iterations", "0"]),
    ({"scales": [0.5, 9]}, ["--scales", "0.5,9"]),
    ({"style_weight": -1}, ["--style-weight", "-1"]),
    ({"style_layers": ["relu9_9"]}, ["--style-layers", "relu9_9"]),
    ({"normalize_gradients": True}, ["--normalize-gradients"]),
    ({"style_blend": [1, 2]}, ["--style-blend", "1,2"]),
])
def test_a_bad_option_is_the_line_the_cli_prints(options, argv, capsys):
    """The options Settings checks (argparse refuses a bad choice first on the command line, in its words)."""
    code = cli.main(["stylize", *argv])
    cli_line = capsys.readouterr().err.strip().removeprefix("scratchnst: error: ")
    with pytest.raises(ScratchnstError) as refused:
        run_args(options, 1, Limits(), checkpoint_every=5)
    assert code == 2 and str(refused.value) == cli_line


def test_the_studio_decides_its_runs_files_and_a_form_names_no_path():
    args = run_args({"size": 64, "scales": [1]}, 1, Limits(), checkpoint_every=3)
    assert args["quiet"] is True and args["checkpoint_every"] == 3 and args["scales"] == [1.0]
    for name in ("weights", "style_masks", "save_every", "plot", "checkpoint_every", "quiet"):
        assert name not in FORM_OPTIONS
        with pytest.raises(ScratchnstError, match=f"unknown option '{name}'"):
            run_args({name: None}, 1, Limits(), checkpoint_every=3)
    with pytest.raises(ScratchnstError, match="--init: the studio starts from noise, content, style"):
        run_args({"init": "/etc/passwd"}, 1, Limits(), checkpoint_every=3)
    with pytest.raises(Refused, match="over this studio's limit of 64 px"):
        run_args({"size": 65}, 1, Limits(size=64), checkpoint_every=3)


def test_an_upload_is_checked_as_stylize_reads_an_image(tmp_path, pictures):
    good = pictures.save("good.png")
    assert check_image(good, "content", Limits()) == "PNG"
    empty, text = tmp_path / "empty", tmp_path / "text"
    empty.write_bytes(b"")
    text.write_bytes(b"not an image")
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (8, 8)).save(tiny)
    for path, needle in ((empty, "style 2: file is empty"), (text, "style 2: not an image"), (tiny, "smaller than")):
        with pytest.raises(ScratchnstError) as refused:
            check_image(path, "style 2", Limits())
        assert needle in str(refused.value) and str(tmp_path) not in str(refused.value)
    with pytest.raises(Refused, match="48x40 = 1,920 pixels; this studio's limit is 1,000") as refused:
        check_image(good, "content", Limits(pixels=1000))
    assert refused.value.status == 413
