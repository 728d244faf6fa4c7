"""Numbers behind the figures, from a results store: IPR at init, BatchNorm scale
against IPR, prunable neurons, and per-lane summaries.

Everything here reads a dataset of :func:`grok_jax.load_results` (or the curves of
:func:`grok_jax.pruning.prune`) and returns labeled arrays over its dims:

    >>> import grok_jax
    >>> from grok_jax import analysis
    >>> _ = grok_jax.run_sweep(grok_jax.load_config("tiny"), out="results/tiny", progress=False)
    grid ...
    >>> ds = grok_jax.load_results("results/tiny")
    >>> init = analysis.initial_ipr(ds)                 # like ds.ipr_hidden, at step 0
    >>> init.dims == ds.ipr_hidden.dims
    True
"""

from __future__ import annotations

import functools
import json
from typing import Any

import jax
import numpy as np
import xarray as xr

from grok_jax import config as cfg
from grok_jax import phases, results
from grok_jax.models import get_model
from grok_jax.train import stream_key

# What a lane's summary lists: its scalars (NaN where there is none), and the logged
# metrics at its last step.
LANE_SCALARS = ("grok_step", "unlearn_step", "peak_test_acc", "peak_train_acc")
FINAL_METRICS = ("train_acc", "test_acc", "corrupt_acc", "inversion_acc", "clean_acc", "ipr", "weight_norm")


def _plan(ds: xr.Dataset):
    """The plan stored with the results: every lane's seed and static group."""
    return results.stored_plan(ds, "the dataset")


def _lane_dims(ds: xr.Dataset) -> list[str]:
    """The swept axes of the store still in ``ds`` (a selection may drop some), in
    grid order (C order of the plan's lanes)."""
    return [a for a in json.loads(ds.attrs["axes"]) if a in ds.dims]


def initial_ipr(ds: xr.Dataset, group: str | None = None) -> xr.DataArray:
    """Per-neuron IPR of every lane's network at initialization, shaped like the
    stored final ``ipr_<group>`` (default: the model's first group). The initial
    parameters are not stored: they are rebuilt from each lane's seed with the
    model's ``init`` and the run's ``init`` key stream, as training drew them."""
    plan = _plan(ds)
    statics = [cfg.static_config(g.config) for g in plan.groups]
    group = group or next(iter(get_model(statics[0]).groups))
    final = ds[f"ipr_{group}"]
    dims = _lane_dims(ds)
    out = np.full((plan.n_lanes, final.shape[-1]), np.nan, np.float32)
    for g, static in enumerate(statics):
        lanes = np.flatnonzero(plan.lane_group == g)
        seeds, where = np.unique(plan.lanes.seed[lanes], return_inverse=True)
        values = np.asarray(_initial_ipr_program(static, group)(seeds.astype(np.int32)))
        out[lanes, :values.shape[1]] = values[where]
    shape = tuple(ds.sizes[d] for d in dims) + final.shape[-1:]
    return xr.DataArray(out.reshape(shape), {d: ds[d] for d in dims}, dims + [final.dims[-1]],
                        name=f"initial ipr_{group}")


@functools.lru_cache(maxsize=16)
def _initial_ipr_program(static, group: str):
    """The compiled seeds -> initial per-neuron IPR of one static model config (a
    figure and its report ask for the same one: compiled once)."""
    model = get_model(static)
    return jax.jit(jax.vmap(lambda s: model.neuron_ipr(model.init(stream_key(s, "init"))["params"])[group]))


def bn_scale_correlation(ds: xr.Dataset) -> xr.DataArray:
    """Pearson correlation of ``|params.bn_scale|`` with the final per-neuron IPR,
    per lane, over the neurons that have an IPR (Doshi et al., arXiv:2310.13061, Fig. 5)."""
    scale, ipr = np.abs(ds["params.bn_scale"]), ds["ipr_hidden"]
    dim = ipr.dims[-1]
    ok = np.isfinite(ipr) & np.isfinite(scale)
    s, i = scale.where(ok), ipr.where(ok)
    ds_, di = s - s.mean(dim), i - i.mean(dim)
    r = (ds_ * di).sum(dim) / np.sqrt((ds_ ** 2).sum(dim) * (di ** 2).sum(dim))
    return r.rename("correlation |BN scale| vs IPR")


def prunable(curves: xr.Dataset, widths: xr.DataArray | int, threshold: float = 0.9,
             order: str = "low") -> xr.DataArray:
    """Neurons that can be zeroed in ``order`` before the test accuracy first falls
    below ``threshold``: the largest pruned count (``round(fraction · width)``) of
    the curve's leading run of fractions at or above it. NaN for a network whose
    unpruned test accuracy is already below (it cannot drop)."""
    acc = curves["test_acc"].sel(order=order).transpose(..., "fraction")
    ok = (acc >= threshold).values
    frac = curves["fraction"].values
    run = np.logical_and.accumulate(ok, axis=-1)  # the leading run of fractions that keep it
    last = np.where(run.any(-1), run.shape[-1] - 1 - np.argmax(run[..., ::-1], axis=-1), -1)
    width = np.broadcast_to(np.asarray(widths if np.isscalar(widths) else widths.broadcast_like(acc.isel(fraction=0))),
                            last.shape)
    counts = np.where(last >= 0, np.round(frac[np.maximum(last, 0)] * width), np.nan)
    dims = acc.dims[:-1]
    return xr.DataArray(counts, {d: acc[d] for d in dims}, dims, name="prunable neurons")


def lane_summary(ds: xr.Dataset) -> list[dict]:
    """One record per finished lane: its swept values, phase, grokking and
    unlearning steps, peak test and training accuracies (what tells Forgetting from
    Confusion) and final accuracies (what the figures' JSON summaries list)."""
    dims = _lane_dims(ds)
    final = ds.isel(step=-1)
    records = []
    for index in np.ndindex(*(ds.sizes[d] for d in dims)):
        sel = dict(zip(dims, index))
        if not bool(ds["done"].isel(sel)):
            continue
        record = {d: plain(ds[d].values[i]) for d, i in sel.items()}
        code = int(ds["phase"].isel(sel))
        record["phase"] = phases.PHASES[code] if code >= 0 else None
        for key in LANE_SCALARS:
            if key in ds:
                record[key] = plain(ds[key].isel(sel).values)
        for key in FINAL_METRICS:
            record[f"final_{key}"] = plain(final[key].isel(sel).values)
        records.append(record)
    return records


def plain(value: Any) -> float | int | str | None:
    """A JSON value: NaN becomes ``None``, numpy scalars Python ones, floats
    rounded to 4 digits.

    Example:
      >>> plain(np.float32(0.123456)), plain(np.nan), plain(np.int64(3))
      (0.1235, None, 3)
    """
    value = np.asarray(value).item()
    if isinstance(value, float):
        return None if not np.isfinite(value) else round(value, 4)
    return value
