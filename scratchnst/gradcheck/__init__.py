"""Finite-difference checks of every backward pass: the proof that the hand-written gradients are right.

Central differences (f(x + ε) − f(x − ε)) / 2ε in float64, compared with the analytic gradient by
    rel_error(a, n) = max|a − n| / max(max|a|, max|n|, tiny).
Each op is checked through the scalar Σ op(x) · dout with a random dout, so its backward pass sees a
generic upstream gradient (for the Gram matrix a non-symmetric one).

Three ways in: `run_checks` (every op, the table `python -m scratchnst gradcheck` prints);
`explain_op` (one op with its numbers shown, `--op NAME`); `vgg_layer_check` (the objective's
gradient through the real VGG-16 checked at the input of every layer, so a broken backward is named,
`--vgg`).

    numeric.py   the one perturb-and-restore loop, the difference quotients on it, rel_error
    inputs.py    inputs that keep differences meaningful (tie-free, off the kinks), a random VGG
    table.py     the table of checks: every op, loss term and the objective
    explain.py   one op explained, its numbers shown
    layers.py    the layer-by-layer walk through VGG-16
"""

from scratchnst.gradcheck.explain import OPS, Geometry, OpReport, explain_op, format_op_report
from scratchnst.gradcheck.inputs import away_from_zero, random_vgg, soft_mask, temporal_inputs, tie_free
from scratchnst.gradcheck.layers import StageResult, format_layer_report, vgg_layer_check
from scratchnst.gradcheck.numeric import (
    EPS,
    THRESHOLDS,
    TINY,
    five_point_gradient,
    numeric_gradient,
    numeric_jvp,
    perturbed,
    rel_error,
)
from scratchnst.gradcheck.table import (
    CONV_CASES,
    POOL_CASES,
    WINOGRAD_CASES,
    CheckResult,
    check_loss,
    check_op,
    objective_check,
    op_checks,
    run_checks,
)

__all__ = [
    "CONV_CASES",
    "EPS",
    "OPS",
    "POOL_CASES",
    "THRESHOLDS",
    "TINY",
    "WINOGRAD_CASES",
    "CheckResult",
    "Geometry",
    "OpReport",
    "StageResult",
    "away_from_zero",
    "check_loss",
    "check_op",
    "explain_op",
    "five_point_gradient",
    "format_layer_report",
    "format_op_report",
    "numeric_gradient",
    "numeric_jvp",
    "objective_check",
    "op_checks",
    "perturbed",
    "random_vgg",
    "rel_error",
    "run_checks",
    "soft_mask",
    "temporal_inputs",
    "tie_free",
    "vgg_layer_check",
]
