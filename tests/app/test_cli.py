"""scratchnst.app.cli, `python -m scratchnst stylize` in a subprocess: a bad option or usage is one
line and exit 2 before any image is read; --debug (before or after the subcommand) shows the traceback."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.weights, pytest.mark.usefixtures("weights_env")]


BAD_OPTIONS = [
    (["--size", "0"], "--size"),
    (["--size", "-3"], "--size"),
    (["--size", "big"], "--size"),
    (["--size", "1.5"], "--size"),
    (["--iterations", "0"], "--iterations"),
    (["--iterations", "10,x"], "--iterations"),
    (["--iterations", "10,5,2"], "--iterations has 3 values for 1 scales"),
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
    (["--tile", "24"], "--tile must be 0 (never tile) or a multiple of 16 px, the stride of the deepest layer, relu5_1 (got 24)"),
    (["--tile", "-16"], "--tile must be 0 (never tile) or a multiple of 16 px, the stride of the deepest layer, relu5_1 (got -16)"),
    (["--tile", "x"], "argument --tile: expected a whole number, got 'x'"),
    (["--tile", "48", "--style-layers", "relu1_1,pool5"], "--tile must be 0 (never tile) or a multiple of 32 px"),
    (["--bogus-flag"], "unrecognized arguments"),
    (["--color", "sepia"], "--color"),
    (["--preserve-colors", "--color", "histogram"], "contradicts --color histogram"),
    (["--normalize-gradients"], "--normalize-gradients needs --optimizer adam"),
    (["--style-masks", "a.png", "b.png"], "--style-masks has 2 masks for 1 style images"),
    (["--style-blend", "1", "--style-masks", "a.png"], "with --style-masks each style has its own region"),
]


@pytest.mark.parametrize("args,needle", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_bad_option_is_one_line_exit_2_before_images(tmp_path, pics, out, tiny, run_cli, refused, args, needle):
    # The content does not exist: the option must be refused first (cheap checks before loading).
    r = run_cli("stylize", str(tmp_path / "missing.png"), str(pics[1]), "-o", str(out), *tiny.argv, *args, cwd=tmp_path)
    refused(r, out, needle)


@pytest.mark.parametrize("args,needle", [
    (["--size", "0"], "--size"),
    (["--style-weight", "nan"], "--style-weight"),
    (["--content-layers", "relu9_9"], "relu9_9"),
    (["--style-blend", "1,2"], "style-blend"),
    (["--optimizer", "sgd"], "--optimizer"),
    (["--scales", "0.5,,1"], "--scales"),
])
def test_bad_options_are_one_line_usage_errors(tmp_path, pics, out, tiny, run_cli, refused, args, needle):
    # The same refusals with a content that exists.
    r = run_cli("stylize", str(pics.content), str(pics.style), "-o", str(out), *tiny.but(size=40, iterations=3).argv, *args, cwd=tmp_path)
    refused(r, out, needle)


@pytest.mark.parametrize("args,needle", [
    (["-o", "out.gif"], "unsupported output extension"),
    (["--resume", "nothing.json"], "cannot read the run manifest"),
])
def test_other_usage_errors(tmp_path, run_cli, refused, args, needle):
    r = run_cli("stylize", *args, cwd=tmp_path)
    refused(r, None, needle)


def test_content_without_style(tmp_path, pics, run_cli, refused):
    refused(run_cli("stylize", str(pics[0]), cwd=tmp_path), None, "at least one STYLE")


@pytest.mark.parametrize("where", ["top", "sub"])
def test_debug_shows_the_traceback(tmp_path, pics, run_cli, where):
    args = ["stylize", str(tmp_path / "missing.png"), str(pics[1])]
    args = ["--debug", *args] if where == "top" else [*args, "--debug"]
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" in r.stderr and "no such file" in r.stderr.splitlines()[-1]
