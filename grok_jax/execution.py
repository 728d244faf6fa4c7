"""The sweep: a plan made once (or read from the store), its chunks run, its results.

``run_sweep`` checks the config, makes the plan (:mod:`grok_jax.plan`) or reads
the one stored with the results, grows the store when the grid only adds runs
(:mod:`grok_jax.growth`), and trains the pending chunks (:mod:`grok_jax.runner`)
with compiled programs (:mod:`grok_jax.programs`). With several processes
(``jax.distributed``) process 0 opens the store while the others wait, then every
process takes its share of the stored plan, and a SIGTERM or failure of one stops
them all (:mod:`grok_jax.peers`).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from typing import Any, Callable, Iterator, NamedTuple

import jax
import ml_collections
import numpy as np

from grok_jax import checkpoints, growth, layouts, refine, results
from grok_jax import config as cfg
from grok_jax.errors import ConfigError, StoreWriteError
from grok_jax.peers import Peers, open_store_first, sigterm_stops
from grok_jax.plan import (
    Plan,
    Resources,
    check_fits,
    check_memory,
    check_resources,
    flops_per_lane,
    grow_plan,
    make_plan,
)
from grok_jax.refine import Refinement
from grok_jax.runner import CHECKPOINT_MINUTES, Runner, Settings, print_plan


class Options(NamedTuple):
    """How a sweep runs; none of it changes the numbers."""

    memory_gb: float = 4.0  # budget per device for a chunk of lanes (a new plan's), GiB
    lanes_per_device: int | None = None  # at most, in a new plan (None: the platform's default)
    checkpoint_steps: int = 0  # checkpoint a long chunk every this many steps (0: by time)
    checkpoint_minutes: float = CHECKPOINT_MINUTES  # ... and at most this often
    overwrite: bool = False  # replace the store, whatever it holds
    repair: bool = False  # recompute the lanes of damaged chunks of the store (results.repair)
    accelerator_layout: bool = False  # the GPU/TPU layout rules on any platform
    keep_state: bool = True  # store each lane's final optimizer state (2× the parameters), to continue it
    refine: Refinement = Refinement()  # run a coarse grid, then only where phases change (grok_jax.refine)
    progress: bool = True  # a progress bar on stderr
    log: Callable[[str], None] = print
    parameters: bool = True  # return the final parameters too


def run_sweep(config: ml_collections.ConfigDict, out: str | None = None, options: Options | None = None,
              **fields: Any):
    """Runs every lane of the grid; returns the results as an ``xarray.Dataset``
    (without the final parameters with ``out`` and ``parameters=False``: they stay
    in the store, see :func:`grok_jax.results.load_results`). ``fields`` set fields
    of :class:`Options` one by one.

    A new plan's chunks hold, per device, as many lanes as fit in ``memory_gb`` of
    its memory, and at most ``lanes_per_device`` (default:
    :func:`grok_jax.layouts.default_lanes_per_device`, 1 on CPU, 4 for tiny
    problems, unlimited on accelerators). ``accelerator_layout`` takes the layout
    rules of GPUs and TPUs on any platform (to test that path on a CPU).

    With ``out``, results go to the zarr store ``out/results.zarr`` chunk by chunk
    as they finish, with the plan. If that store exists, the same grid resumes it in
    its stored plan, whatever the options now (a stored chunk that no longer fits
    ``memory_gb`` is an error with the figure), and a grid that only adds runs grows
    it (:mod:`grok_jax.growth`); another config is an error naming the differing
    field and nothing is touched, unless ``overwrite``: then it is replaced. One run
    at a time writes a store (:func:`grok_jax.results.exclusive`).

    A long chunk runs in segments (:func:`grok_jax.layouts.segment_blocks`); its
    state is checkpointed (:mod:`grok_jax.checkpoints`) at the first segment
    boundary after each ``checkpoint_minutes``, or at every boundary with
    ``checkpoint_steps`` (then the segment length of a new plan; a multiple of
    ``log_every``), and restored when the same sweep runs again. On SIGTERM the
    sweep checkpoints at the next boundary and raises
    :class:`~grok_jax.errors.Preempted` (see :mod:`grok_jax.peers` for several
    processes).

    ``refine=Refinement(levels)`` runs a coarse grid first and then, round by
    round, only the cells between neighbours that differ; the others are inferred
    (:mod:`grok_jax.refine`). ``Refinement(0)`` on a refined store runs the cells
    not run yet.

    Example:
      >>> ds = run_sweep(cfg.load_config("tiny"), out="results/tiny", progress=False)
      grid seed[2] × wd[2] × xi[2] = 8 lanes; p=11 width=32 steps=60; 1 compile group(s) ...
      >>> ds.phase.dims                          # phase codes of every run
      ('seed', 'wd', 'xi')
      >>> again = run_sweep(cfg.load_config("tiny"), out="results/tiny", progress=False)
      resuming results/tiny/results.zarr in its stored plan: 8 of 8 lanes done
      ...
    """
    options = (options or Options())._replace(**fields)
    cfg.check_config(config)  # the API's entry point; the command line checks before it calls sweep
    refine.check(options.refine, config, jax.process_count(), out)
    config = refine.with_extra_seeds(config, options.refine)
    check_resources(options.memory_gb, options.lanes_per_device)
    check_fits(config, options.memory_gb)
    check_checkpointing(config, options.checkpoint_steps, options.checkpoint_minutes)
    return sweep(config, out, options)


def sweep(config: ml_collections.ConfigDict, out: str | None, options: Options):
    """:func:`run_sweep` of a checked config and options."""
    devices = jax.local_devices()
    settings = Settings(options.progress, options.log, options.checkpoint_minutes, options.checkpoint_steps > 0)
    if not out:
        plan = make_plan(config, _resources(config, options, devices))
        print_plan(plan, plan.chunks, len(devices), np.zeros(plan.n_lanes, bool), options.log)
        collected = Runner(plan, devices, settings).run(plan.chunks, np.zeros(plan.n_lanes, bool))
        flat = results.new_results(config.to_json(sort_keys=True), plan)
        for lanes, log, final, phase in collected:
            results.fill(flat, lanes, log, final, phase)
        return results.to_grid(flat)
    path = results.store_path(out)
    me, count = jax.process_index(), jax.process_count()
    with results.exclusive(path) if me == 0 else contextlib.nullcontext(), sigterm_stops():
        setup = lambda: _open_store(config, path, options, devices)  # noqa: E731
        if count == 1:
            (plan, done), peers = setup(), Peers(log=options.log)
        else:
            peers = Peers(open_store_first(setup, path), options.log)
        try:  # from here on, every process ends in peers.stopped or peers.finished
            if count > 1:
                plan, done = _read_store(path, options.memory_gb)
            rounds = _Rounds(plan, options, path, done, len(devices))
            for i, (scheduled, before) in enumerate(rounds.schedules()):  # one, without refinement
                chunks = plan.share(me, count, scheduled & ~before, rounds.recut)
                if i == 0 and not rounds.rule.active:
                    print_plan(plan, chunks, len(devices), before, options.log if me == 0 else _quiet)
                Runner(plan, devices, settings, path, peers).run(chunks, before)
        except BaseException as e:
            peers.stopped(e)
            raise
        peers.finished(path)  # every process's lanes are committed
        if me == 0:
            checkpoints.remove_directory(path)
            results.drop_start(path)  # (of a continuation for more steps, finished)
            rounds.finish()
    return results.load_results(path, options.parameters)


def _flags(rule: Refinement) -> str:
    return f"--refine={rule.levels} --refine_seeds={rule.seeds} --refine_accuracy={rule.accuracy:g}"


class _Rounds:
    """The rounds of a sweep on a store: one, of every lane, without refinement;
    with it, each round's lanes chosen (:func:`refine.next_round`) and marked
    ``scheduled`` in the store before they run, until none is left (a round cut
    short runs first when the sweep resumes)."""

    def __init__(self, plan: Plan, options: Options, path: str, done: np.ndarray, devices: int):
        self.plan, self.rule, self.path, self.log = plan, options.refine, path, options.log
        self.before, self.devices, self.start = done, devices, time.perf_counter()
        self.base = refine.base_lanes(plan.axes, self.rule)
        runs = json.loads(results.open_store(path).attrs.get("runs", "[]"))  # this one's too
        rules = [Refinement(**run["refine"]) for run in runs if "refine" in run]
        # A store that a refined sweep wrote to: its lanes ran in rounds, not in the plan's chunks (Plan.share)
        self.recut = any(rule.active for rule in rules)
        earlier = [rule for rule in rules[:-1] if rule.active]
        if self.rule.active and earlier and earlier[-1] != self.rule:  # e.g. a default changed since
            self.log(f"refining with {_flags(self.rule)}; this store was refined with {_flags(earlier[-1])}: "
                     "the rounds from here follow the new setting")

    def schedules(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Each round's lanes scheduled so far and the lanes done before it."""
        if not self.rule.active:
            yield np.ones(self.plan.n_lanes, bool), self.before
            return
        print_plan(self.plan, self.plan.chunks, self.devices, self.before, self.log)  # the full grid
        lanes = self._lanes()
        if lanes["scheduled"].all():
            self.log("refining: every lane of the store is scheduled already (it was not refined): "
                     "--refine changes nothing here")
        pending = None
        for count in itertools.count(1):
            scheduled = lanes["scheduled"]
            if not (scheduled & ~lanes["done"]).any():
                step = refine.next_round(self.plan.axes, lanes, self.rule)
                if not step.run.any():
                    self.last = lanes, step  # the complete refinement, for finish
                    return
                results.schedule(self.path, np.flatnonzero(step.run))
                scheduled = scheduled | step.run
                self.log(f"refinement round {count}: {int(step.run.sum())} lane(s) to run; "
                         f"{int(scheduled.sum())} of {self.plan.n_lanes} scheduled so far")
            elif pending is not None and np.array_equal(pending, scheduled & ~lanes["done"]):
                raise StoreWriteError(f"the lanes of a round did not commit to {self.path}; run the same command "
                                      "again, or --repair it")
            pending = scheduled & ~lanes["done"]
            yield scheduled, lanes["done"]
            lanes = self._lanes()

    def _lanes(self) -> dict[str, np.ndarray]:
        """What refinement reads of the store: per lane."""
        ds = results.open_store(self.path)
        with results.readable(self.path):
            lanes = {k: ds[k].values for k in ("phase", "scheduled")}
            lanes.update({k: ds[k][:, -1].values for k in refine.ACCURACIES})
        lanes["done"] = results.committed(ds)
        return lanes

    def finish(self) -> None:
        """Records the inferred lanes (none without refinement) and, after a
        refinement, says what it saved against the full grid (its own seeds)."""
        if not self.rule.active:  # every lane ran: a refined store filled in infers none
            if results.open_store(self.path)["inferred"].values.any():
                none = np.zeros(self.plan.n_lanes, bool)
                results.record_inferred(self.path, none, np.full(len(none), -1), ~none)
            return
        lanes, step = self.last
        results.record_inferred(self.path, step.inferred, step.phase, lanes["done"])
        work, ran = _lane_flops(self.plan) * self.base, lanes["done"] & self.base
        now = ran & ~self.before
        seconds = time.perf_counter() - self.start
        saved = (f"; about {seconds * work[~ran].sum() / work[now].sum():.0f} s of training saved at this run's "
                 "rate" if now.any() and work[~ran].any() else "")
        self.log(f"refined: {int(ran.sum())} of {int(self.base.sum())} lanes run "
                 f"({work[ran].sum() / work.sum():.0%} of the full grid's work), {int(step.inferred.sum())} "
                 f"inferred{saved}")


