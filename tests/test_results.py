"""The results store: resuming a partly finished sweep, unfinished cells, plots."""

import numpy as np
import xarray as xr
import zarr

import grok_jax
from grok_jax import phases
from grok_jax.plotting import phase_table, save_figures
from grok_jax.execution import run_sweep
from grok_jax.plan import make_plan
from compare import assert_same_results

QUIET = dict(progress=False, log=lambda s: None)


def test_resume_runs_only_unfinished_chunks(tiny, tmp_path):
    out = tmp_path / "run"
    first = run_sweep(tiny, out=str(out), lanes_per_device=1, **QUIET)  # 8 chunks of 1-2 lanes
    store = zarr.open_group(str(out / "results.zarr"), mode="r+")
    store["train_loss"][0, :] = 123.0  # a sentinel in a finished chunk: must survive
    store["done"][-1] = False  # the last lane "crashed": must be recomputed
    store["test_acc"][-1, :] = np.nan
    store["phase"][-1] = -1
    partial = grok_jax.load_results(out)
    assert int(partial.phase.values.ravel()[-1]) == -1
    resumed = run_sweep(tiny, out=str(out), lanes_per_device=1, **QUIET)
    assert resumed.train_loss.values.ravel()[0] == 123.0
    np.testing.assert_array_equal(resumed.test_acc.values, first.test_acc.values)
    assert bool(resumed.done.all())


def test_in_memory_results_are_the_stored_ones(tiny, tmp_path):
    tiny.sweep = {"xi": (0.0, 0.3), "alpha": (0.4, 0.6)}  # α fastest: groups interleave
    tiny.compile_groups = 2
    assert len(make_plan(tiny).compile_groups) == 2
    stored = run_sweep(tiny, out=str(tmp_path), **QUIET)
    assert_same_results(run_sweep(tiny, **QUIET), stored)


def test_unfinished_cells_have_no_majority():
    phase = np.array([[3, -1], [-1, -1], [0, 0]], np.int8)
    top, frac = phases.majority(phase, axis=1)
    np.testing.assert_array_equal(top, [3, -1, 0])
    np.testing.assert_array_equal(frac[[0, 2]], [1.0, 1.0])
    assert np.isnan(frac[1])


def test_seed_only_and_one_axis_grids_are_reported(tiny, tmp_path):
    tiny.sweep = {"seed": (0, 1)}
    ds = run_sweep(tiny, **QUIET)
    assert phase_table(ds).startswith("phase: ")
    assert save_figures(ds, str(tmp_path)) == []  # nothing to map
    tiny.sweep = {"xi": (0.0, 0.3)}
    ds = run_sweep(tiny, **QUIET)
    assert "xi" in phase_table(ds).splitlines()[0]
    assert len(save_figures(ds, str(tmp_path))) == 3


def test_every_grid_and_scale_is_a_valid_plan():
    from grok_jax.config import available_grids, check_config, load_config

    for grid in available_grids():
        for scale in ("small",) if grid == "tiny" else ("small", "paper"):  # tiny has one scale
            config = load_config(grid, scale)
            check_config(config)
            plan = make_plan(config)
            assert plan.n_lanes == int(np.prod([len(v) for v in plan.axes.values()]))
    paper = load_config("alpha_xi", "paper")
    assert (paper.p, paper.width, paper.steps) == (97, 500, 2000)
    plan = make_plan(paper)  # docs/design.md's figures: 6 groups, 9% padding
    assert len(plan.compile_groups) == 6
    assert round(sum(c.n_max * c.count for c in plan.chunks) / plan.lanes.n_train.sum() - 1, 2) == 0.09
    assert len(paper.sweep.alpha) == 17 and len(paper.sweep.xi) == 19 and paper.sweep.wd == (0.0, 5.0, 15.0, 20.0)


def test_grokking_and_unlearning_steps_are_stored(tmp_path):
    """p 41, N 128, wd 8, α 0.5 (the main grid's Full Inversion): with ξ 0.15 the run
    memorizes its corrupted labels by step ~60 and unlearns them by ~340; without
    corruption it groks. The stored steps are those of the stored curves."""
    config = grok_jax.load_config("wd_xi")
    config.sweep = {"xi": (0.0, 0.15)}
    config.wd = 8.0
    ds = run_sweep(config, out=str(tmp_path), **QUIET)
    np.testing.assert_array_equal(ds.grok_step, phases.grokking_step(ds.test_acc.values, ds.step.values))
    np.testing.assert_array_equal(ds.unlearn_step, phases.unlearning_step(
        ds.corrupt_acc.values, ds.clean_acc.values, ds.step.values))
    assert np.isnan(float(ds.unlearn_step.sel(xi=0.0)))  # nothing to unlearn
    assert 100 <= float(ds.unlearn_step.sel(xi=0.15)) <= 800 and float(ds.grok_step.sel(xi=0.0)) <= 800
    assert ds.grok_step.dtype == np.float32 and int(ds.phase.sel(xi=0.15)) == phases.FULL
