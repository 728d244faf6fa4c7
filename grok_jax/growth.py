"""What a command asks of an existing store: resume it, grow it, or refuse.

A store holds its config and its plan. The same grid again resumes it in the
stored plan. A grid that only adds runs grows it: more values on a swept axis
(traced or static), or a new axis whose values include the store's fixed value.
The stored lanes keep their results bit for bit and move to their place in the
grown grid; the new lanes get the chunks and layouts a fresh plan of the grown
grid gives them (:func:`grok_jax.plan.grow_plan`). More steps (the same
``log_every``) continue every stored lane from its stored state. Anything else
that would change a stored lane (p of an unswept run, lr, the loss, fewer values,
fewer steps) is refused with the field named.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import ml_collections
import numpy as np
import xarray as xr

from grok_jax import config as cfg
from grok_jax import results
from grok_jax.errors import ConfigError

# Fields that do not change stored lanes: the stored plan's compile groups stay (new
# lanes of a grown store take the new value), and plot only draws. A store may be
# resumed with other values; those of RECORDED replace the stored ones.
RESUMABLE = ("plot", "compile_groups")
RECORDED = ("plot",)


class Change(NamedTuple):
    """How a command's grid relates to a stored one."""

    grows: bool  # it adds lanes or steps
    old_index: np.ndarray  # the command's grid index of every stored lane
    first_block: int  # > 0: the stored lanes continue from this logged block (more steps)


def compare(stored: dict, axes: dict[str, tuple], config: ml_collections.ConfigDict, path: str) -> Change:
    """How ``config`` relates to the ``stored`` config (a dict, from the store's
    JSON, with fields added to grok_jax since filled in) and its grid's ``axes`` (in
    grid order, the stored plan's): the same grid, or a grown one; a
    ``ConfigError`` naming the first field that would change stored lanes.

    Example:
      >>> from grok_jax.plan import make_plan
      >>> config = cfg.load_config("tiny")
      >>> stored, axes = json.loads(config.to_json()), make_plan(config).axes
      >>> config.sweep.seed = (0, 1, 2)                    # one more seed
      >>> compare(stored, axes, config, "results/tiny").grows
      True
      >>> config.lr = 0.02                                  # would change the stored lanes
      >>> compare(stored, axes, config, "results/tiny")
      Traceback (most recent call last):
      grok_jax.errors.ConfigError: results/tiny holds results of another config (lr=0.01 there, 0.02 now); ...
    """
    new = json.loads(config.to_json())
    old_sweep = {name: list(values) for name, values in axes.items()}
    new_sweep = {name: list(config.sweep[name]) for name in config.sweep}  # in grid order
    fixed = {name: cfg.axis_values(ml_collections.ConfigDict(stored), name)[0] for name in new_sweep
             if name not in old_sweep}  # a new axis: the store's value of it
    longer = new["steps"] > stored["steps"] and new["log_every"] == stored["log_every"]
    for name in sorted(set(stored) | set(new)):
        if name in ("sweep", *RESUMABLE) or name in new_sweep or (name == "steps" and longer):
            continue
        old_value, new_value = stored.get(name), new.get(name)
        if isinstance(old_value, dict) and isinstance(new_value, dict):  # a model's section: its swept options aside
            old_value, new_value = ({k: v for k, v in d.items() if k not in new_sweep} for d in (old_value, new_value))
        if old_value != new_value:
            _refuse(path, name, old_value, new_value)
    for name, values in old_sweep.items():
        if name not in new_sweep:
            _refuse(path, f"sweep.{name}", values, new.get(name), "an axis of the store is gone")
        missing = [v for v in values if v not in new_sweep[name]]
        if missing:
            _refuse(path, f"sweep.{name}", values, new_sweep[name], f"the store's values {missing} are gone")
    for name, value in fixed.items():
        if value not in new_sweep[name]:
            _refuse(path, f"sweep.{name}", value, new_sweep[name], f"a new axis must include the store's {name}={value!r}")
    old_index = _old_index(old_sweep, new_sweep, fixed)
    first_block = stored["steps"] // stored["log_every"] if longer else 0
    return Change(first_block > 0 or len(old_index) < int(np.prod([len(v) for v in new_sweep.values()])),
                  old_index, first_block)


def _refuse(path: str, name: str, old: Any, new: Any, why: str = "") -> None:
    what = f" ({why})" if why else ""
    raise ConfigError(f"{path} holds results of another config ({name}={old!r} there, {new!r} now{what}); "
                      "a store only grows (more values on an axis, a new axis with the store's value): write "
                      "to another directory, replace it with --overwrite, or resume it with the same config")


def _old_index(old_sweep: dict, new_sweep: dict, fixed: dict) -> np.ndarray:
    """The grown grid's index of every stored lane (C order of each grid); ``fixed``:
    the store's value of each axis new to the grid."""
    old_shape = [len(v) for v in old_sweep.values()]
    coords = np.unravel_index(np.arange(int(np.prod(old_shape))), old_shape) if old_shape else ()
    old_pos = dict(zip(old_sweep, coords))
    positions = []
    for name, values in new_sweep.items():
        if name in old_sweep:
            where = np.asarray([values.index(v) for v in old_sweep[name]])
            positions.append(where[old_pos[name]])
        else:
            positions.append(np.full(int(np.prod(old_shape)), values.index(fixed[name])))
    if not positions:
        return np.zeros(1, np.int64)
    return np.ravel_multi_index(positions, [len(v) for v in new_sweep.values()]).astype(np.int64)


def grown_results(old: xr.Dataset, new: xr.Dataset, old_index: np.ndarray) -> xr.Dataset:
    """``new`` (the grown grid's empty flat results) with every variable of the
    stored flat results ``old`` at its lanes' new places (the leading part of each
    other dim: a static axis may add a larger width or p), and the stored runs."""
    for name, var in old.data_vars.items():
        if name.startswith(results.START):  # a continuation's start, finished
            continue
        region = (old_index, *(slice(0, n) for n in var.shape[1:]))
        new[name].values[region] = var.values
    new.attrs["runs"] = old.attrs.get("runs", "[]")
    return new
