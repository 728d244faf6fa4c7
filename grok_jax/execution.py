"""Execution: compiled chunk programs, the chunk pipeline, progress, the sweep.

``run_sweep`` plans the grid (:mod:`grok_jax.plan`), takes each compile group's
layout (:mod:`grok_jax.layouts`), compiles ``jit(shard_map(vmap(train)))`` once per
group and shape and reuses it for every chunk and for later grids of the same
shapes, and trains the chunks one after another while the host stores the last
(:mod:`grok_jax.results`). A long chunk runs in segments (``start``, ``advance``,
``finish`` of :func:`grok_jax.train.make_run`), checkpointed between them
(:mod:`grok_jax.checkpoints`) and stopped there by SIGTERM. With several processes
(``jax.distributed``) each trains its own blocks of lanes into the shared store, and
a SIGTERM or failure of one stops them all (:class:`_Peers`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from grok_jax import config as cfg
from grok_jax import checkpoints, layouts, metrics, phases, results
from grok_jax.errors import ConfigError, PeerFailed, Preempted, StoreWriteError
from grok_jax.models import final_specs, flat_variables, get_model
from grok_jax.plan import Chunk, Plan, flops_per_lane, make_plan, process_chunks
from grok_jax.train import Lane, make_run, make_train

# Fields that change a lane's results at most by rounding (compile groups change only
# the padding) or not at all (plot): a store may be resumed with other values. (Its
# recorded layout, compile groups included, is reused.)
RESUMABLE = ("plot", "compile_groups")
CHECKPOINT_MINUTES = 5.0  # default: a long chunk's state is saved at most this often


class ProgramKey(NamedTuple):
    """What a compiled chunk program depends on (the cache key of :data:`_PROGRAMS`)."""

    static: Any  # the static config
    n_max: int
    lanes: int  # lanes per chunk
    devices: tuple
    layout: layouts.Layout
    n_min: int  # smallest training set of the compile group (see make_run)
    part: tuple  # ("train",), ("start",), ("advance", blocks) or ("finish",): see grok_jax.train.Run


_PROGRAMS: dict[ProgramKey, Callable] = {}


def layout_rules(platform: str, accelerator_layout: bool = False) -> str:
    """Whose layout rules a sweep follows: ``"cpu"`` on a CPU, else (or when forced,
    to test that path on a CPU) ``"accelerator"`` (see :mod:`grok_jax.layouts`)."""
    return "cpu" if platform == "cpu" and not accelerator_layout else "accelerator"


def chunk_layout(config: Any, n_max: int, n_lanes: int, mesh: Mesh, rules: str = "cpu", every: int = 0,
                 segment: int | None = None) -> layouts.Layout:
    """The layout of a chunk of ``n_lanes`` lanes of group ``n_max`` (and of the
    static group of ``config``) sharded over ``mesh``, by the layout ``rules``: its
    program calls are ``segment`` logged blocks long (default
    :func:`grok_jax.layouts.segment_blocks`, ``every`` blocks between checkpoints)."""
    per_device = n_lanes // mesh.size
    if segment is None:
        segment = layouts.segment_blocks(rules, flops_per_lane(config, n_max) * per_device,
                                         config.steps // config.log_every, every)
    return layouts.layout(rules, n_max, config.width, config.p, per_device, config.batchnorm, config.batch_size,
                          segment)


def _per_device(fn: Callable, lanes: int, batched: tuple[bool, ...]) -> Callable:
    """``vmap(fn)`` over the arguments marked ``batched``, or for one lane per device
    ``fn`` itself on that lane.

    Without a lane axis of size one XLA emits plain gathers and scatters (no lane
    index in every gather index) and fuses the backward gathers into their
    consumer: with the readout's backward of :mod:`grok_jax.models.mlp2`, about 10%
    less time per step at p 31, N 128 on a CPU core.
    """
    if lanes > 1:
        return jax.vmap(fn, in_axes=tuple(0 if b else None for b in batched))

    def one(*args):
        args = [jax.tree.map(lambda x: x[0], a) if b else a for a, b in zip(args, batched)]
        return jax.tree.map(lambda x: x[None], fn(*args))

    return one


def program(part: tuple, config: ml_collections.ConfigDict, n_max: int, layout: layouts.Layout, mesh: Mesh,
            n_min: int, *args: Any) -> tuple[Callable, float, bool]:
    """The compiled ``jit(shard_map(vmap(f)))`` (without ``vmap`` for one lane per
    device) of one ``part`` of a run (:class:`grok_jax.train.Run`; ``("train",)``:
    the whole run) for the static settings of ``config`` (a static group's), these
    shapes and ``layout``, lowered for ``args`` (the lanes, then the state and the
    first block where the part takes them); the seconds spent on it now (0 when it
    was compiled before in this process), and whether it came from the persistent
    compilation cache."""
    static = cfg.static_config(config)
    n_min = n_min if static.batch_size else 1  # only mini-batches use it
    key = ProgramKey(static, n_max, len(args[0].seed), tuple(mesh.devices.flat), layout, n_min, part)
    if key in _PROGRAMS:
        return _PROGRAMS[key], 0.0, False
    start, hits = time.perf_counter(), _CacheHits.count
    run = make_run(static, n_max, row_blocks=layout.row_blocks, columns=layout.columns, n_min=n_min)
    fn, batched = {
        "train": (make_train(static, n_max, layout.row_blocks, layout.columns, n_min), (True,)),
        "start": (run.start, (True,)),
        "advance": (lambda lane, state, first: run.advance(lane, state, first, part[-1]), (True, True, False)),
        "finish": (run.finish, (True, True)),
    }[part[0]]
    # shard_map: each device runs its own lanes, with no collective (left to the SPMD
    # partitioner, the inputs of the IPR were gathered onto every device). Lanes never
    # talk to each other, so the varying-axes type check is off (BatchNorm's constant
    # initial scale would trip it).
    specs = tuple(PartitionSpec("lanes") if b else PartitionSpec() for b in batched)
    sharded = jax.shard_map(_per_device(fn, layout.lanes_per_device, batched), mesh=mesh, in_specs=specs,
                            out_specs=PartitionSpec("lanes"), check_vma=False)
    shardings = tuple(NamedSharding(mesh, s) for s in specs)
    with jax.default_matmul_precision(static.matmul_precision):
        _PROGRAMS[key] = jax.jit(sharded, in_shardings=shardings).lower(*args).compile()
    return _PROGRAMS[key], time.perf_counter() - start, _CacheHits.count > hits


def compiled_train(config: ml_collections.ConfigDict, n_max: int, lanes: Lane, mesh: Mesh, n_min: int = 1
                   ) -> tuple[Callable, float, bool]:
    """:func:`program` of a whole run in the default layout (for benchmarks)."""
    layout = chunk_layout(config, n_max, len(lanes.seed), mesh, layout_rules(mesh.devices.flat[0].platform))
    return program(("train",), config, n_max, layout._replace(segment=config.steps // config.log_every), mesh,
                   n_min, lanes)


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
    checkpoint_steps: int = 0,
    checkpoint_minutes: float = CHECKPOINT_MINUTES,
    overwrite: bool = False,
    accelerator_layout: bool = False,
):
    """Runs every lane of the grid; returns the results as an ``xarray.Dataset``
    (without the final parameters with ``out`` and ``parameters=False``: they stay
    in the store, see :func:`grok_jax.results.load_results`).

    Chunks hold, per device, as many lanes as fit in ``memory_gb`` of its memory,
    and at most ``lanes_per_device`` (default:
    :func:`grok_jax.layouts.default_lanes_per_device`, 1 on CPU, 4 for tiny
    problems, unlimited on accelerators). ``accelerator_layout`` takes the layout
    rules of GPUs and TPUs on any platform (to test that path on a CPU).

    With ``out``, results go to the zarr store ``out/results.zarr`` chunk by chunk
    as they finish. If that store exists with the same config, its finished
    chunks are kept and skipped, and the rest run in the layout recorded in it
    (compile groups, lanes per device, segments; another platform is refused), so
    that a resumed store equals an uninterrupted one; with another config (other
    than ``plot`` and ``compile_groups``) it is an error naming the differing field
    and nothing is touched, unless ``overwrite``: then it is replaced. One run at a
    time writes a store: a second one is refused
    (:func:`grok_jax.results.exclusive`).

    A long chunk runs in segments (:func:`grok_jax.layouts.segment_blocks`); its
    state is checkpointed (:mod:`grok_jax.checkpoints`) at the first segment
    boundary after each ``checkpoint_minutes``, or at every boundary with
    ``checkpoint_steps`` (then the segment length; a multiple of ``log_every``),
    and restored when the same sweep runs again. On SIGTERM (in the main thread)
    the sweep checkpoints at the next boundary, or finishes a short chunk, and
    raises :class:`~grok_jax.errors.Preempted`. With several processes, each
    checkpoints its own chunk, a SIGTERM or failure of any stops every one, and none
    returns before all have ended (:class:`~grok_jax.errors.PeerFailed` if one failed).

    Example:
      >>> ds = run_sweep(load_config("wd_xi"), out="results/wd_xi")
      >>> ds.phase.to_pandas()                   # wd × xi table of phase codes
    """
    cfg.check_config(config)  # before touching devices: bad input fails fast
    every = check_checkpointing(config, checkpoint_steps, checkpoint_minutes)
    devices = jax.local_devices()
    platform = devices[0].platform
    rules = layout_rules(platform, accelerator_layout)
    plan = make_plan(config, memory_gb, len(devices), lanes_per_device, rules)
    config_json = config.to_json(sort_keys=True)
    if not out:
        mesh = make_mesh(plan, devices)
        layouts_ = _group_layouts(plan, mesh, rules, every)
        run = _Run(config, plan, mesh, layouts_, rules, progress, log)
        return run.sweep(config_json, np.zeros(plan.n_lanes, bool))
    path = results.store_path(out)
    processes, me = jax.process_count(), jax.process_index()
    n_mins = {(c.group, c.n_max): plan.n_min(c) for c in plan.chunks}  # of the whole grid's compile groups
    with results.exclusive(path) if me == 0 else contextlib.nullcontext(), _sigterm_stops():
        def setup() -> tuple[Plan, dict, np.ndarray]:
            return _open_store(config, config_json, path, plan, memory_gb, devices, rules, every, overwrite, log)

        if processes == 1:
            (plan, layouts_, done), peers = setup(), _Peers(log=log)
        else:
            peers = _Peers(_open_store_first(setup, path), log)
        try:  # from here on, every process ends in peers.stopped or peers.finished
            if processes > 1:
                plan, layouts_, done = _take_share(config, config_json, path, plan, memory_gb, devices, rules, log)
            run = _Run(config, plan, make_mesh(plan, devices), layouts_, rules, progress, log, path,
                       checkpoint_minutes, every > 0, n_mins, peers)
            run.sweep(config_json, done)
        except BaseException as e:
            peers.stopped(e, path)
            raise
        peers.finished(path)  # every process's lanes are committed
        if me == 0:
            checkpoints.remove_directory(path)
    return results.load_results(path, parameters)


def _open_store(config: Any, config_json: str, path: str, plan: Plan, memory_gb: float, devices: list,
                rules: str, every: int, overwrite: bool, log: Callable[[str], None]
                ) -> tuple[Plan, dict, np.ndarray]:
    """Creates, replaces or resumes the store (under :func:`results.exclusive`):
    the plan (a resumed store's), every compile group's layout, the lanes done."""
    existing = results.open_to_resume(path, config_json, RESUMABLE, defaults=cfg.base_config().to_dict(),
                                      overwrite=overwrite)
    if existing is None and overwrite:
        checkpoints.clear_all(path)  # of the replaced store
    checkpoints.clear_beyond(path, jax.process_count())  # of a run with more processes
    stored = results.stored_layout(existing) if existing is not None else None
    if stored is not None:
        plan, layouts_ = _resume_plan(config, memory_gb, devices, stored, plan, rules, log)
    else:
        layouts_ = _group_layouts(plan, make_mesh(plan, devices), rules, every)
    record = _layout_record(layouts_, devices[0].platform, rules)
    done = results.prepare(path, existing, config_json, lambda: _empty_results(config, config_json, plan, record),
                           len(plan.chunks[0].lanes), RESUMABLE, log, layout=record, run=environment(config, record),
                           replace=overwrite)
    return plan, layouts_, done


def _open_store_first(setup: Callable[[], tuple], path: str) -> int:
    """Several processes (``jax.distributed``): process 0 creates or resumes the store
    (:func:`_open_store`) while the others wait. Returns the run's id, process 0's
    (the keys of :class:`_Peers`); raises on every process if process 0 failed."""
    error, run_id = None, 0
    if jax.process_index() == 0:
        try:
            setup()
            run_id = 1 + int.from_bytes(os.urandom(3), "little")  # 0: the store could not be opened
        except BaseException as e:  # (anything: the others are waiting for the broadcast)
            error = e
    run_id = int(multihost_utils.broadcast_one_to_all(np.int32(run_id)))
    if error is not None:
        raise error
    if not run_id:
        raise ConfigError(f"process 0 could not open {path}; see its error")
    return run_id


def _take_share(config: Any, config_json: str, path: str, plan: Plan, memory_gb: float, devices: list, rules: str,
                log: Callable[[str], None]) -> tuple[Plan, dict, np.ndarray]:
    """Several processes, once process 0 has opened the store: the plan and layouts
    recorded in it, with this process's share of the lanes
    (:func:`grok_jax.plan.process_chunks`), and the lanes done."""
    me = jax.process_index()
    existing = results.open_to_resume(path, config_json, RESUMABLE, defaults=cfg.base_config().to_dict())
    quiet = log if me == 0 else (lambda line: None)  # process 0 said it already
    plan, layouts_ = _resume_plan(config, memory_gb, devices, results.stored_layout(existing), plan, rules, quiet)
    per_device = {k: layout.lanes_per_device for k, layout in layouts_.items()}
    mine = process_chunks(plan, per_device, results.lane_chunk(path), me, jax.process_count())
    return plan._replace(chunks=mine), layouts_, results.committed(existing)


def check_checkpointing(config: Any, steps: int, minutes: float) -> int:
    """Logged blocks between checkpoints for ``checkpoint_steps`` (0: by time only);
    ``ConfigError`` for values no sweep can use."""
    if not (isinstance(minutes, (int, float)) and minutes > 0):
        raise ConfigError(f"--checkpoint_minutes={minutes} must be a number of minutes > 0")
    if not isinstance(steps, int) or steps < 0 or steps % config.log_every:
        raise ConfigError(f"--checkpoint_steps={steps} must be 0 (by time only) or a positive multiple of "
                          f"log_every={config.log_every}")
    return steps // config.log_every


def environment(config: Any, layout: dict) -> dict:
    """What ran: versions, backend, devices, processes, precision, layout (JSON-able)."""
    import jaxlib

    from grok_jax import __version__

    device = jax.local_devices()[0]
    return {"grok_jax": __version__, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "backend": device.platform, "device_kind": device.device_kind,
            "local_devices": jax.local_device_count(), "devices": jax.device_count(),
            "process_count": jax.process_count(), "matmul_precision": config.matmul_precision,
            "x64": bool(jax.config.jax_enable_x64), "layout": layout,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _group_layouts(plan: Plan, mesh: Mesh, rules: str, every: int) -> dict[tuple[int, int], layouts.Layout]:
    """Every compile group's layout, ``(static group, n_max) -> Layout``."""
    return {(c.group, c.n_max): chunk_layout(plan.config(c), c.n_max, len(c.lanes), mesh, rules, every)
            for c in plan.chunks}


def _layout_record(group_layouts: dict, platform: str, rules: str) -> dict:
    """The platform, the layout rules and every compile group's layout, as the store
    records them: ``groups`` lists each compile group's static group, padded size
    and layout."""
    return {"platform": platform, "rules": rules,
            "groups": [{"group": g, "n_max": n, **layout._asdict()} for (g, n), layout in sorted(group_layouts.items())]}


def _resume_plan(config: Any, memory_gb: float, devices: list, stored: dict, plan: Plan, rules: str,
                 log: Callable[[str], None]) -> tuple[Plan, dict]:
    """The plan of a resumed store and its layouts: its recorded compile groups, lanes
    per device and segments (a store of an earlier version: its whole chunks)."""
    platform = devices[0].platform
    if stored["platform"] != platform:
        raise ConfigError(f"the store was written on {stored['platform']}; resuming it on {platform} would mix "
                          "layouts (rounding); resume on that platform, or choose another --out")
    stored_rules = stored.get("rules", layout_rules(platform))
    if stored_rules != rules:
        raise ConfigError(f"the store was written with the {stored_rules} layout rules, this run asks for the "
                          f"{rules} ones; resume it {'with' if stored_rules == 'accelerator' else 'without'} "
                          "--accelerator_layout, or choose another --out")
    groups = {(g["group"], g["n_max"]): g["lanes_per_device"] for g in stored["groups"]}
    resumed = make_plan(config, memory_gb, len(devices), platform=rules, groups=groups)
    found = {}
    for g in stored["groups"]:
        group_config = resumed.groups[g["group"]].config
        segment = g.get("segment", group_config.steps // group_config.log_every)
        layout = layouts.layout(rules, g["n_max"], group_config.width, group_config.p, g["lanes_per_device"],
                                group_config.batchnorm, group_config.batch_size, segment)
        now = {"group": g["group"], "n_max": g["n_max"], **layout._asdict()}
        if now != {"segment": segment, **g}:  # the rules of layouts.py changed since the store was written
            raise ConfigError(f"the store was written in layout {g}, this version would use {now}; finish it "
                              "with the version that wrote it, or choose another --out")
        found[g["group"], g["n_max"]] = layout
    if [(c.group, c.n_max, c.lanes.tolist()) for c in resumed.chunks] != [
            (c.group, c.n_max, c.lanes.tolist()) for c in plan.chunks]:
        log("resuming in the store's layout: " + ", ".join(
            f"n_train padded to {n} with {k} lane(s) per device" for (_, n), k in sorted(groups.items())))
    return resumed, found


class _Stop:
    """Set by SIGTERM while a sweep runs (see :func:`_sigterm_stops`)."""

    requested = False


@contextlib.contextmanager
def _sigterm_stops() -> Iterator[None]:
    """While a sweep writes its store, SIGTERM asks it to stop at the next safe point
    (:class:`_Run`) instead of killing it; elsewhere, and outside the main thread,
    SIGTERM keeps its handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _Stop.requested = False
    previous = signal.signal(signal.SIGTERM, lambda *_: setattr(_Stop, "requested", True))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _Stop.requested = False


class _Peers:
    """The processes of a sweep (``jax.distributed``), telling each other of a stop
    and of their end through the key-value store of JAX's coordination service. A
    SIGTERM or a failure of any process stops every process at its next safe point
    (each with its own checkpoint), and none returns before all have ended. Without a
    ``run_id`` (one process), only its own SIGTERM. (JAX has no public API for the
    store; orbax reaches it the same way.)"""

    POLL_SECONDS = 1.0  # how often a process that has ended asks whether the others have

    def __init__(self, run_id: int | None = None, log: Callable[[str], None] = print) -> None:
        self.count = jax.process_count() if run_id is not None else 1
        self.me, self.log = jax.process_index(), log
        self.prefix = f"grok_jax/{run_id}/"  # a run's own keys: run_id is process 0's, broadcast
        self.stopped_by: int | None = None  # the process whose stop stops this one
        self.reason = ""  # what stopped it: "SIGTERM", "a failure", "Ctrl-C"
        if self.count > 1 and self._client() is None:
            raise ConfigError("several JAX processes but no jax.distributed client: start them with "
                              "--coordinator_address, --num_processes and --process_id, or --distributed")

    @staticmethod
    def _client() -> Any:
        return jax._src.distributed.global_state.client

    def _entries(self, kind: str) -> dict[int, str]:
        found = self._client().key_value_dir_get(self.prefix + kind + "/")
        return {int(key.rsplit("/", 1)[1]): value for key, value in found}

    def _announce(self, reason: str) -> None:
        self.stopped_by, self.reason = self.me, reason
        if self.count > 1:
            self._client().key_value_set(f"{self.prefix}stop/{self.me}", reason)

    def stop_requested(self) -> bool:
        """Whether this process got SIGTERM or another process stopped (one RPC with
        several processes: asked once per segment boundary and chunk)."""
        if self.stopped_by is None and _Stop.requested:
            self._announce("SIGTERM")
        elif self.stopped_by is None and self.count > 1:
            stops = self._entries("stop")
            if stops:
                self.stopped_by = min(stops)
                self.reason = stops[self.stopped_by]
        return self.stopped_by is not None

    def why(self) -> str:
        """What stopped this process, for its message: ``SIGTERM``, or e.g.
        ``SIGTERM of process 1``."""
        return self.reason + ("" if self.stopped_by == self.me else f" of process {self.stopped_by}")

    def _wait(self, status: str) -> dict[int, str]:
        """Marks this process's end (done, stopped or failed) and waits for every
        other's: ``{process: status}``. A SIGTERM while waiting stops the others."""
        if self.count == 1:
            return {self.me: status}
        self._client().key_value_set(f"{self.prefix}end/{self.me}", status)
        ends = self._entries("end")
        if len(ends) < self.count:
            waiting = sorted(set(range(self.count)) - set(ends))
            self.log(f"process {self.me}: waiting for process(es) {', '.join(map(str, waiting))} to end")
        while len(ends) < self.count:
            time.sleep(self.POLL_SECONDS)
            self.stop_requested()
            ends = self._entries("end")
        return ends

    def finished(self, path: str) -> None:
        """This process's share is committed; returns once every process's is.
        :class:`Preempted` when another stopped, :class:`PeerFailed` when one failed."""
        try:
            ends = self._wait("done")
        except KeyboardInterrupt:  # the others are told, and stop
            with contextlib.suppress(Exception):
                self._announce("Ctrl-C")
            raise
        _raise_if_failed(ends, f"the lanes of this process are committed to {path}: run the same command again "
                               "to resume")
        if "stopped" in ends.values():
            self.stop_requested()
            raise Preempted(f"stopped by {self.why()} after the lanes of this process were committed to {path}: "
                            "run the same command again to resume")

    def stopped(self, error: BaseException, path: str) -> None:
        """This process ends with ``error``: the others are told (a failure stops them
        too) and waited for, at best effort; :class:`PeerFailed` (from ``error``)
        when this one was stopped (:class:`Preempted`) and another failed."""
        preempted, ends = isinstance(error, Preempted), {}
        # Each call on its own: the coordination service may be gone, and the real error must stay.
        if self.stopped_by is None:
            with contextlib.suppress(Exception):
                self._announce("Ctrl-C" if isinstance(error, KeyboardInterrupt) else "a failure")
        with contextlib.suppress(Exception):
            ends = self._wait("stopped" if preempted else "failed")
        if preempted:
            _raise_if_failed(ends, str(error), error)


def _raise_if_failed(ends: dict[int, str], then: str, cause: BaseException | None = None) -> None:
    """:class:`PeerFailed` naming the first process whose end (``{process: status}``)
    is a failure, followed by ``then``."""
    failed = sorted(k for k, v in ends.items() if v == "failed")
    if failed:
        raise PeerFailed(f"process {failed[0]} failed (see its error); {then}") from cause


class _Run:
    """One sweep's chunks, trained one after another while the host stores the last."""

    def __init__(self, config: Any, plan: Plan, mesh: Mesh, group_layouts: dict, rules: str, progress: bool,
                 log: Callable[[str], None], path: str | None = None,
                 checkpoint_minutes: float = CHECKPOINT_MINUTES, every_boundary: bool = False,
                 n_mins: dict | None = None, peers: _Peers | None = None):
        self.config, self.plan, self.mesh, self.layouts, self.log = config, plan, mesh, group_layouts, log
        self.rules, self.progress, self.path = rules, progress, path
        self.checkpoint_seconds, self.every_boundary = 60.0 * checkpoint_minutes, every_boundary
        self.inflight = checkpoints.directory(path, jax.process_index()) if path else None
        self.lanes_sharding = NamedSharding(mesh, PartitionSpec("lanes"))
        self.collected: list[tuple] = []
        self.n_mins = n_mins or {(c.group, c.n_max): plan.n_min(c) for c in plan.chunks}
        self.done = np.zeros(plan.n_lanes, bool)
        self.peers = peers or _Peers()  # (without a store: this process alone)

    def sweep(self, config_json: str, done: np.ndarray):
        """Runs the lanes not ``done``: into the store at ``self.path``, or, without
        one, returns the results."""
        config, plan = self.config, self.plan
        self.done = done
        _print_plan(config, plan, list(self.mesh.devices.flat), done, self.log)
        pending = [c for c in plan.chunks if not done[c.lanes[:c.count]].all()]
        self.bar = _progress_bar(len(pending) * config.steps, self.progress)
        try:
            self._run_chunks(pending)
        finally:
            self.bar.close()
        if self.inflight:
            checkpoints.clear(self.inflight)  # (a stale one, e.g. of a chunk finished by another run)
        if self.path:
            return None
        record = _layout_record(self.layouts, self.mesh.devices.flat[0].platform, self.rules)
        flat = _empty_results(config, config_json, plan, record)
        for lanes, out_log, out_final, phase in self.collected:
            results.fill(flat, lanes, out_log, out_final, phase)
        return results.to_grid(flat)

    def _run_chunks(self, pending: list[Chunk]) -> None:
        """Trains the pending chunks; each is finished on the host while the next
        trains. SIGTERM (of any process): the chunk in flight is checkpointed at its
        next segment boundary (a chunk of one segment is finished), then :class:`Preempted`."""
        previous = None  # (chunk, its outputs, the progress bar's count when it is done)
        for i, c in enumerate(pending):
            if self.peers.stop_requested():
                break
            self.bar.set_description(f"chunk {i + 1}/{len(pending)}")
            outputs = self._train(c, lambda: self._finish(previous))  # finishes `previous` once it has dispatched
            previous = (c, outputs, self.config.steps * (i + 1))
        self._finish(previous)
        if self.peers.stopped_by is not None:
            raise Preempted(f"stopped by {self.peers.why()} between chunks; {self._committed()}: run the same "
                            "command again to resume")

    def _finish(self, previous: tuple | None) -> None:
        """Host side of a finished chunk: drop the padding and the lanes committed
        before (a chunk may hold some when an earlier run stopped inside it: they
        are not rewritten), classify, store."""
        if previous is None:
            return
        chunk, outputs, count = previous
        jax.block_until_ready(outputs)
        self.bar.update(count - self.bar.n)
        new = np.flatnonzero(~self.done[chunk.lanes[:chunk.count]])
        lanes = chunk.lanes[new]
        out_log, out_final = jax.tree.map(lambda v: np.asarray(v)[new], outputs)
        variables = out_final.pop("variables")
        out_final.update(flat_variables(variables))
        phase = phases.classify_log(out_log, self.plan.xi[lanes])
        steps = np.arange(0, self.config.steps + 1, self.config.log_every)
        out_final["grok_step"] = phases.grokking_step(out_log["test_acc"], steps).astype(np.float32)
        out_final["unlearn_step"] = phases.unlearning_step(out_log["corrupt_acc"], out_log["clean_acc"], steps
                                                           ).astype(np.float32)
        if self.path:
            results.write(self.path, lanes, out_log, out_final, phase)
        else:
            self.collected.append((lanes, out_log, out_final, phase))
        self.done[lanes] = True

    def _program(self, c: Chunk, part: tuple, *args: Any) -> Callable:
        group_config, layout = self.plan.config(c), self.layouts[c.group, c.n_max]
        compiled, seconds, cached = program(part, group_config, c.n_max, layout, self.mesh,
                                            self.n_mins[c.group, c.n_max], *args)
        if seconds:
            wide = f"; readout product {layout.columns} columns wide" if layout.columns > group_config.p else ""
            how = "loaded from the compilation cache" if cached else "compiled"
            what = "" if part == ("train",) else f" {part[0]}" + (f" of {part[1]} logged blocks" if len(part) > 1
                                                                   else "")
            self.log(f"{how}{what} in {seconds:.1f} s ({_group_name(self.plan, c.group)}n_train padded to "
                     f"{c.n_max}{wide})")
        return compiled

    def _train(self, c: Chunk, dispatched: Callable[[], None]) -> tuple:
        """Dispatches chunk ``c`` (its programs run asynchronously), calls
        ``dispatched`` once they run, and returns its outputs (not waited for)."""
        lanes = chunk_lanes(self.plan, c, self.mesh)
        n_logs = self.config.steps // self.config.log_every
        segment = self.layouts[c.group, c.n_max].segment
        if segment >= n_logs:  # one program call: nothing to checkpoint
            outputs = self._program(c, ("train",), lanes)(lanes)
            dispatched()
            return outputs
        start = self._program(c, ("start",), lanes)
        key = self._chunk_key(c)
        restored = checkpoints.restore(self.inflight, key, start.out_info) if self.inflight else None
        if restored is not None:
            block, state = restored[0], jax.device_put(restored[1], self.lanes_sharding)
            self.log(f"resuming chunk of lanes {c.lanes[0]}-{c.lanes[c.count - 1]} at step "
                     f"{block * self.config.log_every} from its checkpoint")
            self.bar.update(block * self.config.log_every)
        else:
            block, state = 0, start(lanes)
        dispatched()
        saved_at = time.monotonic()
        while block < n_logs:
            blocks = min(segment, n_logs - block)
            state = self._dispatch_segment(c, lanes, state, block, blocks)
            block += blocks
            if block == n_logs:
                break
            jax.block_until_ready(state)
            self.bar.update(blocks * self.config.log_every)
            stop = self.peers.stop_requested()
            if self.inflight and (stop or self.every_boundary
                                  or time.monotonic() - saved_at >= self.checkpoint_seconds):
                self._save(key, block, state)
                saved_at = time.monotonic()
            if stop:
                raise Preempted(f"stopped by {self.peers.why()} at step {block * self.config.log_every} of a chunk, "
                                f"which is checkpointed; {self._committed()}: run the same command again to resume")
        return self._program(c, ("finish",), lanes, state)(lanes, state)

    def _save(self, key: dict, block: int, state: Any) -> None:
        """The in-flight checkpoint; a failed write (a full disk) is a :class:`StoreWriteError`."""
        try:
            checkpoints.save(self.inflight, key, block, state)
        except OSError as e:
            raise StoreWriteError(f"cannot write the in-flight checkpoint {self.inflight}: {e.strerror or e}; "
                                  f"{self._committed()}: run the same command again to resume") from e

    def _committed(self) -> str:
        """How many lanes are committed, for a message: of the store, or with several
        processes (which do not know each other's commits), of this process's share."""
        if self.peers.count == 1:
            return f"{int(self.done.sum())} lanes are committed to {self.path}"
        mine = np.concatenate([c.lanes[:c.count] for c in self.plan.chunks])
        return f"{int(self.done[mine].sum())} of the {len(mine)} lanes of this process are committed to {self.path}"

    def _dispatch_segment(self, c: Chunk, lanes: Lane, state: Any, block: int, blocks: int) -> Any:
        """Dispatches logged blocks ``block`` to ``block + blocks`` of chunk ``c``."""
        first = jax.device_put(np.int32(block), NamedSharding(self.mesh, PartitionSpec()))
        return self._program(c, ("advance", blocks), lanes, state, first)(lanes, state, first)

    def _chunk_key(self, c: Chunk) -> dict:
        """What identifies a chunk's checkpoint: its lanes, group, layout and config."""
        return {"lanes": c.lanes.tolist(), "group": c.group, "n_max": c.n_max,
                "layout": self.layouts[c.group, c.n_max]._asdict(), "config": self.config.to_json(sort_keys=True)}


def _empty_results(config: Any, config_json: str, plan: Plan, record: dict):
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
    flat.attrs["layout"] = json.dumps(record, sort_keys=True)
    return flat


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


