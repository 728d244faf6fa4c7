"""The sweep's schedule: every lane, its groups, chunks and layouts, made once.

The grid is the Cartesian product of the axes in ``config.sweep`` (C order, the
first axis slowest). Lanes with the same values of the static axes (model, task,
p, width, activation, loss, batch size) form a static group with a config of its
own. Within one, every lane carries all traced settings, so lanes share one
program per shape. The only shape a traced axis changes is the training-set size
(α): a static group's lanes are grouped by it into at most
``config.compile_groups`` compile groups, each padded to its largest α. Chunks are
sized by a memory budget, padded to a common size within their compile group, and
sharded across the devices along the lane axis; each carries its layout.

:func:`make_plan` computes a :class:`Plan` from a checked config and the
:class:`Resources` of the first run. The plan is stored with the results
(:meth:`Plan.to_json`) and read back (:func:`from_json`) when the sweep resumes or
grows (:func:`grow_plan`); nothing recomputes it from a later command line. How
the lanes are shared among processes and devices is a function of the stored plan
(:meth:`Plan.share`, :func:`device_calls`).
"""

from __future__ import annotations

import itertools
import json
import math
from typing import Any, Callable, Iterable, NamedTuple

import ml_collections
import numpy as np

from grok_jax import config as cfg
from grok_jax import layouts
from grok_jax.data import num_pairs, split_sizes
from grok_jax.errors import ConfigError
from grok_jax.layouts import Layout
from grok_jax.models import get_model
from grok_jax.train import Lane

# Compile groups are added (up to config.compile_groups) until padding costs at most
# this fraction of the grid's real training rows.
PADDING_TOLERANCE = 0.1


class Resources(NamedTuple):
    """Where a new plan is made to run: not part of the config, so that a stored
    plan resumes with other values (checked against its layout)."""

    memory_gb: float = 4.0  # budget per device for a chunk of lanes, GiB
    lanes_per_device: int | None = None  # at most; None: the rules' default
    n_devices: int = 1  # devices a chunk is sharded over
    platform: str = "cpu"  # sizes segments (layouts.NOMINAL_RATE)
    rules: str = "cpu"  # layout rules (layouts.layout_rules)
    checkpoint_blocks: int = 0  # logged blocks between checkpoints (0: by time)
    keep_state: bool = True  # store each lane's final optimizer state (a longer run continues from it)


class Group(NamedTuple):
    """Lanes that share the values of the static axes."""

    values: dict[str, Any]  # swept static axis -> its value here (empty: none is swept)
    config: ml_collections.ConfigDict  # the grid's config with these values fixed


class Chunk(NamedTuple):
    """Lanes trained together by one call of one compiled program."""

    group: int  # index of its static group in Plan.groups
    n_max: int  # padded training-set size of its compile group
    n_min: int  # smallest training set of its compile group (mini-batches: epochs per block)
    layout: Layout  # how its program lays out the work on a device
    lanes: np.ndarray  # grid indices of its lanes; padding repeats the last real lane
    count: int  # real lanes: the first ``count`` of ``lanes``
    first_block: int = 0  # > 0: its lanes continue from their stored state after this many logged blocks

    @property
    def real(self) -> np.ndarray:
        return self.lanes[: self.count]


