"""The docstring examples (``pytest --doctest-modules``, part of the suite) run each
in a fresh directory, so that the stores they write (``results/tiny``) land there."""

import pytest


@pytest.fixture(autouse=True)
def _in_a_fresh_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
