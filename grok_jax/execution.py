"""Execution: compiled chunk programs, the chunk pipeline, progress, the sweep.

``run_sweep`` plans the grid (:mod:`grok_jax.plan`), takes each compile group's
layout (:mod:`grok_jax.layouts`), compiles ``jit(shard_map(vmap(train)))`` once per
group and shape and reuses it for every chunk and for later grids of the same
shapes, and trains the chunks one after another while the host stores the last
(:mod:`grok_jax.results`).
"""

from __future__ import annotations

import functools
import json
import os
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
from grok_jax import layouts, metrics, phases, results
from grok_jax.errors import ConfigError
from grok_jax.models import final_specs, flat_variables, get_model
from grok_jax.plan import Chunk, Plan, flops_per_lane, make_plan
from grok_jax.train import Lane, make_train

# A chunk reports progress from inside its program (a host callback, ~0.1-0.2 ms per
# device on a CPU) at most once per this many seconds of its estimated work, and at
# most 25 times; a shorter chunk advances the progress bar only when it finishes.
REPORT_SECONDS = 1.0
# FLOP/s the number of reports assumes, per platform: a fixed figure rather than a
# measured one, so that a program's structure never depends on a timing (and the
# persistent compilation cache finds it again). A 2-core CPU VM does 0.5-1.5e11.
NOMINAL_RATE = {"cpu": 1e11, "gpu": 1e14, "tpu": 1e14}
# Fields that change a lane's results at most by rounding (compile groups change only
# the padding) or not at all (plot): a store may be resumed with other values. (Its
# recorded layout, compile groups included, is reused.)
RESUMABLE = ("plot", "compile_groups")


class ProgramKey(NamedTuple):
    """What a compiled chunk program depends on (the cache key of :data:`_PROGRAMS`)."""

    static: Any  # the static config
    n_max: int
    lanes: int  # lanes per chunk
    devices: tuple
    layout: layouts.Layout
    reports: int  # progress reports per run
    n_min: int  # smallest training set of the compile group (see make_train)


_PROGRAMS: dict[ProgramKey, Callable] = {}


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


def progress_reports(config: Any, n_max: int, lanes_per_device: int, platform: str) -> int:
    """Progress reports per run of a chunk program: one per :data:`REPORT_SECONDS`
    of its estimated work at the platform's :data:`NOMINAL_RATE`, at most 25.

    Example:
      >>> progress_reports(config, n_max=4704, lanes_per_device=1, platform="cpu")  # p 97, N 500, 2000 steps
      25
    """
    seconds = flops_per_lane(config, n_max) * lanes_per_device / NOMINAL_RATE.get(platform, 1e14)
    return min(25, int(seconds / REPORT_SECONDS))


def chunk_layout(config: Any, n_max: int, n_lanes: int, mesh: Mesh) -> layouts.Layout:
    """The layout of a chunk of ``n_lanes`` lanes of group ``n_max`` (and of the
    static group of ``config``) sharded over ``mesh``."""
    return layouts.layout(mesh.devices.flat[0].platform, n_max, config.width, config.p, n_lanes // mesh.size,
                          config.batchnorm, config.batch_size)


def compiled_train(config: ml_collections.ConfigDict, n_max: int, lanes: Lane, mesh: Mesh, n_min: int = 1
                   ) -> tuple[Callable, float, bool]:
    """The compiled ``jit(shard_map(vmap(train)))`` (without ``vmap`` for one lane
    per device) for the static settings of ``config`` (a static group's) and these
    shapes, the seconds spent on it now (0 when it was compiled before in this
    process), and whether it came from the
    persistent compilation cache. A long program reports to the progress bar while
    it runs (:func:`progress_reports`); JAX does not cache programs with such host
    callbacks, so those (chunks of more than ~25 s of work) compile in every process,
    a few seconds next to their minutes of work."""
    static = cfg.static_config(config)
    sharding = NamedSharding(mesh, PartitionSpec("lanes"))
    layout = chunk_layout(static, n_max, len(lanes.seed), mesh)
    # Computed whether or not a bar is shown, so that the program is the same either way.
    reports = progress_reports(static, n_max, layout.lanes_per_device, mesh.devices.flat[0].platform)
    n_min = n_min if static.batch_size else 1  # only mini-batches use it
    key = ProgramKey(static, n_max, len(lanes.seed), tuple(mesh.devices.flat), layout, reports, n_min)
    if key in _PROGRAMS:
        return _PROGRAMS[key], 0.0, False
    start, hits = time.perf_counter(), _CacheHits.count
    # shard_map: each device runs train on its own lanes, with no collective (left to
    # the SPMD partitioner, the inputs of the IPR were gathered onto every device).
    # Lanes never talk to each other, so the varying-axes type check is off (BatchNorm's
    # constant initial scale would trip it).
    spec = PartitionSpec("lanes")
    train = make_train(static, n_max, on_log=_on_log, row_blocks=layout.row_blocks, reports=reports,
                       columns=layout.columns, n_min=n_min)
    sharded = jax.shard_map(_per_device(train, layout.lanes_per_device), mesh=mesh, in_specs=(spec,),
                            out_specs=spec, check_vma=False)
    _PROGRAMS[key] = jax.jit(sharded, in_shardings=(sharding,)).lower(lanes).compile()
    return _PROGRAMS[key], time.perf_counter() - start, _CacheHits.count > hits


