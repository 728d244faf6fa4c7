"""The grid plan: lanes, compile groups and chunks (NumPy only).

The grid is the Cartesian product of the axes in ``config.sweep`` (C order, the
first axis slowest). Lanes with the same values of the static axes (model, task,
p, width, activation, loss, batch size) form a static group with a config of its
own. Within one, every lane carries all traced settings, so lanes share one
program per shape. The only shape a traced axis changes is the training-set size
(α): a static group's lanes are grouped by it into at most
``config.compile_groups`` compile groups, each padded to its largest α. Chunks are
sized by a memory budget, padded to a common size within their compile group, and
sharded across the devices along the lane axis.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Mapping, NamedTuple

import ml_collections
import numpy as np

from grok_jax import config as cfg
from grok_jax.data import num_pairs, split_sizes
from grok_jax.errors import ConfigError
from grok_jax.layouts import default_lanes_per_device
from grok_jax.models import get_model
from grok_jax.train import Lane

# Compile groups are added (up to config.compile_groups) until padding costs at most
# this fraction of the grid's real training rows.
PADDING_TOLERANCE = 0.1


class Group(NamedTuple):
    """Lanes that share the values of the static axes."""

    values: dict[str, Any]  # swept static axis -> its value here (empty: none is swept)
    config: ml_collections.ConfigDict  # the grid's config with these values fixed


class Chunk(NamedTuple):
    """Lanes trained together by one call of one compiled program."""

    group: int  # index of its static group in Plan.groups
    n_max: int  # padded training-set size of its compile group
    lanes: np.ndarray  # grid indices of its lanes; padding repeats the group's last lane
    count: int  # real lanes: the first ``count`` of ``lanes``


class Plan(NamedTuple):
    """What a sweep will run."""

    axes: dict[str, tuple]  # swept axis -> values, in grid order
    lanes: Lane  # numpy arrays, one entry per lane (C order of the grid)
    xi: np.ndarray  # nominal ξ of every lane (for the phase table)
    chunks: tuple[Chunk, ...]  # by static group, then compile group, smallest n_max first
    n_devices: int  # devices a chunk is sharded over
    groups: tuple[Group, ...]  # static groups, in grid order
    lane_group: np.ndarray  # the static group of every lane

    @property
    def n_lanes(self) -> int:
        return len(self.xi)

    @property
    def compile_groups(self) -> tuple[tuple[int, int], ...]:
        """``(static group, padded training-set size)`` of every compile group."""
        return tuple(sorted({(c.group, c.n_max) for c in self.chunks}))

    def config(self, chunk: Chunk) -> ml_collections.ConfigDict:
        """The config of the chunk's static group."""
        return self.groups[chunk.group].config

    def n_min(self, chunk: Chunk) -> int:
        """The smallest training set of the chunk's compile group."""
        same = [c.lanes for c in self.chunks if (c.group, c.n_max) == (chunk.group, chunk.n_max)]
        return int(self.lanes.n_train[np.concatenate(same)].min())


def make_plan(
    config: ml_collections.ConfigDict,
    memory_gb: float,
    n_devices: int = 1,
    per_device: int | None = None,
    platform: str | None = None,
    groups: Mapping[int, int] | None = None,
) -> Plan:
    """Expands the grid into per-lane values, groups lanes by training-set size
    (:func:`compile_groups`) and sizes each group's chunks: per device as many
    lanes as fit in ``memory_gb`` (a budget per device), at most ``per_device``
    (default: that of :func:`~grok_jax.layouts.default_lanes_per_device` when
    ``platform`` is given); chunks are a multiple of the device count and as equal
    as possible.

    ``groups`` (a resumed store's layout) fixes the compile groups instead,
    ``(static group, padded training-set size)`` -> lanes per device: each lane joins
    the smallest compile group of its static group that holds its training set, and
    every chunk has exactly that many lanes per device.
    """
    cfg.check_config(config)
    check_resources(memory_gb, per_device)
    axes = {name: tuple(config.sweep[name]) for name in config.sweep}
    statics = cfg.static_groups(config)
    static_names = [name for name in axes if name in cfg.STATIC_AXES]
    keys = [tuple(values.values()) for values, _ in statics]
    rows, member = [], []
    for combo in itertools.product(*axes.values()):
        values = {name: cfg.axis_values(config, name)[0] for name in cfg.TRACED_AXES} | dict(zip(axes, combo))
        g = keys.index(tuple(values[name] for name in static_names))
        group_config = statics[g][1]
        n_train, n_corrupt = split_sizes(values["alpha"], values["xi"], group_config.task, group_config.p)
        rows.append((values["seed"], n_train, n_corrupt, values["wd"], values["lr"],
                     values["dropout"], values["xi"]))
        member.append(g)
    cols = list(zip(*rows))
    lanes = Lane(*(np.asarray(c, np.int32) for c in cols[:3]), *(np.asarray(c, np.float32) for c in cols[3:6]))
    member = np.asarray(member)
    n_devices = min(n_devices, len(rows))
    budget = memory_gb * 2**30
    chunks = []
    for g, (_, group_config) in enumerate(statics):
        in_group = np.flatnonzero(member == g)
        largest = lane_bytes(group_config, int(lanes.n_train[in_group].max()))
        if largest > budget:
            raise ConfigError(f"one lane at p={group_config.p}, width={group_config.width} needs about "
                              f"{largest / 2**30:.3g} GiB, more than --memory_gb={memory_gb:g} per device; lower "
                              "p or width, or raise --memory_gb")
        stored = None if groups is None else {n: k for (gg, n), k in groups.items() if gg == g}
        chunks += _group_chunks(group_config, g, in_group, lanes.n_train, n_devices, budget, per_device,
                                platform, stored)
    return Plan(axes, lanes, np.asarray(cols[6], np.float64), tuple(chunks), n_devices,
                tuple(Group(values, c) for values, c in statics), member)


