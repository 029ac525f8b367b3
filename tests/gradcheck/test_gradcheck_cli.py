"""`python -m scratchnst gradcheck`: the table, the teaching view of one op, and the layer-by-layer VGG
walk that names a broken backward."""

import numpy as np
import pytest

from scratchnst import gradcheck
from scratchnst.core import ops
from scratchnst.app.cli import main
from scratchnst.gradcheck.layers import kink_side


def _run(capsys, *argv):
    code = main(["gradcheck", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_plain_gradcheck_keeps_the_table(capsys):
    code, out, _ = _run(capsys, "--no-vgg")
    assert code == 0
    assert out.splitlines()[0].split()[:2] == ["op", "shapes"]
    assert "passed, 0 failed" in out


@pytest.mark.parametrize(
    "argv, shapes",
    [
        (["--op", "conv2d", "--shape", "1,2,5,7", "--stride", "2", "--pad", "0"], "x(1, 2, 5, 7) -> (1, 4, 2, 3) w(4, 2, 3, 3) s2 p0"),
        (["--op", "conv2d", "--shape", "2x3x6x6", "--kernel", "1"], "x(2, 3, 6, 6) -> (2, 4, 8, 8) w(4, 3, 1, 1) s1 p1"),
        (["--op", "maxpool", "--shape", "1,2,7,9", "--kernel", "3", "--stride", "2"], "x(1, 2, 7, 9) -> (1, 2, 3, 4) k3 s2"),
        (["--op", "avgpool"], "x(1, 2, 6, 6) -> (1, 2, 3, 3) k2 s2"),
        (["--op", "relu"], "x(1, 2, 4, 5) -> (1, 2, 4, 5)"),
        (["--op", "gram"], "x(1, 4, 3, 5) -> (1, 4, 4)"),
        (["--op", "content"], "F(1, 4, 3, 5), P the same"),
        (["--op", "style", "--shape", "1,3,4,4"], "F(1, 3, 4, 4), A(1, 3, 3)"),
        (["--op", "tv"], "x(1, 3, 5, 6)"),
        (["--op", "winograd"], "x(1, 3, 7, 5) -> (1, 4, 7, 5) w(4, 3, 3, 3) s1 p1"),
        (["--op", "winograd", "--shape", "2,2,9,6", "--pad", "0"], "x(2, 2, 9, 6) -> (2, 4, 7, 4) w(4, 2, 3, 3) s1 p0"),
    ],
)
def test_one_op_shows_its_numbers(capsys, argv, shapes):
    code, out, _ = _run(capsys, *argv, "--samples", "3")
    assert code == 0, out
    assert shapes in out
    rows = [line.split() for line in out.splitlines() if line.startswith("  (")]
    assert len(rows) == 3
    for row in rows:  # index tuple, analytic, numeric, |difference|: the numbers agree
        analytic, numeric = float(row[-3]), float(row[-2])
        assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-9)
    assert "max relative error over all" in out and ": pass" in out
    assert "float64 carries ~16 digits" in out


def test_float32_explains_its_looser_threshold(capsys):
    code, out, _ = _run(capsys, "--op", "conv2d", "--dtype", "float32")
    assert code == 0
    assert "(float32, eps=0.01)" in out and "threshold 0.01" in out
    assert "errors up to 1e-2 are rounding, not a bug" in out


def test_eps_is_used_and_a_huge_one_fails(capsys):
    # The style loss is quartic: with ε = 1 the central difference is visibly off.
    code, out, _ = _run(capsys, "--op", "style", "--eps", "1")
    assert code == 1
    assert "eps=1)" in out and ": FAIL" in out


@pytest.mark.parametrize(
    "op, name, broken",
    [
        ("maxpool", "maxpool2d_backward", ops.avgpool2d_backward),
        ("winograd", "winograd_conv2d_backward", lambda dout, cache, right=ops.winograd_conv2d_backward: 1.01 * right(dout, cache)),
    ],
)
def test_a_broken_op_fails_with_exit_1(capsys, monkeypatch, op, name, broken):
    monkeypatch.setattr(ops, name, broken)
    code, out, _ = _run(capsys, "--op", op)
    assert code == 1
    assert ": FAIL" in out


def test_op_all_without_vgg(capsys):
    code, out, _ = _run(capsys, "--op", "all", "--no-vgg", "--samples", "1")
    assert code == 0
    assert [line.split(":")[0] for line in out.splitlines() if line and not line.startswith(" ")] == list(gradcheck.OPS)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--op", "relu", "--pad", "1"], "--pad applies to conv2d and winograd only"),
        (["--op", "winograd", "--kernel", "5"], "--kernel/--stride apply to conv2d and the pools"),
        (["--op", "winograd", "--pad", "2"], "pad must be 0 or 1"),
        (["--op", "gram", "--stride", "2"], "--kernel/--stride apply to conv2d and the pools"),
        (["--op", "conv2d", "--shape", "1,2,3"], "needs 4 positive sizes"),
        (["--op", "maxpool", "--shape", "1,1,1,1"], "gives no output"),
        (["--op", "content", "--shape", "2,3,4,4"], "N must be 1"),
        (["--op", "conv2d", "--eps", "0"], "--eps must be > 0"),
        (["--stride", "2"], "need --op"),
        (["--vgg", "--no-vgg"], "contradicts"),
        (["--vgg", "--dtype", "float32"], "float64 only"),
        (["--vgg", "--shape", "1,2,3"], "--shape for vgg is H,W"),
    ],
)
def test_user_errors_are_one_line_exit_2(capsys, argv, message):
    code, out, err = _run(capsys, *argv)
    assert code == 2
    assert message in err and err.count("\n") == 1


