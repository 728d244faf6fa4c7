"""Execution: the same command gives the same store, a resume runs the stored plan,
the compilation cache, what importing grok_jax does, an installed package."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr
import zarr

from grok_jax import results
from grok_jax.errors import ConfigError
from grok_jax.execution import run_sweep
from compare import assert_same_results

QUIET = dict(progress=False, log=lambda s: None)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "grok_jax.sweep", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def _store(out) -> xr.Dataset:
    return xr.open_zarr(results.store_path(out), consolidated=False).load()


def test_the_same_command_twice_gives_identical_stores(tmp_path):
    """At p 31 a CPU lane pads its readout product to 32 columns: a layout choice that
    was once timed, now a rule. The second run loads its program from the cache."""
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    args = ("--grid=tiny", "--config.p=31", "--config.steps=20", "--lanes_per_device=1")
    first, second = (_cli(*args, f"--out={tmp_path / name}", env=env) for name in ("a", "b"))
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "compiled in" in first.stdout and "32 columns wide" in first.stdout
    assert "loaded from the compilation cache" in second.stdout and "compiled in" not in second.stdout
    assert_same_results(_store(tmp_path / "a"), _store(tmp_path / "b"))
    plan = json.loads(_store(tmp_path / "a").attrs["plan"])
    assert plan["platform"] == "cpu" and {c["layout"]["columns"] for c in plan["chunks"]} == {32}
    off = _cli(*args, f"--out={tmp_path / 'c'}", "--compilation_cache=", env=env)
    assert off.returncode == 0 and "compiled in" in off.stdout


def test_a_resume_keeps_the_stored_plan(tiny, tmp_path):
    """Resumed with other lanes per device, compile groups and memory budget, the
    rest of the store is computed in the stored plan: the store equals an
    uninterrupted run's, bit for bit."""
    whole = run_sweep(tiny, out=str(tmp_path / "whole"), lanes_per_device=2, **QUIET)
    run_sweep(tiny, out=str(tmp_path / "cut"), lanes_per_device=2, **QUIET)
    group = zarr.open_group(results.store_path(tmp_path / "cut"), mode="r+")
    group["done"][4:] = False  # the second half "crashed"
    logged = []
    other = tiny.copy_and_resolve_references()
    other.compile_groups = 3
    resumed = run_sweep(other, out=str(tmp_path / "cut"), lanes_per_device=1, memory_gb=0.5, progress=False,
                        log=logged.append)
    assert any("resuming" in line and "4 of 8 lanes done" in line for line in logged), logged
    assert_same_results(resumed, whole)


def test_a_stored_chunk_that_no_longer_fits_is_refused_with_the_figure(tiny, tmp_path):
    run_sweep(tiny, out=str(tmp_path), lanes_per_device=4, **QUIET)
    zarr.open_group(results.store_path(tmp_path), mode="r+")["done"][:] = False
    with pytest.raises(ConfigError, match=r"runs 4 lane\(s\) per device at n_train 72: about .* GiB, more than "
                                          r"--memory_gb=0.0003; resume with --memory_gb="):
        run_sweep(tiny, out=str(tmp_path), memory_gb=0.0003, **QUIET)  # one lane fits, not 4


def _edit_plan(path, edit) -> None:
    group = zarr.open_group(results.store_path(path), mode="r+")
    plan = json.loads(group.attrs["plan"])
    edit(plan)
    group.attrs["plan"] = json.dumps(plan)


def test_a_store_of_another_platform_is_refused(tiny, tmp_path):
    run_sweep(tiny, out=str(tmp_path), **QUIET)
    _edit_plan(tmp_path, lambda plan: plan.update(platform="tpu"))
    with pytest.raises(ConfigError, match="written on tpu; resuming it on cpu"):
        run_sweep(tiny, out=str(tmp_path), **QUIET)


def test_an_unreadable_plan_is_named(tiny, tmp_path):
    run_sweep(tiny, out=str(tmp_path), **QUIET)
    _edit_plan(tmp_path, lambda plan: plan.pop("chunks"))
    with pytest.raises(ConfigError, match="the plan recorded in .* is unreadable"):
        run_sweep(tiny, out=str(tmp_path), **QUIET)


def test_importing_grok_jax_leaves_jax_alone():
    code = ("import grok_jax, jax; print(jax.config.jax_num_cpu_devices, jax.config.jax_compilation_cache_dir); "
            "grok_jax.use_cpu_cores(); print(jax.config.jax_num_cpu_devices == len(jax.devices())); "
            "print(callable(grok_jax.pruning.prune))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["-1", "None", "True", "True"]


def test_an_installed_package_finds_its_grids(tmp_path):
    """``pip install .`` (not editable) ships the grids."""
    target = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), REPO],
                         capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr
    code = "import grok_jax.config as c; print(c.available_grids(), c.load_config('wd_xi').p)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env=dict(os.environ, PYTHONPATH=str(target)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("]")[0] == "['alpha_xi', 'dropout_xi', 'tiny', 'wd_xi'" and out.stdout.split()[-1] == "41"
    assert str(target) in subprocess.run([sys.executable, "-c", "import grok_jax; print(grok_jax.__file__)"],
                                         capture_output=True, text=True, cwd=tmp_path,
                                         env=dict(os.environ, PYTHONPATH=str(target))).stdout


def test_the_accelerator_path_on_a_cpu_gives_the_same_phases(tmp_path):
    """--accelerator_layout: no row blocks, lanes batched per device, no readout
    padding, as on a GPU/TPU; against the CPU layout (one lane per device, 2 row
    blocks, readout padded to 64 columns): equal up to rounding, same phases."""
    from grok_jax.config import base_config

    config = base_config()
    config.update(p=61, width=160, steps=40, log_every=20, lr=0.02)
    config.sweep.wd, config.sweep.xi = (0.0, 5.0), (0.0, 0.3)
    cpu = run_sweep(config, out=str(tmp_path / "cpu"), **QUIET)
    accelerator = run_sweep(config, out=str(tmp_path / "accelerator"), accelerator_layout=True, **QUIET)
    plans = {name: json.loads(ds.attrs["plan"]) for name, ds in (("cpu", cpu), ("accelerator", accelerator))}
    assert plans["cpu"]["rules"] == "cpu" and plans["accelerator"]["rules"] == "accelerator"
    layout = lambda name: {k: plans[name]["chunks"][0]["layout"][k] for k in ("lanes_per_device", "row_blocks", "columns")}  # noqa: E731
    assert layout("cpu") == {"lanes_per_device": 1, "row_blocks": 2, "columns": 64}
    assert layout("accelerator") == {"lanes_per_device": 2, "row_blocks": 1, "columns": 61}
    np.testing.assert_array_equal(accelerator.phase.values, cpu.phase.values)
    for name in ("train_loss", "test_loss", "train_acc", "test_acc", "weight_norm", "params.W"):
        np.testing.assert_allclose(accelerator[name].values, cpu[name].values, rtol=2e-4, atol=2e-5, err_msg=name)
    assert len(set(cpu.phase.values.ravel())) > 1  # the grid is not all one phase
    with pytest.raises(ConfigError, match="written with the cpu layout rules"):
        run_sweep(config, out=str(tmp_path / "cpu"), accelerator_layout=True, **QUIET)
