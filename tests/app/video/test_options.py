"""scratchnst.app.video.options: VideoOptions.validated makes a new object, and video's defaults and
option names have one home that the CLI (video's and batch's options) takes them from."""

from __future__ import annotations

import pytest

from scratchnst.app.cli import build_parser
from scratchnst.app.picture.settings import ITERATIONS
from scratchnst.app.video import options
from scratchnst.errors import ScratchnstError


def test_video_options_validated_is_a_new_object_and_the_defaults_have_one_home():
    given = options.VideoOptions(first_iterations=None, frames=[2, None])
    checked = given.validated()
    assert checked is not given and (given.first_iterations, given.frames) == (None, [2, None])
    assert (checked.first_iterations, checked.frames) == (ITERATIONS, (2, None))
    assert options.JOB_OPTIONS == ("temporal_weight", "first_iterations", "frames", "independent", "fps", "passes", "stop_change", "blend", "long_term")
    parser = build_parser()
    video_args = parser.parse_args(["video", "in.mp4", "s.png", "-o", "o.mp4"])
    batch_args = parser.parse_args(["batch", "--videos", "in.mp4", "--styles", "s.png", "-o", "out"])
    for args in (video_args, batch_args):
        assert {k: getattr(args, k) for k in options.JOB_OPTIONS} == {k: getattr(options.DEFAULTS, k) for k in options.JOB_OPTIONS}
    assert video_args.iterations == options.ITERATIONS


def test_long_term_offsets_are_sorted_and_a_batch_jobs_text_is_refused():
    """--long-term J as the Python API and a batch job give it: a list (sorted here), () or [] for off;
    text ("1,10", which the command line parses itself) is one line naming the option."""
    assert options.VideoOptions(long_term=[20, 1, 10]).validated().long_term == (1, 10, 20)
    assert options.VideoOptions(long_term=[]).validated().long_term == () == options.DEFAULTS.long_term
    assert build_parser().parse_args(["video", "in.mp4", "s.png", "-o", "o.mp4", "--long-term", "1, 40,10"]).long_term == (1, 40, 10)
    for bad, needle in (("1,10", "takes a list of frame offsets"), (5, "takes a list"), ([1, 2.5], "whole number"), ([1, True], "whole number")):
        with pytest.raises(ScratchnstError, match=needle):
            options.VideoOptions(long_term=bad).validated()