class _CacheHits:
    """Programs loaded from JAX's persistent compilation cache in this process."""

    count = 0


def _count_cache_hit(event: str, **_: Any) -> None:
    if event == "/jax/compilation_cache/cache_hits":
        _CacheHits.count += 1


jax.monitoring.register_event_listener(_count_cache_hit)


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/grok_jax/jax`` (default ``~/.cache/grok_jax/jax``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "grok_jax", "jax")


def use_compilation_cache(path: str | None = None) -> None:
    """Keeps compiled programs in JAX's persistent cache at ``path`` (default
    :func:`default_cache_dir`), so that a later process running the same shapes
    loads them instead of compiling (seconds each on a CPU). The command line calls
    it unless ``--compilation_cache=``; a library user calls it once, before the
    first sweep (JAX sets its cache up once per process). Every program without
    host callbacks is cached, however fast it compiled. Raises ``OSError`` when
    ``path`` cannot be written."""
    path = path or default_cache_dir()
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f".write-test-{os.getpid()}")
    with open(probe, "w") as f:  # raises OSError where JAX would only warn per program
        f.write("x")
    os.remove(probe)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _per_device(train: Callable, lanes: int) -> Callable:
    """``vmap(train)``, or for one lane per device ``train`` itself on that lane.

    Without a lane axis of size one XLA emits plain gathers and scatters (no lane
    index in every gather index) and fuses the backward gathers into their
    consumer: with the readout's backward of :mod:`grok_jax.models.mlp2`, about 10%
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
    parameters: bool = True,
):
    """Runs every lane of the grid; returns the results as an ``xarray.Dataset``
    (without the final parameters with ``out`` and ``parameters=False``: they stay
    in the store, see :func:`grok_jax.results.load_results`).

    Chunks hold, per device, as many lanes as fit in ``memory_gb`` of its memory,
    and at most ``lanes_per_device`` (default:
    :func:`grok_jax.layouts.default_lanes_per_device`, 1 on CPU, 4 for tiny
    problems, unlimited on accelerators).

    With ``out``, results go to the zarr store ``out/results.zarr`` chunk by chunk
    as they finish. If that store exists with the same config, its finished
    chunks are kept and skipped, and the rest run in the layout recorded in it
    (compile groups and lanes per device; another platform is refused), so that a
    resumed store equals an uninterrupted one; with another config (other than
    ``plot`` and ``compile_groups``) it is an error and nothing is touched. One run
    at a time writes a store: a second one is refused
    (:func:`grok_jax.results.exclusive`).

    Example:
      >>> ds = run_sweep(load_config("wd_xi"), out="results/wd_xi")
      >>> ds.phase.to_pandas()                   # wd × xi table of phase codes
    """
    cfg.check_config(config)  # before touching devices: bad input fails fast
    devices = jax.devices()
    platform = devices[0].platform
    plan = make_plan(config, memory_gb, len(devices), lanes_per_device, platform)
    config_json = config.to_json(sort_keys=True)
    if not out:
        mesh = make_mesh(plan, devices)
        return _sweep(config, config_json, plan, mesh, None, np.zeros(plan.n_lanes, bool), progress, log)
    path = results.store_path(out)
    with results.exclusive(path):
        existing = results.open_to_resume(path, config_json, RESUMABLE, defaults=cfg.base_config().to_dict())
        stored = results.stored_layout(existing) if existing is not None else None
        if stored is not None:
            plan = _resume_plan(config, memory_gb, devices, stored, plan, log)
        mesh = make_mesh(plan, devices)
        done = results.prepare(path, existing, config_json,
                               lambda: _empty_results(config, config_json, plan, mesh), len(plan.chunks[0].lanes),
                               RESUMABLE, log, layout=_layout_record(plan, mesh))
        _sweep(config, config_json, plan, mesh, path, done, progress, log)
    return results.load_results(path, parameters)


def _layout_record(plan: Plan, mesh: Mesh) -> dict:
    """The platform and every compile group's layout, as the store records them:
    ``groups`` lists each compile group's static group, padded size and layout."""
    groups = {(c.group, c.n_max): chunk_layout(plan.config(c), c.n_max, len(c.lanes), mesh) for c in plan.chunks}
    return {"platform": mesh.devices.flat[0].platform,
            "groups": [{"group": g, "n_max": n, **layout._asdict()} for (g, n), layout in sorted(groups.items())]}


