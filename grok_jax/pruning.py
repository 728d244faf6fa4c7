"""Pruning by IPR (Doshi et al., arXiv:2310.13061, Fig. 6): neurons zeroed cumulatively, no retraining.

From a results store's final parameters, each lane's neurons are ranked by their
final IPR and zeroed in that order through the model's neuron mask: lowest IPR
first, highest IPR first, and, as a control, in random orders. Every pruning count
of every lane is evaluated in eval mode over all pairs by one compiled program per
static group (``vmap`` over lanes, ``lax.map`` over the counts):

    >>> import grok_jax
    >>> _ = grok_jax.run_sweep(grok_jax.load_config("tiny"), out="results/tiny", progress=False)
    grid ...
    >>> curves = grok_jax.pruning.prune("results/tiny", random=2)
    >>> curves.order.values.tolist()
    ['low', 'high', 'random 0', 'random 1']
    >>> curves.test_acc.dims                     # a curve per order and lane
    ('order', 'fraction', 'seed', 'wd', 'xi')
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from grok_jax import config as cfg
from grok_jax import metrics, results
from grok_jax.data import held_out_rows, make_dataset, num_pairs, training_rows
from grok_jax.errors import ConfigError
from grok_jax.models import final_specs, get_model, nest_variables
from grok_jax.train import Lane, inputs, stream_key

# The metrics of a pruned network (those of grok_jax.metrics.METRICS that depend on the logits).
PRUNED_METRICS = ("train_loss", "test_loss", "train_acc", "test_acc", "corrupt_acc", "inversion_acc", "clean_acc")
ORDERS = ("low", "high")  # lowest IPR first, highest IPR first
BATCH = 8  # pruning counts evaluated at once per lane (lax.map's batch_size)


def pruning_orders(ipr: jax.Array, key: jax.Array, random: int = 0) -> jax.Array:
    """Neuron indices in pruning order, ``(2 + random, n)``: lowest IPR first,
    highest IPR first, then ``random`` uniform permutations from ``key``. Neurons
    without an IPR (all-zero weights, NaN) count as the lowest: they go first when
    the lowest go first and last otherwise (pruning them changes nothing).

    Example:
      >>> pruning_orders(jnp.array([0.5, 0.1, 0.9]), jax.random.key(0)).tolist()
      [[1, 0, 2], [2, 0, 1]]
    """
    score = jnp.where(jnp.isnan(ipr), -jnp.inf, ipr)
    orders = [jnp.argsort(score, stable=True), jnp.argsort(-score, stable=True)]
    orders += [jax.random.permutation(jax.random.fold_in(key, r), ipr.shape[0]) for r in range(random)]
    return jnp.stack(orders).astype(jnp.int32)


def pruning_masks(order: jax.Array, counts: jax.Array) -> jax.Array:
    """Neuron masks ``(len(counts), n)``: mask ``k`` zeroes the first ``counts[k]``
    neurons of ``order`` and keeps the others."""
    rank = jnp.zeros(order.shape[0], jnp.int32).at[order].set(jnp.arange(order.shape[0], dtype=jnp.int32))
    return (rank[None, :] >= counts[:, None]).astype(jnp.float32)


def make_evaluate(config: Any, n_max: int, batch: int = BATCH) -> Callable[..., dict[str, jax.Array]]:
    """Returns ``evaluate(lane, variables, orders, counts) -> metrics``: the lane's
    network (its data rebuilt from its seed, as in training) in eval mode over every
    pair, with the first ``counts[k]`` neurons of ``orders[o]`` (on the model's first
    neuron group) zeroed; each metric of :data:`PRUNED_METRICS` has shape
    ``(len(orders), len(counts))``. ``batch`` pruned networks are evaluated at once
    (memory: ``batch`` forwards over all pairs), their masks built on the way."""
    model = get_model(config)
    group = next(iter(model.groups))

    def evaluate(lane: Lane, variables: dict, orders: jax.Array, counts: jax.Array) -> dict[str, jax.Array]:
        ds = make_dataset(stream_key(lane.seed, "split"), stream_key(lane.seed, "corrupt"), lane.n_train,
                          lane.n_corrupt, task=config.task, p=config.p, n_max=n_max)
        rows, tests = training_rows(ds, n_max), held_out_rows(ds, n_max, config.task, config.p)
        n_train = jnp.sum(ds.train)

        def one(job: tuple[jax.Array, jax.Array]) -> dict[str, jax.Array]:
            order, count = job
            mask = pruning_masks(order, count[None])[0]
            sums = None
            for part in (rows, tests):
                logits, _ = model.apply(variables, inputs(part), train=False, neuron_mask={group: mask})
                new = metrics.row_sums(logits, part, config.loss)
                sums = new if sums is None else jax.tree.map(jnp.add, sums, new)
            out = metrics.means(sums, n_train, lane.n_corrupt, num_pairs(config.task, config.p) - n_train)
            return {name: out[name] for name in PRUNED_METRICS}

        jobs = (jnp.repeat(orders, len(counts), axis=0), jnp.tile(counts, len(orders)))
        values = jax.lax.map(one, jobs, batch_size=batch)
        return jax.tree.map(lambda v: v.reshape(len(orders), len(counts)), values)

    return evaluate


def prune(store: str | xr.Dataset, fractions: Sequence[float] | None = None, random: int = 0,
          memory_gb: float = 2.0, log: Callable[[str], None] | None = None) -> xr.Dataset:
    """Pruning curves of the finished lanes of a results store: a path, the dataset
    of :func:`grok_jax.load_results`, or a selection of it (``ds.sel(wd=0.0,
    xi=[0.2, 0.35])``: only those cells are evaluated). For each order (``"low"``,
    ``"high"``, ``"random 0"``, ...; see :func:`pruning_orders`; lanes with the same
    seed share their random orders) and each fraction of the first neuron group pruned
    (default: every count from 0 to all, i.e. ``(2 + random)·(N + 1)`` forwards over
    all pairs per lane), the metrics of :data:`PRUNED_METRICS`. Dims: those of the
    selection, ``order``, ``fraction`` (a static group of width n prunes
    ``round(fraction · n)`` neurons); lanes not done are NaN. ``attrs["config"]`` is
    the store's. Lanes are evaluated in chunks of about ``memory_gb`` of activations;
    ``log`` (e.g. ``print``) hears of each chunk as it starts.
    """
    ds = results.load_results(store) if not isinstance(store, xr.Dataset) else store
    if not (isinstance(random, (int, np.integer)) and not isinstance(random, bool) and random >= 0):
        raise ConfigError(f"random={random!r} must be an integer >= 0 (random pruning orders per lane)")
    plan = results.stored_plan(ds, "the dataset")
    models = [get_model(cfg.static_config(g.config)) for g in plan.groups]
    missing = sorted({path for m in models for path in m.param_dims if path not in ds})
    if missing:
        raise ConfigError(f"the dataset has no {missing[0]}: pruning needs the stored parameters "
                          "(load_results(path) with parameters=True)")
    widths = [next(iter(m.groups.values())) for m in models]
    fractions = np.arange(max(widths) + 1) / max(widths) if fractions is None else np.asarray(fractions, np.float64)
    if fractions.ndim != 1 or not len(fractions) or not ((fractions >= 0) & (fractions <= 1)).all():
        raise ConfigError(f"fractions={fractions.tolist()} must be a non-empty list of numbers in [0, 1]")
    dims = [a for a in plan.axes if a in ds.dims]
    needed = ["done", *{f"ipr_{next(iter(m.groups))}" for m in models}, *{p for m in models for p in m.param_dims}]
    cells = (ds[needed].stack(_cell=dims) if dims else ds[needed].expand_dims("_cell")).transpose("_cell", ...)
    lane_of_cell = _lanes_of(cells, plan.axes)
    names = list(ORDERS) + [f"random {r}" for r in range(random)]
    out = {name: np.full((cells.sizes["_cell"], len(names), len(fractions)), np.nan, np.float32)
           for name in PRUNED_METRICS}
    done = cells["done"].values.astype(bool)
    for g, group in enumerate(plan.groups):
        chosen = np.flatnonzero((plan.lane_group[lane_of_cell] == g) & done)
        if len(chosen):
            values = _prune_group(cfg.static_config(group.config), plan, cells, chosen, lane_of_cell[chosen],
                                  fractions, random, memory_gb, log)
            for name in PRUNED_METRICS:
                out[name][chosen] = values[name]
    curves = xr.Dataset({name: (("_cell", "order", "fraction"), v) for name, v in out.items()},
                        {"_cell": cells["_cell"], "order": names, "fraction": fractions},
                        {"config": ds.attrs["config"]})
    return curves.unstack("_cell") if dims else curves.squeeze("_cell", drop=True)


def _lanes_of(cells: xr.Dataset, axes: dict) -> np.ndarray:
    """The plan's lane index of every cell: its position in the grid (C order)."""
    index = []
    for name, values in axes.items():
        cell_values = np.broadcast_to(cells[name].values, (cells.sizes["_cell"],))
        where = {v: i for i, v in enumerate(values)}
        bad = [v for v in cell_values if v not in where]
        if bad:
            raise ConfigError(f"{name}={bad[0]!r} is not a value of the store's grid; valid: {list(values)}")
        index.append([where[v] for v in cell_values])
    if not axes:
        return np.zeros(cells.sizes["_cell"], int)
    return np.ravel_multi_index(index, tuple(len(v) for v in axes.values()))


