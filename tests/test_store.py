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

from grok_jax import checkpoints, results
from grok_jax.errors import ConfigError
from grok_jax.execution import run_sweep
from compare import assert_same_results

# 16 lanes in 4 chunks of 2 lanes on each of 2 devices, each chunk in 2 segments of
# 20 steps with a checkpoint between them; no timed layout choice (several lanes per
# device), so every run of it gives the same numbers.
ARGS = ["--grid=tiny", "--lanes_per_device=2", "--config.sweep.seed=(0,1,2,3)", "--config.steps=40",
        "--checkpoint_steps=20"]
FAULTS = os.path.join(os.path.dirname(__file__), "faults.py")
QUIET = dict(progress=False, log=lambda s: None)
# (fault, at which event, exit status, lanes committed when it stopped (None: no store),
# whether the resumed run restores the chunk in flight from its checkpoint). A chunk's commit happens once the next
# chunk is dispatched; its checkpoint after its first segment. Programs: start,
# advance, finish. SIGTERM stops at the next segment boundary, with a checkpoint: 75.
STOPS = [("kill_creating", 1, -9, None, False), ("kill_before_done", 2, -9, 4, True),
         ("kill_after_commit", 2, -9, 8, False), ("enospc", 2, 1, 4, True), ("interrupt", 3, 130, 8, True),
         ("kill_compiling", 2, -9, 0, False), ("kill_after_checkpoint", 2, -9, 4, True),
         ("term_compiling", 1, 75, 0, True), ("term_mid_chunk", 3, 75, 4, True),
         ("term_after_commit", 2, 75, 8, True), ("term_before_done", 1, 75, 4, True),
         ("checkpoint_enospc", 2, 1, 4, False)]


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
    # The runs share the session's compilation cache (conftest): seconds less per run.
    env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2")
    ref = _sweep(tmp / "ref", env)
    assert ref.returncode == 0, ref.stderr

    def stop_and_resume(stop):
        fault, at = stop[:2]
        out = tmp / fault
        proc = _sweep(out, env, fault, at)
        files = sorted(p.name for p in out.iterdir() if p.name != ".results.zarr.lock")
        return proc, _store(out), files, _sweep(out, env), _store(out)

    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = dict(zip([s[0] for s in STOPS], pool.map(stop_and_resume, STOPS)))
    return _store(tmp / "ref"), runs, sorted(p.name for p in (tmp / "ref").iterdir())


@pytest.mark.parametrize("fault,at,status,committed,checkpointed", STOPS, ids=[s[0] for s in STOPS])
def test_a_run_stopped_anywhere_resumes_to_the_same_store(stopped, fault, at, status, committed, checkpointed):
    ref, runs, ref_files = stopped
    proc, store, files, resumed, final = runs[fault]
    assert proc.returncode == status, proc.stderr
    if checkpointed:
        assert ".results.zarr.inflight" in files
    assert ("resuming chunk of lanes" in resumed.stdout) == checkpointed, resumed.stdout
    if committed is None:  # killed while creating it: no store, only the partial one
        assert store is None and len(files) == 1 and files[0].startswith(".results.zarr.partial-")
    else:  # exactly the committed chunks are marked done, each with all its results
        done = np.flatnonzero(store.done.values)
        assert len(done) == committed
        assert_same_results(store.isel(lane=done), ref.isel(lane=done))
    if status > 0:  # a one-line message, no traceback
        last = proc.stderr.strip().splitlines()[-1]
        assert "Traceback" not in proc.stderr and last.startswith("error: ") and "run the same command" in last
    if fault in ("enospc", "checkpoint_enospc"):
        assert "No space left on device" in last and (results.STORE + (checkpoints.SUFFIX if "checkpoint" in fault
                                                                       else "")) in last
    assert resumed.returncode == 0, resumed.stderr
    assert f"{committed or 0} lanes already done" in resumed.stdout
    assert ("removing" in resumed.stdout) == (committed is None)  # the partial store
    assert_same_results(final, ref)  # every array, bit for bit
    assert len(json.loads(final.attrs["runs"])) == (1 if committed is None else 2)  # one entry per run


def test_a_finished_run_leaves_no_checkpoint(stopped):
    assert [name for name in stopped[2] if name.startswith(".")] == [".results.zarr.lock"]


def test_lanes_marked_done_without_results_run_again(tiny, tmp_path):
    """A store of an earlier version killed between its done mark and its metrics:
    any variable a finished lane always has may be missing."""
    first = run_sweep(tiny, out=str(tmp_path), lanes_per_device=1, **QUIET)
    store = zarr.open_group(results.store_path(tmp_path), mode="r+")
    store["train_acc"][3, 1:] = np.nan  # lane 3: done, but its metrics never written
    store["phase"][3] = -1
    store["test_acc"][5, :] = np.nan  # lane 5: only its test accuracy missing
    store["weight_norm"][6, :] = np.nan  # lane 6: only its weight norm
    logged = []
    again = run_sweep(tiny, out=str(tmp_path), lanes_per_device=1, progress=False, log=logged.append)
    assert any(line.startswith("warning: 3 lane(s)") for line in logged), logged
    assert any("5 lanes already done" in line for line in logged)
    assert_same_results(again, first)


def test_a_second_run_on_the_same_store_is_refused(tiny, tmp_path):
    path = results.store_path(tmp_path)
    with results.exclusive(path):  # another run holds it
        with pytest.raises(ConfigError, match=f"another run \\(host .*, pid {os.getpid()}\\) is writing"):
            run_sweep(tiny, out=str(tmp_path), **QUIET)
        assert not os.path.exists(path)
    run_sweep(tiny, out=str(tmp_path), **QUIET)  # released: this run may


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


def test_leftovers_are_removed_by_the_run_holding_the_store(tiny, tmp_path):
    leftovers = [".results.zarr.partial-otherhost-1-0a1b2c3d", f".results.zarr.partial-{socket.gethostname()}-1-x"]
    for name in [*leftovers, ".other.zarr.partial-a-1-x"]:  # the last: another store's, kept
        (tmp_path / name).mkdir()
    logged = []
    run_sweep(tiny, out=str(tmp_path), progress=False, log=logged.append)
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == [".other.zarr.partial-a-1-x"]
    assert sum("unfinished store of a killed run" in line for line in logged) == 2
    (tmp_path / leftovers[0]).mkdir()  # also when the store exists already
    run_sweep(tiny, out=str(tmp_path), progress=False, log=logged.append)
    assert not (tmp_path / leftovers[0]).exists()


def test_a_store_of_another_format_is_refused_and_kept(tiny, tmp_path):
    run_sweep(tiny, out=str(tmp_path), **QUIET)
    zarr.open_group(results.store_path(tmp_path), mode="a").attrs["format"] = results.FORMAT - 1
    with pytest.raises(ConfigError, match=f"store format {results.FORMAT - 1}, this version reads format "
                                          f"{results.FORMAT}; move it aside"):
        run_sweep(tiny, out=str(tmp_path), **QUIET)
    assert zarr.open_group(results.store_path(tmp_path), mode="r").attrs["format"] == results.FORMAT - 1


def test_a_half_made_store_is_refused_in_one_line(tiny, tmp_path):
    os.makedirs(results.store_path(tmp_path))
    zarr.open_group(results.store_path(tmp_path), mode="a").attrs["format"] = results.FORMAT
    with pytest.raises(ConfigError, match="is not a complete grok_jax results store"):
        run_sweep(tiny, out=str(tmp_path), **QUIET)
