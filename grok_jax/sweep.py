"""Runs a grid of training runs as ``jit(vmap(train))``, chunk by chunk, to a store.

The grid is the Cartesian product of the axes in ``config.sweep`` (C order, the
first axis slowest). Every lane carries all traced settings, so lanes share one
program per shape. The only shape a traced axis changes is the training-set size
(α): lanes are grouped by it into at most ``config.compile_groups`` compile groups,
each padded to its largest α, compiled once and reused by all its chunks and by
later grids of the same shapes. Chunks are sized by a memory budget, padded to a
common size within their group, and sharded across the local devices along the
lane axis.

Command line (see README):  python -m grok_jax.sweep --grid=wd_xi [--scale=paper]
    [--config.steps=500] [--out=DIR] [--memory_gb=4]
"""

from __future__ import annotations

import functools
import itertools
import logging as std_logging
import math
import os
import re
import sys
import threading
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from grok_jax import config as cfg
from grok_jax import phases, plotting, results
from grok_jax.data import num_pairs, split_sizes
from grok_jax.errors import ConfigError, StoreWriteError
from grok_jax.models import readout
from grok_jax.train import Lane, make_train

# Compile groups are added (up to config.compile_groups) until padding costs at most
# this fraction of the grid's real training rows.
PADDING_TOLERANCE = 0.1
# On a CPU, a step's gradient is computed over blocks of training rows with about
# this many bytes of activations (rows × width float32); with the pre-activations
# and their gradients a block's working set is a few times that, about a core's L2.
CPU_BLOCK_BYTES = 2**20
# A chunk reports progress from inside its program (a host callback, ~0.1-0.2 ms per
# device on a CPU) at most once per this many seconds of its estimated work, and at
# most 25 times; a shorter chunk advances the progress bar only when it finishes.
REPORT_SECONDS = 1.0
# A CPU pads the readout product to more columns only when that measures at least
# this much faster (near-ties keep the plain product, so the choice is stable).
COLUMNS_MARGIN = 0.15
# XLA options of a chunk program per platform. XLA CPU splits every reduction longer
# than 32 into a reduce-window and a reduce (partial sums of 32, then their sum);
# the masked sums of an evaluation then take two or three kernels each instead of one
# fused loop, about a third of a logged block's operations at p 31. Without the split
# (sums then accumulate in vector lanes, differing from it by rounding) logging every
# 10 steps costs ~1% less time there. Other backends keep their passes.
COMPILER_OPTIONS = {"cpu": {"xla_disable_hlo_passes": "tree_reduction_rewriter"}}


class Chunk(NamedTuple):
    """Lanes trained together by one call of one compiled program."""

    n_max: int  # padded training-set size of its compile group
    lanes: np.ndarray  # grid indices of its lanes; padding repeats the group's last lane
    count: int  # real lanes: the first ``count`` of ``lanes``


class Plan(NamedTuple):
    """What a sweep will run."""

    axes: dict[str, tuple]  # swept axis -> values, in grid order
    lanes: Lane  # numpy arrays, one entry per lane (C order of the grid)
    xi: np.ndarray  # nominal ξ of every lane (for the phase table)
    chunks: tuple[Chunk, ...]  # compile group by compile group, smallest n_max first
    n_devices: int  # devices a chunk is sharded over

    @property
    def n_lanes(self) -> int:
        return len(self.xi)

    @property
    def group_sizes(self) -> tuple[int, ...]:
        """The padded training-set size of every compile group."""
        return tuple(sorted({c.n_max for c in self.chunks}))


