"""The JAX settings of every test process, the tests' and the docstring examples' alike
(``pytest``, ``pytest tests/...``, ``pytest grok_jax``); each docstring example runs in
a fresh directory, so that the stores it writes (``results/tiny``) land there. The
tests' own fixtures are in ``tests/conftest.py``."""

import os
import tempfile

import pytest

# The command lines the tests start keep their compilation cache in a directory of
# this session, not the user's.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="grok_jax_test_cache_")
# The tests' programs are tiny and short: compiling them takes longer than running them,
# in this process and in the command lines it starts. So they compile at XLA's lowest
# backend optimization level and with the older CPU fusion code generator (a tiny grid's
# program: 2.1-2.5 s instead of 3.3-3.7 s; the numbers are the same up to rounding).
# XLA's defaults are kept where XLA_FLAGS names a level, and with GROK_JAX_TEST_XLA_DEFAULT=1
# (test_reference.py: its 1000-step trajectories are compared with numbers computed at
# the default level, and a last-bit change of the initial draws grows chaotically).
XLA_DEFAULT = os.environ.get("GROK_JAX_TEST_XLA_DEFAULT") == "1"
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
if not XLA_DEFAULT and "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()

import jax  # noqa: E402

# Two CPU devices in-process, whatever the machine (the command line takes one per
# core): sweeps in the tests shard over both, and their chunk counts are fixed.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    jax.config.update("jax_num_cpu_devices", 2)


@pytest.fixture(autouse=True)
def _doctests_in_a_fresh_directory(request):
    if type(request.node).__name__ == "DoctestItem":
        request.getfixturevalue("monkeypatch").chdir(request.getfixturevalue("tmp_path"))
