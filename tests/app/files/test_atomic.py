"""scratchnst.app.files.atomic: a write replaces its target whole or not at all (a failure or an interrupt
at any point leaves the earlier file and no temp file), and keeps the target's mode; seen directly
and through save_image."""

import os

import numpy as np
import pytest
from PIL import Image

from scratchnst.app.files import images as im
from scratchnst.app.files.atomic import atomic_open, atomic_write_bytes, probe_writable
from scratchnst.errors import ScratchnstError


@pytest.mark.parametrize("failure, raised", [(OSError("No space left on device (simulated)"), ScratchnstError), (KeyboardInterrupt(), KeyboardInterrupt)],
                         ids=["oserror", "interrupt"])
def test_a_write_that_fails_midway_leaves_the_earlier_file_and_no_temp_file(tmp_path, failure, raised):
    path = tmp_path / "state.json"
    path.write_bytes(b"previous")
    with pytest.raises(raised) as info:
        with atomic_open(path) as f:
            f.write(b"half of the new")
            raise failure
    if raised is ScratchnstError:  # an OSError is the user's one line, naming the file
        assert str(info.value).startswith(f"{path}: cannot write (") and "\n" not in str(info.value)
    assert path.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["state.json"]


def test_a_new_file_is_0644_in_the_folders_it_needed_and_the_probe_leaves_nothing(tmp_path):
    path = tmp_path / "a" / "b" / "run.json"
    atomic_write_bytes(path, b"{}")
    assert path.read_bytes() == b"{}" and (path.stat().st_mode & 0o777) == 0o644
    probe_writable(path.parent)
    assert os.listdir(path.parent) == ["run.json"]
    with pytest.raises(OSError):
        probe_writable(tmp_path / "no such folder")


def fail_replace(src, dst):
    raise OSError("simulated failure in os.replace")


def fail_midway(self, fp, *args, **kwargs):
    fp.write(b"partial garbage")
    raise OSError("No space left on device (simulated)")


def interrupt_midway(self, fp, *args, **kwargs):
    fp.write(b"partial garbage")
    raise KeyboardInterrupt


@pytest.mark.parametrize("target, patch, exc", [
    (os, ("replace", fail_replace), ScratchnstError),
    (Image.Image, ("save", fail_midway), ScratchnstError),
    (Image.Image, ("save", interrupt_midway), KeyboardInterrupt),
])
def test_save_is_atomic(tmp_path, rng, monkeypatch, target, patch, exc):
    path = tmp_path / "out.png"
    path.write_bytes(b"previous result")
    monkeypatch.setattr(target, *patch)
    with pytest.raises(exc) as info:
        im.save_image(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), path)
    if exc is ScratchnstError:
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert path.read_bytes() == b"previous result"
    assert os.listdir(tmp_path) == ["out.png"]  # no temp file left behind


def test_save_replaces_existing(tmp_path, rng):
    path = tmp_path / "out.png"
    path.write_bytes(b"old")
    path.chmod(0o600)
    a = rng.integers(0, 256, (16, 17, 3), dtype=np.uint8)
    im.save_image(a, path)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), a)
    assert (path.stat().st_mode & 0o777) == 0o600
