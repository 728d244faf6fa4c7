"""The docstring examples of grok_jax (``--doctest-modules``, part of the suite) run
each in a fresh directory, so that the stores they write (``results/tiny``) land
there. The tests' own fixtures are in ``tests/conftest.py``."""

import pytest


@pytest.fixture(autouse=True)
def _doctests_in_a_fresh_directory(request):
    if type(request.node).__name__ == "DoctestItem":
        request.getfixturevalue("monkeypatch").chdir(request.getfixturevalue("tmp_path"))
