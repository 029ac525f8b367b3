"""scratchnst.app.bench, `scratchnst bench`: the command runs at a tiny size and reports consistent numbers;
FLOP counting by hand; the per-op profile of one evaluation."""

import json

import numpy as np
import pytest

from scratchnst.app.bench import conv_flops
from scratchnst.core.objective import CONTENT_LAYERS, STYLE_LAYERS

# VGG-16's (F, C) per conv, as the weights file has them.
VGG_FC = [(64, 3), (64, 64), (128, 64), (128, 128), (256, 128), (256, 256), (256, 256),
          (512, 256), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]


def _params():
    return [(np.empty((F, C, 3, 3), np.float32), np.empty(F, np.float32)) for F, C in VGG_FC]


def test_conv_flops_match_a_hand_count_at_64():
    # Default layers reach relu5_1: convs 1_1 .. 5_1 at 64², 32², 16², 8², 4².
    hw = {1: 64 * 64, 2: 32 * 32, 3: 16 * 16, 4: 8 * 8, 5: 4 * 4}
    by_hand = 2 * 9 * (
        (64 * 3 + 64 * 64) * hw[1]
        + (128 * 64 + 128 * 128) * hw[2]
        + (256 * 128 + 2 * 256 * 256) * hw[3]
        + (512 * 256 + 2 * 512 * 512) * hw[4]
        + 512 * 512 * hw[5]
    )
    flops = conv_flops(_params(), 64, 64, list(CONTENT_LAYERS) + list(STYLE_LAYERS))
    assert flops["forward"] == by_hand == flops["backward"]
    assert flops["total"] == 2 * by_hand


def test_conv_flops_stop_at_the_deepest_layer_and_floor_odd_sizes():
    only_first = conv_flops(_params(), 33, 35, ["relu1_1"])
    assert only_first["forward"] == 2 * 64 * 3 * 9 * 33 * 35
    # pool1 floors 33×35 to 16×17 before conv2_1.
    two = conv_flops(_params(), 33, 35, ["conv2_1"])
    assert two["forward"] - conv_flops(_params(), 33, 35, ["relu1_2"])["forward"] == 2 * 128 * 64 * 9 * 16 * 17


def test_conv_flops_at_512_is_about_300_gflop():
    total = conv_flops(_params(), 512, 512, list(STYLE_LAYERS))["total"]
    assert 295e9 < total < 305e9


@pytest.mark.weights
@pytest.mark.usefixtures("weights_env")
def test_bench_command_json_at_a_tiny_size(tmp_path, run_cli):
    proc = run_cli("bench", "--sizes", "32", "--repeats", "1", "--json", cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["machine"]["numpy"]
    auto, r = report["results"]  # the default: auto, then im2col, each in its own process
    assert (auto["conv"], r["conv"]) == ("auto", "im2col")
    assert auto["loss"] == pytest.approx(r["loss"], rel=1e-5)  # Winograd computes the same objective
    assert r["size"] == 32 and r["dtype"] == "float32" and r["backend"] == "numpy"
    assert r["conv_gflop"] * 1e9 == pytest.approx(conv_flops(_params(), 32, 32, STYLE_LAYERS)["total"])
    for key in ("s_per_eval", "gflops", "gemm_peak_gflops", "pct_of_peak", "peak_rss_mb", "loss"):
        assert r[key] > 0, (key, r)
    assert r["gflops"] == pytest.approx(r["conv_gflop"] / r["s_per_eval"])
    # The share of the GEMM peak is the ratio of two timings: how large it is says how fast this
    # machine is and how busy, so only its definition is checked.
    assert r["pct_of_peak"] == pytest.approx(100 * r["gflops"] / r["gemm_peak_gflops"])
    assert 50 < r["peak_rss_mb"] < 4096


@pytest.mark.weights
@pytest.mark.usefixtures("weights_env")
def test_bench_table_and_bad_sizes(tmp_path, run_cli):
    proc = run_cli("bench", "--sizes", "32", "--repeats", "1", cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    header, row = proc.stdout.strip().splitlines()[:2]
    assert "% peak" in header and row.split()[0] == "32"
    bad = run_cli("bench", "--sizes", "16", cwd=tmp_path)
    assert bad.returncode == 2 and "≥ 32" in bad.stderr


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_profile_times_every_op_call_of_one_evaluation_and_restores_the_ops(rng, pooling):
    from scratchnst.app.bench import profile_eval
    from scratchnst.core import ops
    from scratchnst.core.objective import NSTObjective
    from scratchnst.gradcheck import random_vgg

    net = random_vgg(rng, pooling=pooling)
    content, style, x = (rng.uniform(-100, 100, (1, 3, 32, 32)) for _ in range(3))
    obj = NSTObjective(net, content, [style])
    before = {n: getattr(ops, n) for n in ops.__all__}
    prof = profile_eval(obj, x)
    calls = {}
    for op, _, count, _ in prof["rows"]:
        calls[op] = calls.get(op, 0) + count
    # To relu5_1: 11 convs, 11 ReLUs and 4 pools forward, each crossed again backward; the rest "other".
    assert calls["conv2d_forward"] == calls["conv2d_backward"] == 11
    assert calls["relu_forward"] == calls["relu_backward"] == 11
    assert calls[f"{pooling}pool2d_forward"] == calls[f"{pooling}pool2d_backward"] == 4
    assert calls["other"] == 1 and prof["total_s"] > 0
    assert {n: getattr(ops, n) for n in ops.__all__} == before
