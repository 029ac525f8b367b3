"""gradcheck's numerics (scratchnst/gradcheck/numeric.py): the one perturb-and-restore loop and the
difference quotients built on it, against functions whose derivatives and errors are known."""

import numpy as np
import pytest

from scratchnst.gradcheck import five_point_gradient, numeric_gradient, numeric_jvp, perturbed, rel_error


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_perturbed_moves_one_entry_per_step_and_puts_it_back(rng, dtype):
    x = rng.standard_normal((2, 3, 4)).astype(dtype)
    before = x.copy()
    seen = perturbed(lambda v: v.copy(), x, 7, (0.5, -0.25, 2.0))
    for got, step in zip(seen, (0.5, -0.25, 2.0), strict=True):
        want = before.copy()
        want.reshape(-1)[7] = before.reshape(-1)[7] + step
        assert np.array_equal(got, want)  # the array itself, moved at flat index 7 only
    assert np.array_equal(x, before)  # and restored to the bit


def test_perturbed_restores_the_entry_when_f_raises(rng):
    x = rng.standard_normal(5)
    before = x.copy()

    def fails(v):
        raise RuntimeError("f failed")

    with pytest.raises(RuntimeError, match="f failed"):
        perturbed(fails, x, 2, (1e-5, -1e-5))
    assert np.array_equal(x, before)


def test_numeric_gradient_is_the_central_difference(rng):
    """For f = Σ x³ the central quotient is exactly 3x² + ε² (a one-sided one would be off by 3xε)."""
    x = rng.standard_normal((3, 4))
    eps = 1e-2
    numeric = numeric_gradient(lambda v: (v**3).sum(), x, eps=eps)
    np.testing.assert_allclose(numeric, (3 * x**2 + eps**2).reshape(-1), rtol=1e-9, atol=1e-9)
    picked = numeric_gradient(lambda v: (v**3).sum(), x, eps=eps, coords=[5, 0])
    np.testing.assert_array_equal(picked, numeric[[5, 0]])


def test_five_point_is_exact_for_a_quartic_where_the_central_one_is_not(rng):
    x = rng.standard_normal(6)
    f = lambda v: (v**4).sum()  # noqa: E731
    exact = 4 * x**3
    assert rel_error(five_point_gradient(f, x, eps=0.5, coords=range(6)), exact) < 1e-12
    assert rel_error(numeric_gradient(f, x, eps=0.5), exact) > 1e-2


def test_numeric_jvp_is_the_directional_derivative_through_dout(rng):
    """d/dz_i Σ forward(z) · dout for forward = z² (entrywise): 2 z_i dout_i, exact for a quadratic."""
    z = rng.standard_normal((2, 4))
    dout = rng.standard_normal((2, 4))
    numeric = numeric_jvp(lambda v: v**2, z, dout, eps=1e-3, coords=[0, 3, 6])
    assert rel_error(numeric, (2 * z * dout).reshape(-1)[[0, 3, 6]]) < 1e-9