class Plan(NamedTuple):
    """What a sweep runs: made once, stored with the results, read back."""

    axes: dict[str, tuple]  # swept axis -> values, in grid order
    lanes: Lane  # numpy arrays, one entry per lane (C order of the grid)
    xi: np.ndarray  # nominal ξ of every lane (for the phase table)
    groups: tuple[Group, ...]  # static groups, in grid order
    lane_group: np.ndarray  # the static group of every lane
    chunks: tuple[Chunk, ...]  # by static group, then compile group, smallest n_max first
    n_devices: int  # devices of the run that made it (new chunks are sized for them; see device_calls)
    platform: str
    rules: str
    store_chunk: int  # lanes per chunk of the store's files (one writer each)
    keep_state: bool = True  # the store holds each lane's final optimizer state

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

    def share(self, index: int, count: int, pending: np.ndarray, recut: bool = False) -> tuple[Chunk, ...]:
        """The chunks process ``index`` of ``count`` trains: the ``pending`` lanes of
        every ``store_chunk``-th block of lanes (a chunk of the store's files, written
        by one process only) from block ``index`` on, in chunks of their layout's
        lanes per device on :attr:`n_devices` devices. One process: the plan's
        chunks with pending lanes, whole (the done lanes of one cut short train
        again, not rewritten: with several lanes per device a lane's last bits
        depend on its neighbours, so each keeps the plan's); with ``recut`` (a
        refined grid, whose lanes run round by round, not in the plan's chunks)
        only the chunks whose lanes are all pending, and the pending lanes of the
        others re-cut into chunks of the same shapes, so that no lane trains twice.

        Example:
          >>> plan = make_plan(cfg.load_config("tiny"), Resources(n_devices=2, lanes_per_device=1))
          >>> plan.n_lanes, plan.store_chunk                   # 8 lanes in blocks of 2
          (8, 2)
          >>> [c.real.tolist() for c in plan.share(1, 2, np.ones(8, bool))]  # process 1 of 2
          [[2, 3], [6, 7]]
        """
        owner = (np.arange(self.n_lanes) // self.store_chunk) % count
        kept, regrouped = [], []
        for c in self.chunks:
            if not pending[c.real].any():
                continue
            if count == 1 and (pending[c.real].all() or not recut):
                kept.append(c)
            else:
                regrouped.append((c, c.real))
        chunks = []
        for kind, lanes in _by_kind(regrouped):
            mine = np.sort(lanes[(owner[lanes] == index) & pending[lanes]])
            chunks += _split(mine, kind, kind[3].lanes_per_device * self.n_devices)
        return tuple(kept + chunks)

    def to_json(self) -> str:
        """The plan as the store records it (see :func:`from_json`)."""
        return json.dumps({
            "axes": {k: list(v) for k, v in self.axes.items()},
            "lanes": {k: np.asarray(v).tolist() for k, v in self.lanes._asdict().items()},
            "xi": self.xi.tolist(),
            "groups": [{"values": g.values, "config": json.loads(g.config.to_json())} for g in self.groups],
            "lane_group": self.lane_group.tolist(),
            "chunks": [{"group": c.group, "n_max": c.n_max, "n_min": c.n_min, "layout": c.layout._asdict(),
                        "lanes": c.lanes.tolist(), "count": c.count, "first_block": c.first_block}
                       for c in self.chunks],
            "n_devices": self.n_devices, "platform": self.platform, "rules": self.rules,
            "store_chunk": self.store_chunk, "keep_state": self.keep_state,
        }, sort_keys=True)


def from_json(text: str) -> Plan:
    """The :class:`Plan` that :meth:`Plan.to_json` wrote; ``ValueError`` (or
    ``KeyError``, ``TypeError``) when it is not one."""
    d = json.loads(text)
    dtypes = {"seed": np.int32, "n_train": np.int32, "n_corrupt": np.int32}
    lanes = Lane(**{k: np.asarray(d["lanes"][k], dtypes.get(k, np.float32)) for k in Lane._fields})
    chunks = tuple(Chunk(int(c["group"]), int(c["n_max"]), int(c["n_min"]), Layout(**c["layout"]),
                         np.asarray(c["lanes"], np.int64), int(c["count"]), int(c["first_block"]))
                   for c in d["chunks"])
    groups = tuple(Group(g["values"], ml_collections.ConfigDict(g["config"])) for g in d["groups"])
    plan = Plan({k: tuple(v) for k, v in d["axes"].items()}, lanes, np.asarray(d["xi"], np.float64), groups,
                np.asarray(d["lane_group"], np.int64), chunks, int(d["n_devices"]), d["platform"], d["rules"],
                int(d["store_chunk"]), bool(d["keep_state"]))
    if not (len(plan.lane_group) == plan.n_lanes == int(np.prod([len(v) for v in plan.axes.values()]))
            and all(len(a) == plan.n_lanes for a in lanes)):
        raise ValueError("the plan's lanes do not match its axes")
    return plan


def make_plan(config: ml_collections.ConfigDict, resources: Resources = Resources()) -> Plan:
    """The plan of a checked ``config`` (:func:`grok_jax.config.check_config`,
    :func:`check_fits`) on ``resources``: the grid's lanes, grouped by training-set size
    (:func:`compile_groups`), each group's chunks sized per device to as many lanes
    as fit in ``memory_gb`` (at most ``lanes_per_device``, default that of
    :func:`~grok_jax.layouts.default_lanes_per_device`), a multiple of the device
    count and as equal as possible; every chunk with its layout.

    Example:
      >>> plan = make_plan(cfg.load_config("wd_xi"), Resources(n_devices=2))
      >>> plan.n_lanes, len(plan.chunks)
      (90, 45)
    """
    axes, lanes, xi, groups, member = _lanes(config)
    n_devices = min(resources.n_devices, len(xi))
    chunks = []
    for g, group in enumerate(groups):
        in_group = np.flatnonzero(member == g)
        for members in compile_groups(lanes.n_train[in_group], group.config.compile_groups, n_devices):
            chunks += _group_chunks(group.config, g, in_group[members], lanes.n_train, resources, n_devices)
    return Plan(axes, lanes, xi, groups, member, tuple(chunks), n_devices, resources.platform, resources.rules,
                len(chunks[0].lanes), resources.keep_state)


def _lanes(config: ml_collections.ConfigDict) -> tuple[dict, Lane, np.ndarray, tuple[Group, ...], np.ndarray]:
    """The grid's axes, per-lane values, nominal ξ, static groups and each lane's group."""
    axes = {name: tuple(config.sweep[name]) for name in config.sweep}
    groups = tuple(Group(values, c) for values, c in cfg.static_groups(config))
    static_names = [name for name in axes if name in cfg.STATIC_AXES]
    keys = [tuple(g.values.values()) for g in groups]
    rows, member = [], []
    for combo in itertools.product(*axes.values()):
        values = {name: cfg.axis_values(config, name)[0] for name in cfg.TRACED_AXES} | dict(zip(axes, combo))
        g = keys.index(tuple(values[name] for name in static_names))
        n_train, n_corrupt = split_sizes(values["alpha"], values["xi"], groups[g].config.task, groups[g].config.p)
        rows.append((values["seed"], n_train, n_corrupt, values["wd"], values["lr"], values["dropout"], values["xi"]))
        member.append(g)
    cols = list(zip(*rows))
    lanes = Lane(*(np.asarray(c, np.int32) for c in cols[:3]), *(np.asarray(c, np.float32) for c in cols[3:6]))
    return axes, lanes, np.asarray(cols[6], np.float64), groups, np.asarray(member)


def _group_chunks(config: ml_collections.ConfigDict, g: int, members: np.ndarray, n_train: np.ndarray,
                  resources: Resources, n_devices: int) -> list[Chunk]:
    """The chunks of one compile group (lanes ``members`` of static group ``g``)."""
    n_max, n_min = int(n_train[members].max()), int(n_train[members].min())
    limit = resources.lanes_per_device or layouts.default_lanes_per_device(resources.rules, n_max, config.width)
    fit = min(limit or len(members), resources.memory_gb * 2**30 // lane_bytes(config, n_max))  # budget may be inf
    n = len(members)
    size = int(fit) * n_devices
    size = n_devices * -(-n // (-(-n // size) * n_devices))  # as equal as the device count allows
    per_device = size // n_devices
    segment = layouts.segment_blocks(resources.platform, flops_per_lane(config, n_max) * per_device,
                                     config.steps // config.log_every, resources.checkpoint_blocks)
    layout = layouts.layout(resources.rules, n_max, config.width, config.p, per_device, config.batchnorm,
                            config.batch_size, segment)
    return _split(members, (g, n_max, n_min, layout), size)


def _split(lanes: np.ndarray, kind: tuple, size: int) -> list[Chunk]:
    """Chunks of ``size`` lanes of one ``(group, n_max, n_min, layout[, first_block])``,
    the last padded with copies of its last lane (same shape: no recompile)."""
    n = len(lanes)
    return [Chunk(*kind[:4], lanes[np.minimum(np.arange(s, s + size), n - 1)], min(size, n - s), *kind[4:])
            for s in range(0, n, size)]


def device_calls(chunk: Chunk, n_devices: int) -> list[Chunk]:
    """A stored chunk as program calls on ``n_devices`` devices (a resumed sweep may
    have other devices than the one that planned it): its layout's lanes per device
    on the devices it was planned for, or in several calls on fewer. A lane's
    numbers do not depend on the other lanes of its call.

    Example:
      >>> plan = make_plan(cfg.load_config("tiny"), Resources(n_devices=4, lanes_per_device=2))
      >>> [c.real.tolist() for c in plan.chunks]          # one chunk: 2 lanes on each of 4 devices
      [[0, 1, 2, 3, 4, 5, 6, 7]]
      >>> [c.real.tolist() for c in device_calls(plan.chunks[0], 2)]   # resumed on 2 devices
      [[0, 1, 2, 3], [4, 5, 6, 7]]
    """
    per_device = chunk.layout.lanes_per_device
    size = per_device * min(n_devices, len(chunk.lanes) // per_device)  # its padding lanes too: no new shape
    if size == len(chunk.lanes):
        return [chunk]
    return _split(chunk.real, (chunk.group, chunk.n_max, chunk.n_min, chunk.layout, chunk.first_block), size)


def check_memory(plan: Plan, chunks: Iterable[Chunk], memory_gb: float) -> None:
    """``ConfigError`` with the figure when a stored chunk's lanes per device no
    longer fit in ``memory_gb`` (a resumed sweep keeps its layout)."""
    for c in chunks:
        need = c.layout.lanes_per_device * lane_bytes(plan.config(c), c.n_max)
        if need > memory_gb * 2**30:
            raise ConfigError(f"the stored plan runs {c.layout.lanes_per_device} lane(s) per device at n_train "
                              f"{c.n_max}: about {need / 2**30:.3g} GiB, more than --memory_gb={memory_gb:g}; "
                              f"resume with --memory_gb={math.ceil(need / 2**30 * 10) / 10:g} or more")


def check_fits(config: ml_collections.ConfigDict, memory_gb: float) -> None:
    """``ConfigError`` when one lane of a checked ``config`` (its largest training
    set, in each static group) needs more than ``memory_gb``, or when the static
    groups' models cannot share one store (:func:`check_final_dims`)."""
    check_final_dims(config)
    for _, group in cfg.static_groups(config):
        n_train = max(split_sizes(alpha, 0.0, group.task, group.p)[0] for alpha in cfg.axis_values(group, "alpha"))
        largest = lane_bytes(group, n_train)
        if largest > memory_gb * 2**30:
            raise ConfigError(f"one lane at p={group.p}, width={group.width} needs about {largest / 2**30:.3g} GiB, "
                              f"more than --memory_gb={memory_gb:g} per device; lower p or width, or raise "
                              "--memory_gb")


def check_final_dims(config: ml_collections.ConfigDict) -> None:
    """``ConfigError`` when a final array (a parameter, a per-neuron IPR) has other
    dims in one static group's model than in another's, or a dim named like a swept
    axis. (From the models' declared dims: nothing runs JAX before the command line
    has set up its devices.)"""
    dims: dict[str, tuple] = {}
    for _, group in cfg.static_groups(config):
        model = get_model(cfg.static_config(group))
        declared = {**{f"ipr_{g}": (g,) for g in model.groups}, **{k: tuple(v) for k, v in model.param_dims.items()}}
        for name, d in declared.items():
            if dims.setdefault(name, d) != d:
                raise ConfigError(f"{name} has dims {dims[name]} in one static group and {d} in another")
            clash = sorted(set(d) & set(config.sweep))
            if clash:
                raise ConfigError(f"the model's dim {clash[0]!r} of {name} has the name of a swept axis")


def check_resources(memory_gb: float, lanes_per_device: int | None) -> None:
    """Raises ``ConfigError`` for a memory budget or lane count no chunk can have."""
    if not (isinstance(memory_gb, (int, float)) and math.isfinite(memory_gb) and memory_gb > 0):
        raise ConfigError(f"--memory_gb={memory_gb} must be a finite number of GiB > 0")
    if lanes_per_device is not None and not (isinstance(lanes_per_device, int) and lanes_per_device >= 1):
        raise ConfigError(f"--lanes_per_device={lanes_per_device} must be an integer >= 1 (0 on the command "
                          "line: the platform's default)")


def grow_plan(stored: Plan, config: ml_collections.ConfigDict, resources: Resources,
              old_index: np.ndarray, first_block: int = 0) -> Plan:
    """The plan of the grown grid of ``config``: the ``stored`` plan's chunks, their
    lanes renumbered (``old_index[i]``: the grown grid's index of stored lane ``i``)
    and, for more steps, continued from logged block ``first_block``; and chunks of
    the new lanes in the compile groups and layouts a fresh plan of the grown grid
    (:func:`make_plan` on ``resources``) gives them, so that a new lane runs as it
    would in a fresh sweep. The store's chunk size and kept state stay.
    """
    fresh = make_plan(config, resources)
    group_of = {tuple(sorted(g.values.items())): i for i, g in enumerate(fresh.groups)}
    old_group = [group_of[tuple(sorted(_with_fixed(g.values, fresh, stored).items()))] for g in stored.groups]
    kept = [c._replace(group=old_group[c.group], lanes=old_index[c.lanes], first_block=first_block or c.first_block)
            for c in stored.chunks]
    is_new = np.ones(fresh.n_lanes, bool)
    is_new[old_index] = False
    added = []
    for c in fresh.chunks:
        new = c.real[is_new[c.real]]
        if len(new):
            added.append((c, new))
    chunks = list(kept)
    for kind, new in _by_kind(added):
        chunks += _split(new, kind, kind[3].lanes_per_device * fresh.n_devices)
    return fresh._replace(chunks=tuple(chunks), store_chunk=stored.store_chunk, platform=stored.platform,
                          rules=stored.rules, keep_state=stored.keep_state)


def _with_fixed(values: dict, fresh: Plan, stored: Plan) -> dict:
    """A stored static group's values on the grown grid's swept static axes (an
    axis new to the grid has the stored config's fixed value)."""
    names = {k for g in fresh.groups for k in g.values}
    base = stored.groups[0].config
    return {k: values[k] if k in values else cfg.axis_values(base, k)[0] for k in names}


def _by_kind(lanes_of: list[tuple[Chunk, np.ndarray]]) -> list[tuple[tuple, np.ndarray]]:
    """Lanes (of chunks, ``(chunk, its lanes)``) grouped by the chunks'
    ``(group, n_max, n_min, layout, first_block)``, in plan order."""
    kinds: dict[tuple, list[np.ndarray]] = {}
    for c, lanes in lanes_of:
        kinds.setdefault((c.group, c.n_max, c.n_min, c.layout, c.first_block), []).append(lanes)
    return [(k, np.concatenate(v)) for k, v in kinds.items()]


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
