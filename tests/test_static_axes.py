"""Static axes (width, p, activation, ...) swept in one plan and one store."""

import numpy as np
import pytest
import xarray as xr
import zarr

from grok_jax import config as cfg
from grok_jax import plotting, results
from grok_jax.errors import ConfigError
from grok_jax.execution import run_sweep
from grok_jax.results import load_results
from grok_jax.config import check_config
from grok_jax.plan import Resources, make_plan
from compare import assert_same_results

QUIET = dict(progress=False, log=lambda s: None)


def test_a_width_sweep_equals_separate_sweeps_per_width(tiny, tmp_path):
    tiny.sweep.width = (8, 16)
    both = run_sweep(tiny, out=str(tmp_path / "both"), **QUIET)
    assert both.sizes["hidden"] == 16 and list(both.width.values) == [8, 16]
    for width in (8, 16):
        alone_config = cfg.load_config("tiny")
        alone_config.width = width
        alone = run_sweep(alone_config, out=str(tmp_path / f"w{width}"), **QUIET)
        cell = both.sel(width=width).isel(hidden=slice(0, width), opt_value=slice(0, alone.sizes["opt_value"]))
        for name in alone.data_vars:
            np.testing.assert_array_equal(cell[name].values, alone[name].values, err_msg=f"width {width}: {name}")
        # past its width a lane's per-neuron arrays are NaN
        assert np.isnan(both.sel(width=width).isel(hidden=slice(width, None))["ipr_hidden"].values).all()
    assert both.attrs["config"] and "width" in both.attrs["axes"]
    light = load_results(tmp_path / "both", parameters=False)
    assert "params.U" not in light and "ipr_hidden" in light
    assert_same_results(light, both.drop_vars([n for n in both.data_vars if "." in n]))


def test_p_and_activation_in_one_store(tiny, tmp_path):
    tiny.sweep = dict(p=(11, 13), activation=("quad", "relu"), xi=(0.0, 0.3))
    plan = make_plan(tiny, Resources(n_devices=2))
    assert len(plan.groups) == 4 and {g for g, _ in plan.compile_groups} == {0, 1, 2, 3}
    ds = run_sweep(tiny, out=str(tmp_path), **QUIET)
    assert list(ds.activation.values) == ["quad", "relu"] and ds.sizes["operand"] == 13
    assert (ds.phase >= 0).all()
    small = ds.sel(p=11)
    assert np.isfinite(small["params.U"].isel(operand=slice(0, 11)).values).all()
    assert np.isnan(small["params.U"].isel(operand=slice(11, None)).values).all()
    # Each lane trained with its own settings: the relu and quad lanes differ.
    assert not np.allclose(ds.sel(activation="quad").train_loss, ds.sel(activation="relu").train_loss)
    assert_same_results(ds, run_sweep(tiny, out=str(tmp_path), **QUIET))  # resumed: nothing to do
    # Figures and the text table get one panel per static combination, labeled with it.
    assert len(plotting.save_figures(ds, str(tmp_path))) == 3
    table = plotting.phase_table(ds)
    # numeric axes make the heatmaps (p × ξ), the string axis the panels
    assert "[activation=quad]\n      p \\ xi" in table and "[activation=relu]" in table
    assert "p=" not in plotting.title(ds) and "φ=" not in plotting.title(ds)


@pytest.mark.parametrize("sweep,message", [
    (dict(p=(11, 12), task=("add", "div")), "task 'div' needs a prime p, got p=12"),
    (dict(width=(8, 0)), "width=0 must be >= 1"),
    (dict(model=("mlp2", "mlp7")), "model='mlp7' is not valid"),
])
def test_bad_static_values_are_named(tiny, sweep, message):
    tiny.sweep = sweep
    with pytest.raises(ConfigError, match=message):
        check_config(tiny)


def test_scale_for_batch_is_the_papers():
    config = cfg.load_config("wd_xi")
    config.sweep.lr = (0.01, 0.04)
    scaled = cfg.scale_for_batch(config, 64)
    assert (scaled.batch_size, scaled.steps, scaled.log_every) == (64, 4000, 80)
    assert scaled.lr == pytest.approx(0.005) and scaled.sweep.lr == pytest.approx((0.005, 0.02))
    assert config.batch_size == 0 and config.steps == 1000  # the original is untouched
    with pytest.raises(ConfigError, match="batch_size=0"):
        cfg.scale_for_batch(config, 0)
    config.sweep.batch_size = (16, 64)
    with pytest.raises(ConfigError, match="batch_size is swept"):
        cfg.scale_for_batch(config, 64)


def test_a_resumed_static_axes_store_equals_an_uninterrupted_one(tiny, tmp_path):
    tiny.sweep.width = (8, 16)
    whole = run_sweep(tiny, out=str(tmp_path / "whole"), **QUIET)
    run_sweep(tiny, out=str(tmp_path / "cut"), **QUIET)
    store = zarr.open_group(results.store_path(tmp_path / "cut"), mode="r+")
    lost = [1, 6, 12]  # lanes of both widths, as if the run had died before committing them
    done = store["done"][:]
    done[lost] = False
    store["done"][:] = done
    for name in ("train_loss", "ipr_hidden", "params.U"):
        store[name][lost] = np.nan
    logged = []
    resumed = run_sweep(tiny, out=str(tmp_path / "cut"), progress=False, log=logged.append)
    assert any("13 lanes already done" in line for line in logged), logged
    assert_same_results(resumed, whole)