def _resume_plan(config: Any, memory_gb: float, devices: list, stored: dict, plan: Plan,
                 log: Callable[[str], None]) -> Plan:
    """The plan of a resumed store: its recorded compile groups and lanes per device."""
    platform = devices[0].platform
    if stored["platform"] != platform:
        raise ConfigError(f"the store was written on {stored['platform']}; resuming it on {platform} would mix "
                          "layouts (rounding); resume on that platform, or choose another --out")
    groups = {(g["group"], g["n_max"]): g["lanes_per_device"] for g in stored["groups"]}
    resumed = make_plan(config, memory_gb, len(devices), platform=platform, groups=groups)
    for g in stored["groups"]:
        group_config = resumed.groups[g["group"]].config
        now = {"group": g["group"], "n_max": g["n_max"], **layouts.layout(
            platform, g["n_max"], group_config.width, group_config.p, g["lanes_per_device"],
            group_config.batchnorm, group_config.batch_size)._asdict()}
        if now != g:  # the rules of layouts.py changed since the store was written
            raise ConfigError(f"the store was written in layout {g}, this version would use {now}; finish it "
                              "with the version that wrote it, or choose another --out")
    if [(c.group, c.n_max, c.lanes.tolist()) for c in resumed.chunks] != [
            (c.group, c.n_max, c.lanes.tolist()) for c in plan.chunks]:
        log("resuming in the store's layout: " + ", ".join(
            f"n_train padded to {n} with {k} lane(s) per device" for (_, n), k in sorted(groups.items())))
    return resumed


def _sweep(config: Any, config_json: str, plan: Plan, mesh: Mesh, path: str | None, done: np.ndarray,
           progress: bool, log: Callable[[str], None]):
    """Runs the lanes not ``done``: into the store at ``path``, or, without one,
    returns the results."""
    _print_plan(config, plan, list(mesh.devices.flat), done, log)
    pending = [c for c in plan.chunks if not done[c.lanes[:c.count]].all()]
    steps = np.arange(0, config.steps + 1, config.log_every)
    collected: list[tuple] = []

    def finish(chunk: Chunk, outputs: tuple) -> None:
        """Host side of a finished chunk: drop the padding and the lanes committed
        before (a chunk may hold some when an earlier run stopped inside it: they
        are not rewritten), classify, store."""
        new = np.flatnonzero(~done[chunk.lanes[:chunk.count]])
        lanes = chunk.lanes[new]
        out_log, out_final = jax.tree.map(lambda v: np.asarray(v)[new], outputs)
        variables = out_final.pop("variables")
        out_final.update(flat_variables(variables))
        phase = phases.classify_log(out_log, plan.xi[lanes])
        out_final["grok_step"] = phases.grokking_step(out_log["test_acc"], steps).astype(np.float32)
        out_final["unlearn_step"] = phases.unlearning_step(out_log["corrupt_acc"], out_log["clean_acc"], steps
                                                           ).astype(np.float32)
        if path:
            results.write(path, lanes, out_log, out_final, phase)
        else:
            collected.append((lanes, out_log, out_final, phase))

    bar = _progress_bar(len(pending) * config.steps, progress)
    _Progress.bar, _Progress.log_every = bar, config.log_every  # (steps and log_every are never swept)
    try:
        _run_chunks(config, plan, mesh, pending, bar, finish, log)
    finally:
        bar.close()
        _Progress.bar = None
    return None if path else _in_memory(config, config_json, plan, mesh, collected)


