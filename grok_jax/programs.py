"""Compiled chunk programs and their caches.

A chunk program is ``jit(shard_map(vmap(part)))`` of one part of a run
(:class:`grok_jax.train.Run`, or the whole ``train``) for the static settings of a
static group, a padded training-set size and a :class:`~grok_jax.layouts.Layout`.
Each is compiled once per process (:data:`_PROGRAMS`) and, with
:func:`use_compilation_cache`, once per machine (JAX's persistent cache).
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, NamedTuple

import jax
import ml_collections
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from grok_jax import config as cfg
from grok_jax import layouts
from grok_jax.train import Lane, make_run, make_train


class ProgramKey(NamedTuple):
    """What a compiled chunk program depends on (the cache key of :data:`_PROGRAMS`)."""

    static: Any  # the static config
    n_max: int
    lanes: int  # lanes per call
    devices: tuple
    layout: layouts.Layout
    n_min: int  # smallest training set of the compile group (see make_run)
    part: tuple  # ("train",), ("start",), ("advance", blocks) or ("finish",): see grok_jax.train.Run


_PROGRAMS: dict[ProgramKey, Callable] = {}


class Compiled(NamedTuple):
    """A compiled program, the seconds it took now (0: compiled before in this
    process), and whether it came from the persistent compilation cache."""

    fn: Callable
    seconds: float
    cached: bool


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


def program(part: tuple, static: ml_collections.FrozenConfigDict, n_max: int, n_min: int, layout: layouts.Layout,
            mesh: Mesh, *args: Any) -> Compiled:
    """The compiled ``jit(shard_map(vmap(f)))`` (without ``vmap`` for one lane per
    device) of one ``part`` of a run (``("train",)``: the whole run) for the static
    settings ``static`` (:func:`grok_jax.config.static_config` of a static group's
    config), these shapes and ``layout``, lowered for ``args`` (the lanes, then the
    state and the first block where the part takes them).

    Example:
      >>> import numpy as np
      >>> from grok_jax.plan import Resources, make_plan
      >>> config = cfg.load_config("tiny")
      >>> plan = make_plan(config, Resources(lanes_per_device=8))
      >>> chunk = plan.chunks[0]                            # all 8 lanes
      >>> lanes = jax.tree.map(lambda a: a[chunk.lanes], plan.lanes)
      >>> mesh = Mesh(np.asarray(jax.devices()[:1]), ("lanes",))
      >>> fn = program(("train",), cfg.static_config(config), chunk.n_max, chunk.n_min, chunk.layout,
      ...              mesh, lanes).fn
      >>> log, final = fn(lanes)
      >>> log["test_acc"].shape                 # (lanes, logged steps)
      (8, 4)
    """
    n_min = n_min if static.batch_size else 1  # only mini-batches use it
    key = ProgramKey(static, n_max, len(args[0].seed), tuple(mesh.devices.flat), layout, n_min, part)
    if key in _PROGRAMS:
        return Compiled(_PROGRAMS[key], 0.0, False)
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
    return Compiled(_PROGRAMS[key], time.perf_counter() - start, _CacheHits.count > hits)


def compiled_train(config: ml_collections.ConfigDict, chunk: Any, lanes: Lane, mesh: Mesh) -> Compiled:
    """:func:`program` of a whole run of a plan's ``chunk`` in one call (for benchmarks)."""
    layout = chunk.layout._replace(segment=config.steps // config.log_every)
    return program(("train",), cfg.static_config(config), chunk.n_max, chunk.n_min, layout, mesh, lanes)


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
