"""scratchnst.app.picture.inputs, through `python -m scratchnst stylize`: the output may not overwrite an
input (the content itself, by a relative path, a symlink or a hard link to it, the start image, a
style mask); refused in one line, exit 2."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from PIL import Image

pytestmark = [pytest.mark.weights, pytest.mark.usefixtures("weights_env")]


@pytest.mark.parametrize("case", ["same", "relative", "symlink", "hardlink", "init", "mask"])
def test_output_may_not_overwrite_an_input(tmp_path, pics, tiny, run_cli, refused, case):
    content, style = pics
    before = content.read_bytes()
    args = [str(content), str(style)]
    if case == "same":
        target = str(content)
    elif case == "relative":
        (tmp_path / "sub").mkdir()
        target = os.path.join("..", content.name)
        r = run_cli("stylize", *args, "-o", target, *tiny.argv, cwd=tmp_path / "sub")
        refused(r, None, "would overwrite the input image")
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
    r = run_cli("stylize", *args, "-o", target, *tiny.argv, cwd=tmp_path)
    refused(r, None, "would overwrite the input image")
    assert content.read_bytes() == before