def make_plan(
    config: ml_collections.ConfigDict,
    memory_gb: float,
    n_devices: int = 1,
    per_device: int | None = None,
    platform: str | None = None,
) -> Plan:
    """Expands the grid into per-lane values, groups lanes by training-set size
    (:func:`compile_groups`) and sizes each group's chunks: per device as many
    lanes as fit in ``memory_gb`` (a budget per device), at most ``per_device``
    (default: that of :func:`default_lanes_per_device` when ``platform`` is given);
    chunks are a multiple of the device count and as equal as possible."""
    cfg.check_config(config)
    check_resources(memory_gb, per_device)
    axes = {name: tuple(config.sweep[name]) for name in config.sweep}
    names = cfg.TRACED_AXES
    rows = []
    for combo in itertools.product(*axes.values()):
        values = {name: cfg.axis_values(config, name)[0] for name in names} | dict(zip(axes, combo))
        n_train, n_corrupt = split_sizes(values["alpha"], values["xi"], config.task, config.p)
        rows.append((values["seed"], n_train, n_corrupt, values["wd"], values["lr"],
                     values["dropout"], values["xi"]))
    cols = list(zip(*rows))
    lanes = Lane(*(np.asarray(c, np.int32) for c in cols[:3]), *(np.asarray(c, np.float32) for c in cols[3:6]))
    n_devices = min(n_devices, len(rows))
    budget, largest = memory_gb * 2**30, lane_bytes(config, int(lanes.n_train.max()))
    if largest > budget:
        raise ConfigError(f"one lane at p={config.p}, width={config.width} needs about {largest / 2**30:.3g} GiB, "
                          f"more than --memory_gb={memory_gb:g} per device; lower p or width, or raise --memory_gb")
    chunks = []
    for group in compile_groups(lanes.n_train, config.compile_groups, n_devices):
        n_max = int(lanes.n_train[group].max())
        limit = per_device
        if limit is None and platform is not None:
            limit = default_lanes_per_device(platform, n_max, config.width)
        fit = min(limit or len(group), budget // lane_bytes(config, n_max))  # before int(): budget may be inf
        chunks += _split(group, n_max, n_devices, int(fit))
    return Plan(axes, lanes, np.asarray(cols[6], np.float64), tuple(chunks), n_devices)


def check_resources(memory_gb: float, lanes_per_device: int | None) -> None:
    """Raises ``ConfigError`` for a memory budget or lane count no chunk can have."""
    if not (isinstance(memory_gb, (int, float)) and math.isfinite(memory_gb) and memory_gb > 0):
        raise ConfigError(f"--memory_gb={memory_gb} must be a finite number of GiB > 0")
    if lanes_per_device is not None and not (isinstance(lanes_per_device, int) and lanes_per_device >= 1):
        raise ConfigError(f"--lanes_per_device={lanes_per_device} must be an integer >= 1 (0 on the command "
                          "line: the platform's default)")


def _split(group: np.ndarray, n_max: int, n_devices: int, per_device: int) -> list[Chunk]:
    """Balanced chunks of a group: as few padded lanes as the device count allows."""
    n = len(group)
    n_chunks = -(-n // (per_device * n_devices))
    size = n_devices * -(-n // (n_chunks * n_devices))
    starts = range(0, n, size)
    return [Chunk(n_max, group[np.minimum(np.arange(s, s + size), n - 1)], min(size, n - s)) for s in starts]


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
    """Rough device memory of one lane: activations of the step (training rows)
    and of the evaluation (at most all p² pairs), parameters with their AdamW state,
    and the log (16 floats per logged step)."""
    p, width = config.p, config.width
    acts = 8 * n_max * width + 4 * n_max * p + 3 * p * p * width + 3 * p * p * p
    return 4 * (acts + 6 * 3 * p * width + 16 * (config.steps // config.log_every + 1))


def flops_per_lane(config: Any, n_max: int) -> float:
    """Matmul FLOPs of one lane: three n×N×p products per step, and per log a
    forward over the pairs past the training rows (whose logits come from a step;
    with dropout or BatchNorm the evaluation also runs over the training rows,
    not counted). The one-hot layer is a gather and is not counted."""
    n_logs = config.steps // config.log_every + 1
    held_out = num_pairs(config.task, config.p) - n_max
    return 2.0 * config.width * config.p * (3 * n_max * config.steps + held_out * n_logs)


class ProgramKey(NamedTuple):
    """What a compiled chunk program depends on (the cache key of :data:`_PROGRAMS`)."""

    static: Any  # the static config
    n_max: int
    lanes: int  # lanes per chunk
    devices: tuple
    row_blocks: int
    columns: int
    reports: int  # progress reports per run


_PROGRAMS: dict[ProgramKey, Callable] = {}


def default_lanes_per_device(platform: str, n_max: int, width: int) -> int | None:
    """Most lanes per device in a chunk; ``None``: as many as memory allows.

    Accelerators want wide batches. A CPU core is fastest on one lane at a time
    (plain matmuls, activations in cache), except for tiny problems, where a few
    lanes share each chunk's fixed costs. Small grid (64 lanes, 1000 steps, logging
    every 20), 1 vs 4 lanes per device: p 31, N 128 7.2-7.6 vs 7.8 s; p 17, N 128
    1.85 vs 2.21 s; p 17, N 64 1.30 vs 1.20 s; p 11, N 32 0.61 vs 0.38 s. See
    benchmarks/README.md.
    """
    if platform != "cpu":
        return None
    return 4 if n_max * width <= 16384 else 1


def row_blocks(platform: str, n_max: int, width: int, lanes_per_device: int, batchnorm: bool) -> int:
    """Row blocks of a step's gradient (see :func:`grok_jax.train.make_gradient`).

    A CPU device training one lane at a time computes the gradient over blocks of
    about :data:`CPU_BLOCK_BYTES` of activations, which stay in cache between the
    forward and backward passes (p 97, N 500: 9 blocks, 20-25% faster per step).
    Accelerators want the largest products, batched lanes gained nothing, and
    BatchNorm couples all rows: one block there.

    Example:
      >>> row_blocks("cpu", n_max=4704, width=500, lanes_per_device=1, batchnorm=False)
      9
    """
    if platform != "cpu" or lanes_per_device != 1 or batchnorm:
        return 1
    return min(n_max, max(1, -(-n_max * width * 4 // CPU_BLOCK_BYTES)))


def readout_columns(mesh: Mesh, rows: int, width: int, p: int, lanes_per_device: int = 1) -> int:
    """Columns of the readout product ``h·W`` (see :func:`grok_jax.models.readout`).

    CPU matmul kernels are tuned for some output widths: at N 128 padding p 31 to
    32 columns makes the product ~20% faster, p 61 to 64 ~25%, while p 97 to 104
    is ~5% slower. On CPU devices the product over ``rows`` rows is therefore
    timed for p rounded up to a multiple of 8 and of 16, on every device of
    ``mesh`` at once as a sweep runs (once per shape and process, well under a
    second), and padded when that is at least :data:`COLUMNS_MARGIN` faster.
    Accelerators, and devices with several lanes (whose products are batched, not
    what is timed): ``p``.
    """
    candidates = tuple(sorted({p, -(-p // 8) * 8, -(-p // 16) * 16}))
    if mesh.devices.flat[0].platform != "cpu" or lanes_per_device != 1 or len(candidates) == 1:
        return p
    seconds = _product_seconds(mesh, rows, width, p, candidates)
    best = min(candidates, key=seconds.__getitem__)
    return best if seconds[best] < (1 - COLUMNS_MARGIN) * seconds[p] else p


@functools.cache
def _product_seconds(mesh: Mesh, rows: int, width: int, p: int, candidates: tuple[int, ...],
                     rounds: int = 7) -> dict[int, float]:
    """Median seconds of the readout product at each width in ``candidates``, on
    every device of ``mesh`` at once (interleaved rounds)."""
    sharding = NamedSharding(mesh, PartitionSpec("lanes"))
    h = jax.device_put(jnp.ones((mesh.size, rows, width), jnp.float32), sharding)
    w = jax.device_put(jnp.ones((mesh.size, width, p), jnp.float32), sharding)
    reps = int(np.clip(5e8 / (2.0 * rows * width * p), 4, 2000))  # ~5 ms of work per timing

    def products(columns: int) -> Callable:
        def run(h: jax.Array, w: jax.Array) -> jax.Array:
            def body(acc: jax.Array, _: None) -> tuple[jax.Array, None]:
                # acc feeds back into h so that the products are not hoisted out of the loop
                return acc + readout({"W": w[0]}, h[0] + acc * 1e-30, columns=columns)[0, 0], None
            return jax.lax.scan(body, jnp.float32(0), None, length=reps)[0][None]
        spec = PartitionSpec("lanes")
        return jax.jit(jax.shard_map(run, mesh=mesh, in_specs=(spec, spec), out_specs=spec, check_vma=False))

    programs = {q: products(q) for q in candidates}
    for program in programs.values():
        program(h, w).block_until_ready()  # compile
    times: dict[int, list[float]] = {q: [] for q in candidates}
    for _ in range(rounds):
        for q, program in programs.items():
            start = time.perf_counter()
            program(h, w).block_until_ready()
            times[q].append(time.perf_counter() - start)
    return {q: float(np.median(t)) for q, t in times.items()}


class _Progress:
    """Host-side state of the progress bar, advanced by the compiled programs'
    per-block callback (a cached program keeps calling the same function)."""

    bar: Any = None
    log_every = 1
    blocks = 0  # blocks of the current chunk already counted
    lock = threading.Lock()  # devices call back from their own threads


def _on_log(block: np.ndarray) -> None:
    # With several devices each calls back once per block: count the furthest.
    done = int(block) + 1
    with _Progress.lock:
        if _Progress.bar is not None and done > _Progress.blocks:
            _Progress.bar.update((done - _Progress.blocks) * _Progress.log_every)
            _Progress.blocks = done


def progress_reports(config: Any, n_max: int, lanes_per_device: int, rate: float) -> int:
    """Progress reports per run of a chunk program: one per :data:`REPORT_SECONDS`
    of its estimated work at the matmul ``rate`` (FLOP/s), at most 25.

    Example:
      >>> progress_reports(config, n_max=4704, lanes_per_device=1, rate=1.5e11)  # p 97, N 500, 2000 steps
      18
    """
    seconds = flops_per_lane(config, n_max) * lanes_per_device / rate
    return min(25, int(seconds / REPORT_SECONDS))


class Layout(NamedTuple):
    """How a chunk program lays out its work on a device: choices of speed that
    change results at most by rounding."""

    row_blocks: int  # see row_blocks
    columns: int  # of the readout product (see readout_columns)


def chunk_layout(config: Any, n_max: int, n_lanes: int, mesh: Mesh) -> Layout:
    """The :class:`Layout` of a chunk of ``n_lanes`` lanes sharded over ``mesh``."""
    per_device = n_lanes // mesh.size
    blocks = row_blocks(mesh.devices.flat[0].platform, n_max, config.width, per_device, config.batchnorm)
    return Layout(blocks, readout_columns(mesh, -(-n_max // blocks), config.width, config.p, per_device))


def compiled_train(config: ml_collections.ConfigDict, n_max: int, lanes: Lane, mesh: Mesh,
                   progress: bool = False) -> tuple[Callable, float]:
    """The compiled ``jit(shard_map(vmap(train)))`` (without ``vmap`` for one lane
    per device) for these static settings and shapes, and the seconds spent
    compiling it now (0 when it came from the cache). With ``progress`` it reports
    to the progress bar while it runs (if it runs long)."""
    static = cfg.static_config(config)
    sharding = NamedSharding(mesh, PartitionSpec("lanes"))
    per_device = len(lanes.seed) // mesh.size
    layout = chunk_layout(static, n_max, len(lanes.seed), mesh)
    reports = progress_reports(static, n_max, per_device, _matmul_rate_once()) if progress else 0
    key = ProgramKey(static, n_max, len(lanes.seed), tuple(mesh.devices.flat), layout.row_blocks,
                     layout.columns, reports)
    if key in _PROGRAMS:
        return _PROGRAMS[key], 0.0
    start = time.perf_counter()
    # shard_map: each device runs train on its own lanes, with no collective (left to
    # the SPMD partitioner, the inputs of the IPR were gathered onto every device).
    # Lanes never talk to each other, so the varying-axes type check is off (BatchNorm's
    # constant initial scale would trip it).
    spec = PartitionSpec("lanes")
    train = make_train(static, n_max, on_log=_on_log, row_blocks=layout.row_blocks, reports=reports,
                       columns=layout.columns)
    sharded = jax.shard_map(_per_device(train, per_device), mesh=mesh, in_specs=(spec,), out_specs=spec,
                            check_vma=False)
    fn = jax.jit(sharded, in_shardings=(sharding,))
    options = compiler_options(mesh.devices.flat[0].platform)
    _PROGRAMS[key] = fn.lower(lanes).compile(compiler_options=options)
    return _PROGRAMS[key], time.perf_counter() - start


def compiler_options(platform: str) -> dict[str, str] | None:
    """:data:`COMPILER_OPTIONS` for ``platform``. Passes the user disabled in
    ``XLA_FLAGS`` stay disabled: a compile option replaces that list.

    Example:
      >>> compiler_options("cpu")   # with XLA_FLAGS=--xla_disable_hlo_passes=foo
      {'xla_disable_hlo_passes': 'foo,tree_reduction_rewriter'}
    """
    options = COMPILER_OPTIONS.get(platform)
    user = re.search(r"--xla_disable_hlo_passes=(\S+)", os.environ.get("XLA_FLAGS", ""))
    if options and user and "xla_disable_hlo_passes" in options:
        options = {**options, "xla_disable_hlo_passes": f"{user[1]},{options['xla_disable_hlo_passes']}"}
    return options


def _per_device(train: Callable, lanes: int) -> Callable:
    """``vmap(train)``, or for one lane per device ``train`` itself on that lane.

    Without a lane axis of size one XLA emits plain gathers and scatters (no lane
    index in every gather index) and fuses the backward gathers into their
    consumer: with the readout's backward of :mod:`grok_jax.models`, about 10%
    less time per step at p 31, N 128 on a CPU core.
    """
    if lanes > 1:
        return jax.vmap(train)
    return lambda lane: jax.tree.map(lambda x: x[None], train(jax.tree.map(lambda x: x[0], lane)))


def make_mesh(plan: Plan, devices: list) -> Mesh:
    """A 1-D mesh ``("lanes",)`` over the devices the plan's chunks are sized for."""
    return Mesh(np.asarray(devices[: plan.n_devices]), ("lanes",))


def chunk_lanes(plan: Plan, chunk: Chunk, mesh: Mesh) -> Lane:
    """The per-lane values of ``chunk``, sharded along the lanes over ``mesh`` (a
    group's last chunk is padded with copies of a lane: same shape, no recompile)."""
    sharding = NamedSharding(mesh, PartitionSpec("lanes"))
    return Lane(*(jax.device_put(a[chunk.lanes], sharding) for a in plan.lanes))


def run_sweep(
    config: ml_collections.ConfigDict,
    out: str | None = None,
    memory_gb: float = 4.0,
    progress: bool = True,
    log: Callable[[str], None] = print,
    lanes_per_device: int | None = None,
):
    """Runs every lane of the grid; returns the results as an ``xarray.Dataset``.

    Chunks hold, per device, as many lanes as fit in ``memory_gb`` of its memory,
    and at most ``lanes_per_device`` (default: :func:`default_lanes_per_device`,
    1 on CPU, 4 for tiny problems, unlimited on accelerators).

    With ``out``, results go to the zarr store ``out/results.zarr`` chunk by chunk
    as they finish. If that store exists with the same config, its finished
    chunks are kept and skipped; with another config (other than ``plot`` and
    ``compile_groups``) it is an error and nothing is touched. One run at a time
    writes a store: a second one is refused (:func:`grok_jax.results.exclusive`).

    Example:
      >>> ds = run_sweep(load_config("wd_xi"), out="results/wd_xi")
      >>> ds.phase.to_pandas()                   # wd × xi table of phase codes
    """
    cfg.check_config(config)  # before touching devices: bad input fails fast
    check_resources(memory_gb, lanes_per_device)
    devices = jax.devices()
    plan = make_plan(config, memory_gb, len(devices), lanes_per_device, devices[0].platform)
    mesh = make_mesh(plan, devices)
    config_json = config.to_json(sort_keys=True)
    path = results.store_path(out) if out else None
    if not path:
        return _sweep(config, config_json, plan, mesh, None, np.zeros(plan.n_lanes, bool), progress, log)
    with results.exclusive(path):
        done = results.prepare(path, config_json, lambda: _empty_results(config, config_json, plan),
                               len(plan.chunks[0].lanes), RESUMABLE, log)
        _sweep(config, config_json, plan, mesh, path, done, progress, log)
    return results.load_results(path)


def _sweep(config: Any, config_json: str, plan: Plan, mesh: Mesh, path: str | None, done: np.ndarray,
           progress: bool, log: Callable[[str], None]):
    """Runs the lanes not ``done``: into the store at ``path``, or, without one,
    returns the results."""
    _print_plan(config, plan, list(mesh.devices.flat), done, log)

    pending = [c for c in plan.chunks if not done[c.lanes[:c.count]].all()]
    collected: list[tuple] = []

    def finish(chunk: Chunk, outputs: tuple) -> None:
        """Host side of a finished chunk: drop the padding and the lanes committed
        before (a chunk of another layout may hold some: they are not rewritten),
        classify, store."""
        new = np.flatnonzero(~done[chunk.lanes[:chunk.count]])
        lanes = chunk.lanes[new]
        out_log, out_final = jax.tree.map(lambda v: np.asarray(v)[new], outputs)
        phase = phases.classify_log(out_log, plan.xi[lanes])
        if path:
            results.write(path, lanes, out_log, out_final, phase)
        else:
            collected.append((lanes, out_log, out_final, phase))

    bar = _progress_bar(len(pending) * config.steps, progress)
    _Progress.bar, _Progress.log_every = bar, config.log_every
    try:
        _run_chunks(config, plan, mesh, pending, bar, finish, log, progress)
    finally:
        bar.close()
        _Progress.bar = None
    return None if path else _in_memory(config, config_json, plan, collected)


def _run_chunks(config: Any, plan: Plan, mesh: Mesh, pending: list[Chunk], bar: Any,
                finish: Callable[[Chunk, tuple], None], log: Callable[[str], None], progress: bool) -> None:
    """Trains the pending chunks; each is finished on the host while the next trains."""
    static = cfg.static_config(config)
    # Layouts first: timing a readout product waits for a device, which must not
    # happen while a chunk trains (it would stop the next compile from overlapping it).
    layouts = {c.n_max: chunk_layout(static, c.n_max, len(c.lanes), mesh) for c in pending}
    in_flight = None  # (chunk, its outputs)
    for i, c in enumerate([*pending, None]):
        if c is not None:
            chunk = chunk_lanes(plan, c, mesh)
            program, seconds = compiled_train(config, c.n_max, chunk, mesh, progress)
            if seconds:
                columns = layouts[c.n_max].columns
                wide = f"; readout product {columns} columns wide" if columns > static.p else ""
                log(f"compiled in {seconds:.1f} s (n_train padded to {c.n_max}{wide})")
        if in_flight is not None:
            jax.block_until_ready(in_flight[1])
            jax.effects_barrier()  # every progress callback of that chunk has run
            bar.update(config.steps * i - bar.n)  # in case a callback was dropped
        if c is not None:
            bar.set_description(f"chunk {i + 1}/{len(pending)}")
            _Progress.blocks = 0
            outputs = program(chunk)  # asynchronous
        if in_flight is not None:
            finish(*in_flight)
        in_flight = (c, outputs) if c is not None else None


# Fields that change a lane's results at most by rounding (compile groups change only
# the padding and hence the row blocks, as chunk sizes do) or not at all (plot): a
# store may be resumed with other values.
RESUMABLE = ("plot", "compile_groups")


def _empty_results(config: Any, config_json: str, plan: Plan):
    """The flat results of the plan's grid before any lane ran."""
    steps = np.arange(0, config.steps + 1, config.log_every)
    finals = ("ipr_k", "bn_scale") if config.batchnorm else ("ipr_k",)
    return results.empty(config_json, plan.axes, steps, config.width, finals)


def _in_memory(config: Any, config_json: str, plan: Plan, collected: list[tuple]):
    """The same dataset as :func:`results.load_results`, without a store."""
    flat = _empty_results(config, config_json, plan)
    for lanes, out_log, out_final, phase in collected:
        results.fill(flat, lanes, out_log, out_final, phase)
    return results.to_grid(flat)


def _print_plan(config: Any, plan: Plan, devices: list, done: np.ndarray, log: Callable[[str], None]) -> None:
    axes = " × ".join(f"{k}[{len(v)}]" for k, v in plan.axes.items()) or "(single run)"
    flops = sum(flops_per_lane(config, c.n_max) * np.sum(~done[c.lanes[:c.count]]) for c in plan.chunks)
    n_done = int(done.sum())
    rate = _matmul_rate_once()
    groups = plan.group_sizes
    log(f"grid {axes} = {plan.n_lanes} lanes; p={config.p} N={config.width} steps={config.steps}; "
        f"{len(groups)} compile group(s) (n_train padded to {', '.join(map(str, groups))})")
    sizes = sorted({len(c.lanes) for c in plan.chunks})
    log(f"{len(plan.chunks)} chunk(s) of {'/'.join(map(str, sizes))} lanes on {len(devices)} "
        f"{devices[0].platform} device(s); {n_done} lanes already done")
    log(f"estimate: {flops / 1e12:.2f} TFLOP ≈ {flops / rate:.0f} s at the measured matmul rate "
        f"of {rate / 1e9:.0f} GFLOP/s (a lower bound; compilation extra)")


def matmul_rate(n: int = 512, reps: int = 5) -> float:
    """Float32 FLOP/s of ``reps`` square ``n × n`` matmuls on the default device."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: (x @ x) / n)
    f(a).block_until_ready()
    start = time.perf_counter()
    for _ in range(reps):
        a = f(a)
    a.block_until_ready()
    return 2.0 * n**3 * reps / (time.perf_counter() - start)


@functools.cache
def _matmul_rate_once() -> float:
    """The plan's estimate uses one small measurement per process."""
    return matmul_rate()


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="step", disable=not enabled, file=sys.stderr, mininterval=1.0)


def _fail(error: Exception | str, status: int = 2) -> None:
    """One line on stderr, no traceback: bad input exits with status 2, a store or
    figure that could not be written with 1."""
    print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
    sys.exit(status)


def main(argv: list[str] | None = None) -> None:
    """``python -m grok_jax.sweep [flags]`` (``argv`` without the program name;
    default ``sys.argv[1:]``). Exits with status 2 on bad input, 1 when the store
    or the figures cannot be written, 130 on Ctrl-C. Flags live in a ``FlagValues``
    of their own, so that ``main`` can be called more than once in a process."""
    from absl import flags
    from ml_collections import config_flags

    argv = [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
    fv = flags.FlagValues()
    grid = flags.DEFINE_string("grid", "wd_xi", f"grid: a name in sweeps/ ({', '.join(cfg.available_grids())}) "
                               "or a path to a config file with get_config(scale)", flag_values=fv)
    scale = flags.DEFINE_enum("scale", "small", cfg.SCALES, "small: minutes on a laptop CPU; paper: the "
                              "paper's p, N, steps", flag_values=fv)
    out = flags.DEFINE_string("out", None, "output directory (default: results/<grid>[_paper])", flag_values=fv)
    memory = flags.DEFINE_float("memory_gb", 4.0, "memory budget per device for a chunk of lanes, GiB",
                                flag_values=fv)
    per_device = flags.DEFINE_integer("lanes_per_device", 0, "most lanes per device in a chunk (0: the "
                                      "platform's default, 1 on CPU (4 for tiny problems), else as many as fit "
                                      "in memory)", flag_values=fv)
    show_help = flags.DEFINE_bool("help", False, "show this help", short_name="h", flag_values=fv)
    try:
        fv(argv, known_only=True)  # --grid and --scale pick the config file
        if show_help.value:
            print(f"python -m grok_jax.sweep [flags]\n{fv.get_help()}\n  --config.FIELD=VALUE: override a field "
                  "of the grid's config (see grok_jax/config.py)")
            sys.exit(0)
        # New attributes allowed so that an axis can be added from the command line
        # (--config.sweep.seed="(0,1,2)"); check_config rejects unknown fields.
        config = config_flags.DEFINE_config_dict("config", cfg.load_config(grid.value, scale.value),
                                                 "the grid's config", flag_values=fv, lock_config=False,
                                                 accept_new_attributes=True, sys_argv=argv)
        rest = fv(argv)[1:]
    except (ConfigError, flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        _fail(e)
    if rest:
        _fail(ConfigError(f"unexpected arguments {rest}; use --flag=value"))
    _check_overrides(config.value, cfg.load_config(grid.value, scale.value))
    std_logging.getLogger("jax").setLevel(std_logging.WARNING)  # no INFO about absent TPUs
    name = os.path.splitext(os.path.basename(grid.value))[0]
    target = out.value or os.path.join("results", name + ("_paper" if scale.value == "paper" else ""))
    if target.rstrip("/").endswith(".zarr"):
        _fail(ConfigError(f"--out={target} ends in .zarr: it names the output directory, which holds the "
                          f"store {results.STORE} and the figures; e.g. --out={target.rstrip('/')[:-5]}"))
    store = results.store_path(target)
    try:
        ds = run_sweep(config.value, target, memory.value, lanes_per_device=per_device.value or None)
        print(plotting.phase_table(ds))
        fallback = plotting.plot_fallback(ds)
        if fallback:
            print(f"plot: {fallback}")
        for path in plotting.save_figures(ds, target):
            print(f"wrote {path}")
    except ConfigError as e:
        _fail(e)
    except StoreWriteError as e:
        _fail(e, status=1)
    except OSError as e:  # the figures (the store's own errors are StoreWriteErrors)
        _fail(f"cannot write the figures to {target}: {e.strerror or e}; the results are complete in {store}",
              status=1)
    except KeyboardInterrupt:
        kept = f"the lanes committed to {store} are kept" if os.path.exists(store) else "no results were written"
        _fail(f"interrupted; {kept}: run the same command again to resume", status=130)
    print(f"results: {store}  (grok_jax.load_results({target!r}))")


def _check_overrides(config: ml_collections.ConfigDict, grid_config: ml_collections.ConfigDict) -> None:
    """A fixed field changed on the command line while a sweep axis gives every lane
    its own value would be silently unused: refused."""
    for name in config.sweep:
        if name in grid_config and config[name] != grid_config[name]:
            _fail(ConfigError(f"--config.{name}={config[name]!r} is shadowed by the sweep axis "
                              f"{name}={tuple(config.sweep[name])}; set --config.sweep.{name}=(...) instead"))


if __name__ == "__main__":
    main()
