"""scratchnst.app.video.options: VideoOptions.validated makes a new object, and video's defaults and
option names have one home that the CLI (video's and batch's options) takes them from."""

from __future__ import annotations

from scratchnst.app.cli import build_parser
from scratchnst.app.picture.settings import ITERATIONS, Settings
from scratchnst.app.video import options


def test_video_options_validated_is_a_new_object_and_the_defaults_have_one_home():
    given = options.VideoOptions(first_iterations=None, frames=[2, None])
    checked = given.validated()
    assert checked is not given and (given.first_iterations, given.frames) == (None, [2, None])
    assert (checked.first_iterations, checked.frames) == (ITERATIONS, (2, None))
    assert options.JOB_OPTIONS == ("temporal_weight", "first_iterations", "frames", "independent", "fps", "passes", "stop_change", "blend")
    parser = build_parser()
    video_args = parser.parse_args(["video", "in.mp4", "s.png", "-o", "o.mp4"])
    batch_args = parser.parse_args(["batch", "--videos", "in.mp4", "--styles", "s.png", "-o", "out"])
    for args in (video_args, batch_args):
        assert {k: getattr(args, k) for k in options.JOB_OPTIONS} == {k: getattr(options.DEFAULTS, k) for k in options.JOB_OPTIONS}
    assert video_args.iterations == options.ITERATIONS
