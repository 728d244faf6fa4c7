"""The results store: a zarr directory written chunk by chunk, read back as N-D.

On disk every per-run variable has a flat ``lane`` dimension (lanes in C order of
the grid), so a finished chunk of lanes is a few contiguous region writes (one
when α is not swept) and a crash loses at most the two chunks in flight (one
training, one being written); ``done`` marks the lanes written. The whole config
(JSON), the swept axes and their values are in the attributes.
:func:`load_results` reshapes ``lane`` into the swept axes:

    >>> ds = grok_jax.load_results("results/wd_xi")   # dims: wd, xi, step, neuron
    >>> ds.test_acc.isel(step=-1).to_pandas()
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import xarray as xr

from grok_jax import metrics, phases

STORE = "results.zarr"  # name of the store inside an output directory
FORMAT = 2  # bumped when the layout changes (2: per-layer weight norms)


def store_path(out: str | os.PathLike) -> str:
    """The store inside output directory ``out`` (a path to a store is kept)."""
    out = os.fspath(out)
    return out if out.rstrip("/").endswith(".zarr") else os.path.join(out, STORE)


def empty(config_json: str, axes: dict[str, tuple], steps: np.ndarray, width: int,
          finals: tuple[str, ...]) -> xr.Dataset:
    """The flat results of the grid ``axes`` before any lane ran (NaN metrics,
    ``phase`` -1, ``done`` all False), with the config and axes in the attributes."""
    n_lanes = int(np.prod([len(v) for v in axes.values()]))
    coords = {"step": ("step", steps), "neuron": ("neuron", np.arange(width))}
    grid = np.meshgrid(*[np.asarray(v) for v in axes.values()], indexing="ij")
    coords.update({name: ("lane", g.ravel()) for name, g in zip(axes, grid)})
    nan = lambda *shape: np.full(shape, np.nan, np.float32)  # noqa: E731
    data = {name: (("lane", "step"), nan(n_lanes, len(steps))) for name in metrics.METRICS}
    data.update({name: (("lane", "neuron"), nan(n_lanes, width)) for name in finals})
    data["phase"] = ("lane", np.full(n_lanes, -1, np.int8))
    data["done"] = ("lane", np.zeros(n_lanes, bool))
    attrs = {
        "config": config_json,
        "axes": json.dumps({k: list(v) for k, v in axes.items()}),
        "phases": json.dumps(phases.PHASES),
        "format": FORMAT,
    }
    ds = xr.Dataset(data, coords, attrs)
    ds["phase"].attrs = {"flag_values": list(range(len(phases.PHASES))), "flag_meanings": " ".join(
        name.replace(" ", "_") for name in phases.PHASES), "description": "-1: not run yet"}
    return ds


def create(path: str, flat: xr.Dataset, lanes_per_chunk: int) -> None:
    """Writes ``flat`` (see :func:`empty`) as a new store, chunked along ``lane``."""
    encoding = {name: {"chunks": (lanes_per_chunk,) + var.shape[1:]} for name, var in flat.data_vars.items()}
    flat.to_zarr(path, mode="w-", encoding=encoding, consolidated=False)


def stored_config(path: str) -> dict[str, Any]:
    """The config a store was created with."""
    return json.loads(_open(path).attrs["config"])


def stored_format(path: str) -> int:
    """The layout version a store was written with."""
    return int(_open(path).attrs.get("format", 0))


def done_lanes(path: str) -> np.ndarray:
    """Boolean mask of the lanes already written."""
    return _open(path)["done"].values


def write(path: str, lanes: np.ndarray, log: dict[str, np.ndarray], final: dict[str, np.ndarray],
          phase: np.ndarray) -> None:
    """Writes the results of ``lanes`` (increasing grid indices) and marks them done:
    one region write per run of consecutive lanes."""
    ds = _lanes(log, final, phase)
    breaks = np.flatnonzero(np.diff(lanes) != 1) + 1
    for first, last in zip([0, *breaks], [*breaks, len(lanes)]):
        region = {"lane": slice(int(lanes[first]), int(lanes[last - 1]) + 1)}
        ds.isel(lane=slice(first, last)).to_zarr(path, region=region, consolidated=False)


def fill(flat: xr.Dataset, lanes: np.ndarray, log: dict[str, np.ndarray], final: dict[str, np.ndarray],
         phase: np.ndarray) -> None:
    """In memory, what :func:`write` does on disk: sets ``lanes`` of ``flat``."""
    for name, var in _lanes(log, final, phase).data_vars.items():
        flat[name].values[lanes] = var.values


def _lanes(log: dict[str, np.ndarray], final: dict[str, np.ndarray], phase: np.ndarray) -> xr.Dataset:
    data = {name: (("lane", "step"), v) for name, v in log.items()}
    data.update({name: (("lane", "neuron"), v) for name, v in final.items()})
    data["phase"] = ("lane", phase.astype(np.int8))
    data["done"] = ("lane", np.ones(len(phase), bool))
    return xr.Dataset(data)


def load_results(path: str | os.PathLike) -> xr.Dataset:
    """Opens a results store as an ``xarray.Dataset`` with one dim per swept axis.

    ``path`` is an output directory or the ``.zarr`` store inside it. Variables:
    the metrics of :data:`grok_jax.metrics.METRICS` over ``step``, ``ipr_k`` (and
    ``bn_scale``) over ``neuron``, ``phase`` (codes into ``attrs["phases"]``; -1
    for lanes not yet run) and ``done``. With a ``seed`` axis, ``phase_majority``
    and ``phase_fraction`` give each cell's most common phase over seeds and the
    fraction of seeds in it. ``attrs["config"]`` is the full config as JSON.
    """
    path = store_path(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no results store at {path}")
    return to_grid(_open(path).load())


def to_grid(flat: xr.Dataset) -> xr.Dataset:
    """Flat results (``lane`` dim) as the N-D dataset that :func:`load_results` returns."""
    axes = {k: tuple(v) for k, v in json.loads(flat.attrs["axes"]).items()}
    shape = tuple(len(v) for v in axes.values())
    data = {
        name: (tuple(axes) + var.dims[1:], var.values.reshape(shape + var.shape[1:]), var.attrs)
        for name, var in flat.data_vars.items()
    }
    coords = {name: (name, list(values)) for name, values in axes.items()}
    coords.update({name: flat[name] for name in ("step", "neuron")})
    ds = xr.Dataset(data, coords, flat.attrs)
    if "seed" in axes:
        top, frac = phases.majority(ds["phase"].values, axis=list(axes).index("seed"))
        dims = tuple(a for a in axes if a != "seed")
        ds["phase_majority"] = (dims, top, ds["phase"].attrs)
        ds["phase_fraction"] = (dims, frac)
    return ds


def _open(path: str) -> xr.Dataset:
    return xr.open_zarr(path, consolidated=False)
