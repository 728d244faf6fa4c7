"""Crash safety of the results store: kills, a full disk and Ctrl-C at named points
(tests/faults.py), stores of earlier versions, leftovers of killed runs."""

import json
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import xarray as xr
import zarr

from grok_jax import results
from grok_jax.sweep import run_sweep

# 16 lanes in 4 chunks of 2 lanes on each of 2 devices; no timed layout choice
# (several lanes per device), so every run of it gives the same numbers.
ARGS = ["--grid=tiny", "--lanes_per_device=2", "--config.sweep.seed=(0,1,2,3)", "--config.steps=40"]
FAULTS = os.path.join(os.path.dirname(__file__), "faults.py")
QUIET = dict(progress=False, log=lambda s: None)
# (fault, at which commit, exit status, lanes committed when it stopped; None: no store)
STOPS = [("kill_creating", 1, -9, None), ("kill_before_done", 2, -9, 4), ("kill_after_commit", 2, -9, 8),
         ("enospc", 2, 1, 4), ("interrupt", 3, 130, 8)]


def _sweep(out, env, *fault):
    command = [FAULTS, *map(str, fault), "--"] if fault else ["-m", "grok_jax.sweep"]
    return subprocess.run([sys.executable, *command, *ARGS, f"--out={out}"], capture_output=True, text=True,
                          timeout=300, env=env)


def _store(out) -> xr.Dataset | None:
    path = results.store_path(out)
    return xr.open_zarr(path, consolidated=False).load() if os.path.exists(path) else None


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """An uninterrupted run, and per fault: the run stopped by it, its store then,
    the files beside it, and the same command run again; two at a time."""
    tmp = tmp_path_factory.mktemp("faults")
    # Programs from a compilation cache of their own (the same programs: seconds less per run).
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_COMPILATION_CACHE_DIR=str(tmp / "cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    ref = _sweep(tmp / "ref", env)
    assert ref.returncode == 0, ref.stderr

    def stop_and_resume(stop):
        fault, at = stop[:2]
        out = tmp / fault
        proc = _sweep(out, env, fault, at)
        files = sorted(p.name for p in out.iterdir())
        return proc, _store(out), files, _sweep(out, env), _store(out)

    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = dict(zip([s[0] for s in STOPS], pool.map(stop_and_resume, STOPS)))
    return _store(tmp / "ref"), runs


@pytest.mark.parametrize("fault,at,status,committed", STOPS, ids=[s[0] for s in STOPS])
def test_a_run_stopped_anywhere_resumes_to_the_same_store(stopped, fault, at, status, committed):
    ref, runs = stopped
    proc, store, files, resumed, final = runs[fault]
    assert proc.returncode == status, proc.stderr
    if committed is None:  # killed while creating it: no store, only the partial one
        assert store is None and len(files) == 1 and files[0].startswith(".results.zarr.partial-")
    else:  # exactly the committed chunks are marked done, each with all its results
        done = np.flatnonzero(store.done.values)
        assert len(done) == committed
        xr.testing.assert_identical(store.isel(lane=done), ref.isel(lane=done))
    if status > 0:  # a one-line message, no traceback
        last = proc.stderr.strip().splitlines()[-1]
        assert "Traceback" not in proc.stderr and last.startswith("error: ") and "run the same command" in last
    if fault == "enospc":
        assert "No space left on device" in last and results.STORE in last
    assert resumed.returncode == 0, resumed.stderr
    assert f"{committed or 0} lanes already done" in resumed.stdout
    assert ("removing" in resumed.stdout) == (committed is None)  # the partial store
    xr.testing.assert_identical(final, ref)


def test_lanes_marked_done_without_results_run_again(tiny, tmp_path):
    """A store of an earlier version killed between its done mark and the metrics."""
    first = run_sweep(tiny, out=str(tmp_path), lanes_per_device=1, **QUIET)
    store = zarr.open_group(results.store_path(tmp_path), mode="r+")
    store["train_acc"][3, 1:] = np.nan  # lane 3: done, but its metrics never written
    store["phase"][3] = -1
    store["weight_norm"][5, :] = np.nan  # lane 5: likewise
    logged = []
    again = run_sweep(tiny, out=str(tmp_path), lanes_per_device=1, progress=False, log=logged.append)
    assert any(line.startswith("warning: 2 lane(s)") for line in logged), logged
    assert any("6 lanes already done" in line for line in logged)
    xr.testing.assert_identical(again, first)


def test_done_lanes_are_never_rewritten(tiny, tmp_path):
    """Resumed with another chunk layout, a chunk may hold done lanes: they keep
    their numbers (a sentinel survives), the others are computed."""
    first = run_sweep(tiny, out=str(tmp_path), lanes_per_device=1, **QUIET)  # chunks of 1-2 lanes
    store = zarr.open_group(results.store_path(tmp_path), mode="r+")
    store["train_loss"][0, :] = 123.0
    store["done"][-1] = False  # the last lane "crashed": must be recomputed
    store["test_acc"][-1, :] = np.nan
    store["phase"][-1] = -1
    resumed = run_sweep(tiny, out=str(tmp_path), lanes_per_device=4, **QUIET)  # one chunk of 8 lanes
    assert resumed.train_loss.values.ravel()[0] == 123.0
    np.testing.assert_allclose(resumed.test_acc.values, first.test_acc.values, rtol=1e-6)
    assert bool(resumed.done.all())


def test_a_new_plot_is_applied_on_resume(tiny, tmp_path):
    run_sweep(tiny, out=str(tmp_path), **QUIET)
    tiny.plot.x, tiny.plot.y = "wd", "xi"
    ds = run_sweep(tiny, out=str(tmp_path), **QUIET)
    assert json.loads(ds.attrs["config"])["plot"] == {"x": "wd", "y": "xi"}
    assert json.loads(results.load_results(tmp_path).attrs["config"])["plot"] == {"x": "wd", "y": "xi"}


def test_leftovers_of_dead_runs_are_removed_others_kept(tiny, tmp_path):
    host = socket.gethostname()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    leftovers = {f".results.zarr.partial-{host}-{dead}": False,  # a killed run here: removed
                 f".results.zarr.partial-{host}-{os.getpid()}x": True,  # not ours: kept
                 f".results.zarr.partial-{host}-{os.getppid()}": True,  # a live run: kept
                 f".results.zarr.partial-otherhost-{dead}": True}  # another host's: kept
    for name in leftovers:
        (tmp_path / name).mkdir()
    logged = []
    run_sweep(tiny, out=str(tmp_path), progress=False, log=logged.append)
    for name, kept in leftovers.items():
        assert (tmp_path / name).exists() == kept, name
    assert sum("unfinished store of a killed run" in line for line in logged) == 1


def test_a_half_made_store_is_refused_in_one_line(tiny, tmp_path):
    from grok_jax.errors import ConfigError

    os.makedirs(results.store_path(tmp_path))
    zarr.open_group(results.store_path(tmp_path), mode="a").attrs["format"] = results.FORMAT
    with pytest.raises(ConfigError, match="is not a complete grok_jax results store"):
        run_sweep(tiny, out=str(tmp_path), **QUIET)
