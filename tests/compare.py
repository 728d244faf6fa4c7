"""Comparing results of two runs of the same grid."""

import numpy as np
import xarray as xr


def assert_same_results(a: xr.Dataset, b: xr.Dataset) -> None:
    """Identical arrays, coordinates and attributes, but for ``runs`` (each run's
    record of what ran: its start time differs, and a resumed store has one more)."""
    xr.testing.assert_identical(a.drop_attrs(deep=False), b.drop_attrs(deep=False))
    assert {k: v for k, v in a.attrs.items() if k != "runs"} == {k: v for k, v in b.attrs.items() if k != "runs"}



def assert_same_grid(a: xr.Dataset, b: xr.Dataset, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """A grown store against a fresh run of its grid: the same config, axes, lanes
    done and phases, and every float equal up to float32 rounding (a new lane may run
    on another device, or beside other lanes, than in the fresh run: its last bits may
    differ; measured: 2e-9 absolute on a loss of 0.09, and 3.5e-7 on weights of order 0.1
    when the fresh run's lanes draw dropout masks where the stored ones did not)."""
    for name in ("config", "axes", "phases", "format"):
        assert a.attrs[name] == b.attrs[name], name
    assert set(a.variables) == set(b.variables)
    for name, var in a.variables.items():
        if var.dtype.kind == "f":
            np.testing.assert_allclose(var.values, b[name].values, rtol=rtol, atol=atol, err_msg=name)
        else:
            np.testing.assert_array_equal(var.values, b[name].values, err_msg=name)