def _run_chunks(config: Any, plan: Plan, mesh: Mesh, pending: list[Chunk], bar: Any,
                finish: Callable[[Chunk, tuple], None], log: Callable[[str], None]) -> None:
    """Trains the pending chunks; each is finished on the host while the next trains."""
    in_flight = None  # (chunk, its outputs)
    for i, c in enumerate([*pending, None]):
        if c is not None:
            chunk, group_config = chunk_lanes(plan, c, mesh), plan.config(c)
            program, seconds, cached = compiled_train(group_config, c.n_max, chunk, mesh, plan.n_min(c))
            if seconds:
                columns = chunk_layout(group_config, c.n_max, len(c.lanes), mesh).columns
                wide = f"; readout product {columns} columns wide" if columns > group_config.p else ""
                how = "loaded from the compilation cache" if cached else "compiled"
                log(f"{how} in {seconds:.1f} s ({_group_name(plan, c.group)}n_train padded to {c.n_max}{wide})")
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


def _empty_results(config: Any, config_json: str, plan: Plan, mesh: Mesh):
    """The flat results of the plan's grid before any lane ran, with its layout.
    Metrics and final arrays are the union over the static groups, each dim as
    large as its largest group's."""
    steps = np.arange(0, config.steps + 1, config.log_every)
    names, dims, sizes = [], {}, {}
    for group in plan.groups:
        model = get_model(cfg.static_config(group.config))
        params = jax.eval_shape(model.init, jax.random.key(0))["params"]
        names += [n for n in metrics.metric_names(tuple(model.norm_leaves(params))) if n not in names]
        for name, spec in final_specs(model).items():
            if dims.setdefault(name, spec.dims) != spec.dims:
                raise ConfigError(f"{name} has dims {dims[name]} in one static group and {spec.dims} in another")
            for d, n in zip(spec.dims, spec.shape):
                sizes[d] = max(sizes.get(d, 0), n)
    clash = sorted(set(sizes) & set(plan.axes))
    if clash:
        raise ConfigError(f"the model's dim {clash[0]!r} has the name of a swept axis")
    finals = {name: (d, tuple(sizes[k] for k in d)) for name, d in dims.items()}
    finals.update(grok_step=((), ()), unlearn_step=((), ()))  # see grok_jax.phases
    flat = results.empty(config_json, plan.axes, steps, tuple(names), finals)
    flat.attrs["layout"] = json.dumps(_layout_record(plan, mesh), sort_keys=True)
    return flat


def _in_memory(config: Any, config_json: str, plan: Plan, mesh: Mesh, collected: list[tuple]):
    """The same dataset as :func:`results.load_results`, without a store."""
    flat = _empty_results(config, config_json, plan, mesh)
    for lanes, out_log, out_final, phase in collected:
        results.fill(flat, lanes, out_log, out_final, phase)
    return results.to_grid(flat)


def _group_name(plan: Plan, g: int) -> str:
    """``"width=64, "`` for a static group of a sweep over static axes, else ``""``."""
    values = plan.groups[g].values
    return "".join(f"{k}={v}, " for k, v in values.items())


def _print_plan(config: Any, plan: Plan, devices: list, done: np.ndarray, log: Callable[[str], None]) -> None:
    axes = " × ".join(f"{k}[{len(v)}]" for k, v in plan.axes.items()) or "(single run)"
    flops = sum(flops_per_lane(plan.config(c), c.n_max) * np.sum(~done[c.lanes[:c.count]]) for c in plan.chunks)
    n_done = int(done.sum())
    rate = _matmul_rate_once()
    fixed = [f"{k}={config[k]}" for k in ("p", "width") if k not in config.sweep]
    batch = f" batch={config.batch_size}" if config.batch_size and "batch_size" not in config.sweep else ""
    groups = "; ".join(f"{_group_name(plan, g)}n_train padded to {n}" for g, n in plan.compile_groups)
    log(f"grid {axes} = {plan.n_lanes} lanes; {' '.join(fixed)} steps={config.steps}{batch}; "
        f"{len(plan.compile_groups)} compile group(s) ({groups})")
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


