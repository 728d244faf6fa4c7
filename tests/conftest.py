"""Shared fixtures: tiny configs (p = 11) so the whole suite runs in minutes on CPU. The
JAX settings every test process starts with are in the repository root's ``conftest.py``."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # for numpy_reference


@pytest.fixture
def tiny():
    """The ``grok_jax/grids/tiny.py`` grid: 2 wd × 2 ξ × 2 seeds at p = 11, N = 32, 60 steps."""
    from grok_jax.config import load_config

    return load_config("tiny")