# -- layer by layer ---------------------------------------------------------------------------------


def test_layer_walk_on_a_random_net_passes_and_names_a_broken_relu(rng, monkeypatch):
    rows = gradcheck.vgg_layer_check(gradcheck.random_vgg(rng), rng, size=(32, 32), coords=3)
    assert all(r.passed for r in rows), gradcheck.format_layer_report(rows)
    assert rows[0].stage == "losses@relu5_1" and rows[-2].stage == "conv1_1"

    monkeypatch.setattr(ops, "relu_backward", lambda dout, cache: dout)  # forgets the mask
    rows = gradcheck.vgg_layer_check(gradcheck.random_vgg(rng), rng, size=(32, 32), coords=3)
    broken = [r.stage for r in rows if r.broken]
    assert broken and all(name.startswith("relu") for name in broken), gradcheck.format_layer_report(rows)
    assert not rows[-1].passed  # and the objective's gradient at the pixels is wrong too


@pytest.mark.weights
def test_vgg_layer_by_layer_on_the_real_net(capsys, vgg_weights_path):
    code, out, _ = _run(capsys, "--vgg", "--shape", "16,16", "--samples", "2", "--weights", str(vgg_weights_path))
    assert code == 0, out
    lines = out.splitlines()
    for layer in ("relu5_1", "pool4", "conv3_2", "pool1", "conv1_1"):
        assert any(line.split()[0] == layer and line.endswith("ok") for line in lines), out
    assert lines[-1].startswith("all 32 stages agree")


@pytest.mark.weights
def test_a_broken_pool_backward_is_named(capsys, monkeypatch, vgg_weights_path):
    monkeypatch.setattr(ops, "maxpool2d_backward", ops.avgpool2d_backward)
    code, out, _ = _run(capsys, "--vgg", "--shape", "16,16", "--samples", "2", "--weights", str(vgg_weights_path))
    assert code == 1
    flagged = [line.split()[0] for line in out.splitlines() if "BROKEN here" in line]
    assert flagged == ["pool4", "pool3", "pool2", "pool1"], out
    assert "broken backward: pool4, pool3, pool2, pool1" in out
    conv = next(line for line in out.splitlines() if line.startswith("conv1_1 "))
    assert "inherited" in conv  # right backward, wrong gradient arriving from above


def test_kink_side_matches_the_op():
    z = np.array([[[[1.0, 3.0, 2.0, 2.0], [0.0, -1.0, 2.0, 2.0], [5.0, 5.0, 0.0, 0.0], [1.0, 4.0, 0.0, 0.0]]]])
    assert (kink_side("relu", "max", z) == (z > 0)).all()
    _, cache = ops.maxpool2d_forward(z, 2, 2)
    assert (kink_side("pool", "max", z) == cache.argmax).all()  # ties: the first maximum
    assert kink_side("pool", "avg", z) is None and kink_side("conv", "max", z) is None


def test_gradcheck_cli_explains_temporal(capsys):
    assert main(["gradcheck", "--op", "temporal"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("temporal: x(1, 3, 5, 6)") and ": pass" in out
