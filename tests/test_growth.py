"""A store resumed under other run settings, grown by more runs, damaged: against
uninterrupted and fresh runs of the same grid, bit for bit."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr
import zarr

import grok_jax
from grok_jax import results
from grok_jax.errors import ConfigError, StoreDamaged
from grok_jax.execution import run_sweep
from grok_jax.train import OPT_STATE
from compare import assert_same_grid, assert_same_results

QUIET = dict(progress=False, log=lambda s: None)
# One lane per device: a lane's numbers then do not depend on the lanes batched beside it
# (with several, they may differ in the last bit, as between any two chunkings).
ONE = dict(lanes_per_device=1, **QUIET)
FAULTS = os.path.join(os.path.dirname(__file__), "faults.py")
# Two α values in compile groups of their own, 2 lanes per device: 4 chunks.
ALPHA = ["--grid=tiny", "--config.sweep.alpha=(0.4,0.6)", "--config.compile_groups=8", "--config.steps=40",
         "--lanes_per_device=2"]


def _cli(args, devices, *fault):
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
    command = [FAULTS, *map(str, fault), "--"] if fault else ["-m", "grok_jax.sweep"]
    return subprocess.run([sys.executable, *command, *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, XLA_FLAGS=flags))


@pytest.mark.parametrize("batch", [0, 16], ids=["full_batch", "mini_batches"])
def test_a_killed_run_resumes_under_other_run_settings(batch, tmp_path):
    """Killed after its first chunk on 2 devices; resumed on 1 device with one compile
    group, 1 lane per device, another memory budget and checkpoints: the stored plan
    runs, and the store equals an uninterrupted run's."""
    args = [*ALPHA, f"--config.batch_size={batch}"]
    whole = _cli([*args, f"--out={tmp_path / 'whole'}"], 2)
    killed = _cli([*args, f"--out={tmp_path / 'cut'}"], 2, "kill_after_commit", 1)
    assert whole.returncode == 0 and killed.returncode == -9, whole.stderr + killed.stderr
    resumed = _cli([*args[:2], "--config.compile_groups=1", "--config.steps=40", f"--config.batch_size={batch}",
                    "--lanes_per_device=1", "--memory_gb=0.5", "--checkpoint_steps=20",
                    f"--out={tmp_path / 'cut'}"], 1)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout and "4 of 16 lanes done" in resumed.stdout, resumed.stdout
    assert "6 chunk(s) of 2 lanes on 1 cpu device(s)" in resumed.stdout  # the stored chunks, 2 lanes per device
    assert_same_results(grok_jax.load_results(tmp_path / "cut"), grok_jax.load_results(tmp_path / "whole"))


def _count_lanes(monkeypatch) -> list:
    """The lanes the sweep commits, as it commits them."""
    written, write = [], results.write

    def counting(path, lanes, *rest):
        written.extend(np.asarray(lanes).tolist())
        return write(path, lanes, *rest)

    monkeypatch.setattr(results, "write", counting)
    return written


def _grow(config, **sweep):
    grown = config.copy_and_resolve_references()
    for name, values in sweep.items():
        grown.sweep[name] = values
    return grown


