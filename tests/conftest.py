"""Shared fixtures: a seeded `rng`, and the real VGG-16 weights for tests marked `weights`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scratchnst.errors import WeightsError
from scratchnst.app.weights import resolve_weights


@pytest.fixture
def rng() -> np.random.Generator:
    """A freshly seeded generator, so every test sees the same numbers."""
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def vgg_weights_path() -> Path:
    """Path of the verified real weights, fetched on first use (`weights fetch`'s route).

    A failure to get them fails the tests that need them: CI must prove the fetch works.
    """
    try:
        return resolve_weights()
    except WeightsError as e:
        pytest.fail(f"real VGG-16 weights unavailable: {e}")
