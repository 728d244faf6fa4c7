"""Comparing results of two runs of the same grid."""

import xarray as xr


def assert_same_results(a: xr.Dataset, b: xr.Dataset) -> None:
    """Identical arrays, coordinates and attributes, but for ``runs`` (each run's
    record of what ran: its start time differs, and a resumed store has one more)."""
    xr.testing.assert_identical(a.drop_attrs(deep=False), b.drop_attrs(deep=False))
    assert {k: v for k, v in a.attrs.items() if k != "runs"} == {k: v for k, v in b.attrs.items() if k != "runs"}