def _lane_flops(plan: Plan) -> np.ndarray:
    """Each lane's training work (matmul FLOPs, :func:`flops_per_lane`)."""
    work = np.zeros(plan.n_lanes)
    for c in plan.chunks:
        work[c.real] = flops_per_lane(plan.config(c), c.n_max)
    return work


def _quiet(line: str) -> None:
    """Processes other than 0 say nothing of the plan (process 0 said it)."""


def _resources(config: Any, options: Options, devices: list) -> Resources:
    """What a new plan is made for: this process's devices, the options."""
    platform = devices[0].platform
    return Resources(options.memory_gb, options.lanes_per_device, len(devices), platform,
                     layouts.layout_rules(platform, options.accelerator_layout),
                     options.checkpoint_steps // config.log_every, options.keep_state)


def _open_store(config: ml_collections.ConfigDict, path: str, options: Options, devices: list
                ) -> tuple[Plan, np.ndarray]:
    """Creates, replaces, resumes or grows the store (under
    :func:`results.exclusive`): its plan and the lanes committed."""
    log, config_json = options.log, config.to_json(sort_keys=True)
    results.remove_leftovers(path, log)
    existing = None if options.overwrite else results.open_store(path)
    resources = _resources(config, options, devices)
    if existing is None:
        if options.overwrite:
            checkpoints.clear_all(path)  # of the replaced store
        plan = make_plan(config, resources)
        flat = results.new_results(config_json, plan)
        flat["scheduled"].values[:] = not options.refine.active  # a refined sweep schedules round by round
        flat.attrs["runs"] = json.dumps([_environment(config, plan, options)], sort_keys=True)
        results.create(path, flat, plan.store_chunk, log)
        return plan, flat["done"].values
    stored_config = {**cfg.base_config().to_dict(), **json.loads(existing.attrs["config"])}
    plan = results.stored_plan(existing, path)
    change = growth.compare(stored_config, plan.axes, config, path)
    _check_platform(plan, resources, path)
    checkpoints.clear_beyond(path, jax.process_count())  # of a run with more processes
    if options.repair:
        results.repair(path, log)
    if change.grows:
        return _grow(config, path, existing, plan, change, options, resources)
    done = results.committed(existing, log)
    check_memory(plan, plan.share(0, 1, ~done), options.memory_gb)
    results.record_run(path, existing, config_json, growth.RECORDED, _environment(config, plan, options))
    if not options.refine.active and not existing["scheduled"].values.all():
        log(f"{path} holds a refined grid: running its {int((~done).sum())} lanes not run yet")
        results.schedule(path, np.arange(plan.n_lanes))
    log(f"resuming {path} in its stored plan: {int(done.sum())} of {plan.n_lanes} lanes done")
    return plan, done


def _grow(config: ml_collections.ConfigDict, path: str, existing: Any, plan: Plan, change: growth.Change,
          options: Options, resources: Resources) -> tuple[Plan, np.ndarray]:
    """Replaces the store by its grown grid (:func:`results.create` with
    ``keep_old``): the stored lanes at their new places, the new lanes to run, and
    for more steps the stored lanes to continue, from a copy of their state that the
    commits of the continued lanes do not overwrite (:data:`results.START`)."""
    log = options.log
    committed = results.committed(existing)
    if change.first_block and not committed.all() and not existing["scheduled"].values.all():
        raise ConfigError(f"{path} holds a refined grid ({int(committed.sum())} of {len(committed)} lanes run): "
                          "fill it in with its own command without --refine before continuing it for more steps")
    if change.first_block and not committed.all():
        raise ConfigError(f"{path} is not finished ({int(committed.sum())} of {len(committed)} lanes done): run "
                          "its own command to finish it before continuing it for more steps")
    if change.first_block and not plan.keep_state:
        raise ConfigError(f"{path} keeps no training state (written with --nokeep_state): its lanes cannot "
                          "continue for more steps; write to another directory, or replace it with --overwrite")
    plan = grow_plan(plan, config, resources._replace(platform=plan.platform, rules=plan.rules),
                     change.old_index, change.first_block)
    done = np.zeros(plan.n_lanes, bool)
    done[change.old_index] = committed & (change.first_block == 0)
    check_memory(plan, plan.share(0, 1, ~done), options.memory_gb)
    more = (f"; the {len(change.old_index)} stored lanes continue from step "
            f"{change.first_block * config.log_every} to {config.steps}" if change.first_block else "")
    log(f"growing {path}: {len(change.old_index)} of {plan.n_lanes} lanes stored; "
        f"{plan.n_lanes - len(change.old_index)} new lanes{more}")
    with results.readable(path):
        old = existing.load()
    flat = growth.grown_results(old, results.new_results(config.to_json(sort_keys=True), plan), change.old_index)
    flat["done"].values[:] = done
    flat["inferred"].values[:] = False  # inferred again once the grown grid is refined
    flat["phase"].values[~done] = -1
    ran = np.zeros(plan.n_lanes, bool)
    ran[change.old_index] = committed  # kept, or continued for more steps
    flat["scheduled"].values[:] = ran | (not options.refine.active)
    if change.first_block:
        results.keep_start(flat)
    results.append_run(flat, _environment(config, plan, options))
    results.create(path, flat, plan.store_chunk, log, keep_old=True)
    checkpoints.clear_all(path)  # of the store before: their lanes had other indices
    return plan, done


def _read_store(path: str, memory_gb: float) -> tuple[Plan, np.ndarray]:
    """Several processes, once process 0 has opened the store: its plan, the lanes done."""
    existing = results.open_store(path)
    if existing is None:
        raise ConfigError(f"process {jax.process_index()} does not see {path}, which process 0 opened: --out must "
                          "be on a file system every host sees")
    plan = results.stored_plan(existing, path)
    done = results.committed(existing)
    check_memory(plan, plan.share(jax.process_index(), jax.process_count(), ~done), memory_gb)
    return plan, done


def _check_platform(plan: Plan, resources: Resources, path: str) -> None:
    """A stored plan resumes only where its layouts mean the same numbers."""
    if plan.platform != resources.platform:
        raise ConfigError(f"{path} was written on {plan.platform}; resuming it on {resources.platform} would mix "
                          "layouts (rounding); resume on that platform, or choose another --out")
    if plan.rules != resources.rules:
        raise ConfigError(f"{path} was written with the {plan.rules} layout rules, this run asks for the "
                          f"{resources.rules} ones; resume it {'with' if plan.rules == 'accelerator' else 'without'} "
                          "--accelerator_layout, or choose another --out")


def check_checkpointing(config: Any, steps: int, minutes: float) -> int:
    """Logged blocks between checkpoints for ``checkpoint_steps`` (0: by time only);
    ``ConfigError`` for values no sweep can use."""
    if not (isinstance(minutes, (int, float)) and minutes > 0):
        raise ConfigError(f"--checkpoint_minutes={minutes} must be a number of minutes > 0")
    if not isinstance(steps, int) or steps < 0 or steps % config.log_every:
        raise ConfigError(f"--checkpoint_steps={steps} must be 0 (by time only) or a positive multiple of "
                          f"log_every={config.log_every}")
    return steps // config.log_every


def _environment(config: Any, plan: Plan, options: Options) -> dict:
    """What ran: versions, backend, devices, processes, precision, refinement (JSON-able)."""
    import jaxlib

    from grok_jax import __version__

    device = jax.local_devices()[0]
    return {"grok_jax": __version__, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "backend": device.platform, "device_kind": device.device_kind,
            "local_devices": jax.local_device_count(), "devices": jax.device_count(),
            "process_count": jax.process_count(), "matmul_precision": config.matmul_precision,
            "x64": bool(jax.config.jax_enable_x64), "rules": plan.rules, "refine": options.refine._asdict(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