@pytest.mark.parametrize("batch", [0, 16], ids=["full_batch", "mini_batches"])
def test_a_grown_store_equals_a_fresh_run_of_the_grown_grid(tiny, batch, tmp_path, monkeypatch):
    """More seeds and ξ; then new α and lr axes and a second width; then a dropout
    axis: every stored lane kept bit for bit and never run again, every new lane as a
    fresh run of the grown grid computes it (up to float32 rounding)."""
    tiny.steps, tiny.batch_size = 20, batch
    tiny.sweep = {"seed": (0, 1), "xi": (0.0, 0.3)}
    out = str(tmp_path / "grown")
    first = run_sweep(tiny, out=out, **ONE)
    written = _count_lanes(monkeypatch)
    more = _grow(tiny, seed=(0, 1, 2), xi=(0.0, 0.15, 0.3))
    logged = []
    grown = run_sweep(more, out=out, lanes_per_device=1, progress=False, log=logged.append)
    assert any("4 of 9 lanes stored; 5 new lanes" in line for line in logged), logged
    assert sorted(written) == [1, 4, 6, 7, 8]  # seed 2 and ξ 0.15: the new lanes only
    np.testing.assert_array_equal(grown.train_loss.sel(seed=[0, 1], xi=[0.0, 0.3]).values, first.train_loss.values)
    assert_same_grid(grown, run_sweep(more, out=str(tmp_path / "fresh1"), **ONE))
    written.clear()
    wider = _grow(more, alpha=(0.45, 0.6), lr=(0.01, 0.02), width=(32, 48))
    before = grown
    grown = run_sweep(wider, out=out, **ONE)
    kept = grown.sel(alpha=0.6, lr=0.01, width=32, drop=True).isel(  # width 48 widens dims
        hidden=slice(0, 32), opt_value=slice(0, before.sizes["opt_value"]))
    assert_same_results(kept.drop_attrs(), before.drop_attrs())
    axes = json.loads(grown.attrs["axes"])
    lane = xr.DataArray(np.arange(72).reshape([len(v) for v in axes.values()]), dims=list(axes), coords=axes)
    stored = lane.sel(alpha=0.6, lr=0.01, width=32).values.ravel()  # tiny's α, lr and width
    assert sorted(written) == sorted(set(range(72)) - set(stored.tolist()))  # 63 new lanes, each once
    assert_same_grid(grown, run_sweep(wider, out=str(tmp_path / "fresh2"), **ONE))
    # A dropout axis: a fresh run of the grid draws dropout masks in every lane (a rate
    # of 0 keeps every unit) and evaluates the training rows in a forward of their own,
    # so its lanes at rate 0 differ from the stored ones by rounding, which 20 AdamW steps
    # grow to 2.4e-6 on weights of order 0.03-0.07 (measured).
    dropout = _grow(wider, dropout=(0.0, 0.2))
    assert_same_grid(run_sweep(dropout, out=out, **ONE), run_sweep(dropout, out=str(tmp_path / "fresh3"), **ONE),
                     rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("change,message", [
    (dict(p=13), "p=11 there, 13 now"),
    (dict(lr=0.02), "lr=0.01 there, 0.02 now"),
    (dict(steps=40), "steps=60 there, 40 now"),
    (dict(steps=120, log_every=30), "log_every=20 there, 30 now"),
    (dict(sweep={"seed": (0,), "wd": (0.0, 5.0), "xi": (0.0, 0.3)}), "the store's values [1] are gone"),
    (dict(sweep={"seed": (0, 1), "wd": (0.0, 5.0), "xi": (0.0, 0.3), "alpha": (0.4, 0.5)}),
     "a new axis must include the store's alpha=0.6"),
])
def test_a_change_of_stored_lanes_is_refused_naming_the_field(tiny, change, message, tmp_path):
    run_sweep(tiny, out=str(tmp_path), **QUIET)
    before = grok_jax.load_results(tmp_path)
    other = tiny.copy_and_resolve_references()
    other.update(change)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        run_sweep(other, out=str(tmp_path), **QUIET)
    assert_same_results(grok_jax.load_results(tmp_path), before)


@pytest.mark.parametrize("fault", ["kill_creating", "kill_mid_swap", "kill_after_commit"])
def test_a_growth_killed_anywhere_leaves_the_old_or_the_grown_store(fault, tmp_path):
    """Killed while the grown store is built, between its two renames, or after its
    first new chunk: the old store is there as it was, or the grown one; the same
    command then ends with the store of a fresh run of the grown grid."""
    base = ["--grid=tiny", "--config.steps=20", "--lanes_per_device=1"]
    more = [*base, "--config.sweep.seed=(0,1,2)"]
    assert _cli([*base, f"--out={tmp_path / 'g'}"], 2).returncode == 0
    old = grok_jax.load_results(tmp_path / "g")
    killed = _cli([*more, f"--out={tmp_path / 'g'}"], 2, fault, 1)
    assert killed.returncode == -9, killed.stderr
    if fault != "kill_mid_swap":  # (then the store is aside until the next run puts it back)
        after = grok_jax.load_results(tmp_path / "g")
        if fault == "kill_creating":
            assert_same_results(after, old)
        else:
            assert after.sizes["seed"] == 3 and int(after.done.sum()) == 8 + 2
    again = _cli([*more, f"--out={tmp_path / 'g'}"], 2)
    assert again.returncode == 0, again.stderr
    assert ("restoring" in again.stdout) == (fault == "kill_mid_swap"), again.stdout
    by_seed = ["phase_majority", "phase_fraction"]  # over the seeds: 3 of them now
    xr.testing.assert_identical(  # stored lanes untouched (the attributes are the grown grid's)
        grok_jax.load_results(tmp_path / "g").sel(seed=[0, 1]).drop_vars(by_seed).drop_attrs(),
        old.drop_vars(by_seed).drop_attrs())
    assert _cli([*more, f"--out={tmp_path / 'fresh'}"], 2).returncode == 0
    assert_same_grid(grok_jax.load_results(tmp_path / "g"), grok_jax.load_results(tmp_path / "fresh"))
    leftovers = [p.name for p in (tmp_path / "g").iterdir() if p.name.startswith(".")]
    assert leftovers == [".results.zarr.lock"]


def test_a_damaged_chunk_is_named_and_repaired(tiny, tmp_path):
    run_sweep(tiny, out=str(tmp_path), lanes_per_device=2, **QUIET)
    before = grok_jax.load_results(tmp_path)
    chunk = tmp_path / "results.zarr" / "test_acc" / "c" / "1" / "0"  # lanes 4-7
    chunk.write_bytes(chunk.read_bytes()[:10])
    with pytest.raises(StoreDamaged, match=r"variable 'test_acc', lanes 4-7, cannot be read .*--repair"):
        grok_jax.load_results(tmp_path)
    proc = _cli(["--grid=tiny", "--lanes_per_device=2", f"--out={tmp_path}"], 2)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and lines[-1].startswith("error: ") and "lanes 4-7" in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr
    repaired = _cli(["--grid=tiny", "--lanes_per_device=2", f"--out={tmp_path}", "--repair"], 2)
    assert repaired.returncode == 0 and "'test_acc' lanes 4-7" in repaired.stdout, repaired.stderr
    assert "4 of 8 lanes done" in repaired.stdout
    assert_same_grid(grok_jax.load_results(tmp_path), before)


@pytest.mark.parametrize("extra", [dict(), dict(batch_size=16, dropout=0.2)], ids=["full_batch", "minibatch_dropout"])
def test_more_steps_continue_every_lane_as_a_longer_run(tiny, extra, tmp_path):
    """40 steps, then 80 with a seed more: every stored lane continues from its stored
    parameters, optimizer state and random streams and equals a fresh 80-step run;
    in segments with checkpoints as in one call."""
    tiny.update(steps=40, **extra)
    out = str(tmp_path / "longer")
    run_sweep(tiny, out=out, **ONE)
    longer = tiny.copy_and_resolve_references()
    longer.steps, longer.sweep.seed = 80, (0, 1, 2)
    logged = []
    grown = run_sweep(longer, out=out, lanes_per_device=1, checkpoint_steps=20, progress=False, log=logged.append)
    assert any("8 of 12 lanes stored; 4 new lanes; the 8 stored lanes continue from step 40 to 80" in line
               for line in logged), logged
    fresh = run_sweep(longer, out=str(tmp_path / "fresh"), **ONE)
    assert_same_grid(grown, fresh, rtol=0, atol=0)
    assert grown[OPT_STATE].dims[-1] == "opt_value" and grown.sizes["opt_value"] == 2 * 3 * 11 * 32 + 1  # mu, nu, count


def test_a_continuation_killed_mid_chunk_resumes_from_its_checkpoint(tmp_path):
    base = ["--grid=tiny", "--config.steps=40", "--lanes_per_device=1", "--checkpoint_steps=20"]  # segments of 20
    longer = ["--grid=tiny", "--config.steps=80", "--lanes_per_device=1", "--checkpoint_steps=20"]
    assert _cli([*base, f"--out={tmp_path / 'c'}"], 2).returncode == 0
    killed = _cli([*longer, f"--out={tmp_path / 'c'}"], 2, "kill_after_checkpoint", 1)
    assert killed.returncode == -9, killed.stderr
    again = _cli([*longer, f"--out={tmp_path / 'c'}"], 2)
    assert again.returncode == 0 and "at step 60 from its checkpoint" in again.stdout, again.stdout + again.stderr
    assert _cli([*longer, f"--out={tmp_path / 'fresh'}"], 2).returncode == 0
    assert_same_grid(grok_jax.load_results(tmp_path / "c"), grok_jax.load_results(tmp_path / "fresh"), rtol=0,
                     atol=0)


def test_more_steps_need_a_finished_store_with_its_state(tiny, tmp_path):
    tiny.steps = 20
    run_sweep(tiny, out=str(tmp_path / "nostate"), keep_state=False, **QUIET)
    assert OPT_STATE not in grok_jax.load_results(tmp_path / "nostate")
    longer = tiny.copy_and_resolve_references()
    longer.steps = 40
    with pytest.raises(ConfigError, match="keeps no training state"):
        run_sweep(longer, out=str(tmp_path / "nostate"), **QUIET)
    run_sweep(tiny, out=str(tmp_path / "unfinished"), **QUIET)
    zarr.open_group(results.store_path(tmp_path / "unfinished"), mode="r+")["done"][:4] = False
    with pytest.raises(ConfigError, match=r"is not finished \(4 of 8 lanes done\)"):
        run_sweep(longer, out=str(tmp_path / "unfinished"), **QUIET)


def test_more_steps_on_a_static_axis_and_a_reordered_one(tiny, tmp_path):
    """Lanes of a smaller width continue from their own part of the store's wider
    dims; an axis whose values come in another order maps every lane to its place;
    a new axis of a model option (mlp2's activation) includes the stored value."""
    tiny.steps = 40
    tiny.sweep = {"width": (8, 16), "xi": (0.0, 0.1, 0.2, 0.3)}
    out = str(tmp_path / "g")
    run_sweep(tiny, out=out, **ONE)
    longer = tiny.copy_and_resolve_references()
    longer.steps, longer.sweep.xi = 80, (0.0, 0.2, 0.1, 0.3)
    grown = run_sweep(longer, out=out, **ONE)
    assert not any(name.startswith("start.") for name in grown)  # the continuation's copies, dropped when done
    assert_same_grid(grown, run_sweep(longer, out=str(tmp_path / "fresh"), **ONE), rtol=0, atol=0)
    relu = longer.copy_and_resolve_references()
    relu.sweep.activation = ("quad", "relu")
    assert_same_grid(run_sweep(relu, out=out, **ONE), run_sweep(relu, out=str(tmp_path / "fresh_relu"), **ONE),
                     rtol=0, atol=0)


def test_a_continuation_killed_during_a_commit_resumes_from_its_start(tmp_path):
    """Killed after a continued chunk wrote its new state, before its done mark: the
    lanes continue again from the state they started from, not from the new one."""
    base = ["--grid=tiny", "--config.steps=40", "--lanes_per_device=1"]
    longer = ["--grid=tiny", "--config.steps=80", "--lanes_per_device=1"]
    assert _cli([*base, f"--out={tmp_path / 'c'}"], 2).returncode == 0
    killed = _cli([*longer, f"--out={tmp_path / 'c'}"], 2, "kill_before_done", 1)
    assert killed.returncode == -9, killed.stderr
    assert _cli([*longer, f"--out={tmp_path / 'c'}"], 2).returncode == 0
    assert _cli([*longer, f"--out={tmp_path / 'fresh'}"], 2).returncode == 0
    assert_same_grid(grok_jax.load_results(tmp_path / "c"), grok_jax.load_results(tmp_path / "fresh"), rtol=0,
                     atol=0)