def _group_chunks(config: ml_collections.ConfigDict, g: int, in_group: np.ndarray, n_train: np.ndarray,
                  n_devices: int, budget: float, per_device: int | None, platform: str | None,
                  stored: Mapping[int, int] | None) -> list[Chunk]:
    """The chunks of static group ``g`` (lanes ``in_group``): by compile group, or in
    a resumed store's compile groups (``stored``: padded size -> lanes per device)."""
    chunks = []
    if stored is not None:
        sizes = np.asarray(sorted(stored))
        if not len(sizes) or n_train[in_group].max() > sizes[-1]:
            raise ConfigError("the store's compile groups do not hold this grid")
        member = np.searchsorted(sizes, n_train[in_group])
        for i, n_max in enumerate(map(int, sizes)):
            group, per_group = in_group[member == i], stored[n_max]
            if not len(group):
                continue
            if per_group * lane_bytes(config, n_max) > budget:
                raise ConfigError(f"the store's layout runs {per_group} lanes per device at n_train {n_max}: about "
                                  f"{per_group * lane_bytes(config, n_max) / 2**30:.3g} GiB, more than "
                                  f"--memory_gb={budget / 2**30:g}")
            chunks += _split(group, g, n_max, n_devices, per_group, balance=False)
        return chunks
    for group in compile_groups(n_train[in_group], config.compile_groups, n_devices):
        group = in_group[group]
        n_max = int(n_train[group].max())
        limit = per_device
        if limit is None and platform is not None:
            limit = default_lanes_per_device(platform, n_max, config.width)
        fit = min(limit or len(group), budget // lane_bytes(config, n_max))  # before int(): budget may be inf
        chunks += _split(group, g, n_max, n_devices, int(fit))
    return chunks


def check_resources(memory_gb: float, lanes_per_device: int | None) -> None:
    """Raises ``ConfigError`` for a memory budget or lane count no chunk can have."""
    if not (isinstance(memory_gb, (int, float)) and math.isfinite(memory_gb) and memory_gb > 0):
        raise ConfigError(f"--memory_gb={memory_gb} must be a finite number of GiB > 0")
    if lanes_per_device is not None and not (isinstance(lanes_per_device, int) and lanes_per_device >= 1):
        raise ConfigError(f"--lanes_per_device={lanes_per_device} must be an integer >= 1 (0 on the command "
                          "line: the platform's default)")


def _split(group: np.ndarray, g: int, n_max: int, n_devices: int, per_device: int, balance: bool = True
           ) -> list[Chunk]:
    """Chunks of a group of ``per_device`` lanes per device, or with ``balance``
    at most that many and as equal as the device count allows (fewer padded lanes)."""
    n = len(group)
    size = per_device * n_devices
    if balance:
        n_chunks = -(-n // size)
        size = n_devices * -(-n // (n_chunks * n_devices))
    starts = range(0, n, size)
    return [Chunk(g, n_max, group[np.minimum(np.arange(s, s + size), n - 1)], min(size, n - s)) for s in starts]


def compile_groups(n_train: np.ndarray, max_groups: int, n_devices: int = 1) -> list[np.ndarray]:
    """Lane indices grouped by training-set size; each group is one compiled program
    whose training arrays are padded to the group's largest size.

    Groups are ranges of consecutive sizes that minimize the padded work for their
    number: rows padded to the group's largest size, and lanes to a multiple of
    ``n_devices`` (a group's chunks fill every device, padding lanes train too).
    There are as few groups as keep that work within :data:`PADDING_TOLERANCE` of the
    real rows, and at most ``max_groups``.

    Example:
      >>> [g.tolist() for g in compile_groups(np.array([10, 50, 10, 90, 50]), 2)]
      [[0, 2], [1, 3, 4]]
    """
    sizes, counts = np.unique(n_train, return_counts=True)
    cost = lambda i, j: sizes[j - 1] * n_devices * -(-counts[i:j].sum() // n_devices)  # noqa: E731
    allowed = float(np.dot(sizes, counts)) * (1 + PADDING_TOLERANCE)
    options = []  # (work, number of groups, ends)
    for n_groups in range(1, min(max_groups, len(sizes)) + 1):
        ends = _best_ends(cost, len(sizes), n_groups)
        options.append((sum(cost(i, j) for i, j in zip([0, *ends[:-1]], ends)), n_groups, ends))
        if options[-1][0] <= allowed:
            break
    _, _, ends = min(options)  # else the least work (more groups can mean more padded lanes)
    starts = [0, *ends[:-1]]
    return [np.flatnonzero((n_train >= sizes[i]) & (n_train <= sizes[j - 1])) for i, j in zip(starts, ends)]


def _best_ends(cost: Callable[[int, int], float], k: int, n_groups: int) -> list[int]:
    """Ends (exclusive) of the split of ``range(k)`` into ``n_groups`` ranges with the
    least total ``cost(start, end)`` (dynamic programming)."""
    # best[i]: least cost of range(i) in the groups so far; back[g][i]: start of the last group.
    best = np.asarray([0.0, *(cost(0, i) for i in range(1, k + 1))])
    back = []
    for _ in range(1, n_groups):
        new, start = np.full(k + 1, np.inf), np.zeros(k + 1, int)
        for i in range(1, k + 1):
            for j in range(1, i):  # last group range(j, i), at least one size before it
                c = best[j] + cost(j, i)
                if c < new[i]:
                    new[i], start[i] = c, j
        best = new
        back.append(start)
    ends, i = [k], k
    for start in reversed(back):
        i = int(start[i])
        ends.insert(0, i)
    return ends


def lane_bytes(config: Any, n_max: int) -> int:
    """Rough device memory of one lane: activations of the step (training rows or a
    mini-batch) and of the evaluation (at most all p² pairs), parameters with their
    AdamW state, and the log (16 floats per logged step); the model's own estimates
    (:attr:`grok_jax.models.Model.row_floats` and friends)."""
    model = get_model(config)
    rows = min(config.batch_size, n_max) if config.batch_size else n_max
    acts = rows * model.row_floats + n_max + config.p * config.p * model.eval_floats
    return int(4 * (acts + 6 * model.n_params + 16 * (config.steps // config.log_every + 1)))


def flops_per_lane(config: Any, n_max: int) -> float:
    """Matmul FLOPs of one lane: three forwards' worth per training row (or
    mini-batch row) and step, and per log a forward over the pairs past the training
    rows (whose logits come from a full-batch step; with dropout or BatchNorm the
    evaluation also runs over the training rows, not counted; with mini-batches over
    all pairs), from the model's :attr:`~grok_jax.models.Model.row_flops`. (An
    estimate for progress and plans.)"""
    n_logs = config.steps // config.log_every + 1
    rows, evaluated = n_max, num_pairs(config.task, config.p) - n_max
    if config.batch_size:
        rows, evaluated = config.batch_size, num_pairs(config.task, config.p)
    return get_model(config).row_flops * (3 * rows * config.steps + evaluated * n_logs)


def process_chunks(plan: Plan, per_device: Mapping[tuple[int, int], int], store_chunk: int, index: int,
                   count: int) -> tuple[Chunk, ...]:
    """The chunks process ``index`` of ``count`` trains: the lanes of every
    ``store_chunk``-th block of lanes (a chunk of the results store, written by one
    process only) from block ``index`` on, in the plan's compile groups, with
    ``per_device[(group, n_max)]`` lanes per device.

    Example:
      >>> [c.lanes.tolist() for c in process_chunks(plan, {(0, 72): 1}, 2, 1, 2)]  # 8 lanes, 2 devices
      [[2, 3], [6, 7]]
    """
    owner = (np.arange(plan.n_lanes) // store_chunk) % count
    chunks = []
    for g, n_max in plan.compile_groups:
        lanes = np.concatenate([c.lanes[:c.count] for c in plan.chunks if (c.group, c.n_max) == (g, n_max)])
        mine = np.sort(lanes[owner[lanes] == index])
        if len(mine):
            chunks += _split(mine, g, n_max, plan.n_devices, per_device[g, n_max], balance=False)
    return tuple(chunks)