def _prune_group(static: Any, plan: Any, cells: xr.Dataset, chosen: np.ndarray, lanes: np.ndarray,
                 fractions: np.ndarray, random: int, memory_gb: float,
                 log: Callable[[str], None] | None = None) -> dict[str, np.ndarray]:
    """The curves of the cells ``chosen`` (plan lanes ``lanes``), all of one static
    group: ``(cells, orders, fractions)``, in equal chunks of lanes (the last one
    padded: one program)."""
    model = get_model(static)
    group, width = next(iter(model.groups.items()))
    n_max = int(plan.lanes.n_train[lanes].max())
    counts = jnp.asarray(np.round(fractions * width).astype(np.int32))
    specs = final_specs(model)
    variables = {path: cells[path].values[chosen][(slice(None), *map(slice, specs[path].shape))]
                 for path in model.param_dims}
    iprs = cells[f"ipr_{group}"].values[chosen][:, :width]
    lane = Lane(*(a[lanes] for a in plan.lanes))
    evaluate = make_evaluate(static, n_max)

    def curves(lane: Lane, flat_variables: dict, ipr: jax.Array) -> dict[str, jax.Array]:
        orders = pruning_orders(ipr, stream_key(lane.seed, "prune"), random)
        return evaluate(lane, nest_variables(flat_variables), orders, counts)

    # a lane's forwards at once: BATCH networks × all pairs × (N + p) floats, a few times over
    per_lane = 4 * 4 * BATCH * num_pairs(static.task, static.p) * (width + static.p)
    size = int(max(1, min(len(lanes), memory_gb * 2**30 // per_lane)))
    program = jax.jit(jax.vmap(curves))
    parts = []
    for start in range(0, len(lanes), size):
        if log:
            log(f"pruning lanes {start + 1}-{min(start + size, len(lanes))} of {len(lanes)} (width {width}): "
                f"{(2 + random) * len(fractions)} networks each")
        take = np.minimum(np.arange(start, start + size), len(lanes) - 1)  # pad with the last lane
        args = jax.tree.map(lambda a: jnp.asarray(a[take]), (lane, variables, iprs))
        parts.append(jax.tree.map(lambda v: np.asarray(v)[:len(lanes) - start], program(*args)))
    return {name: np.concatenate([part[name] for part in parts]) for name in PRUNED_METRICS}
