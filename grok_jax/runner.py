"""The chunk runner: trains a plan's chunks, in segments, checkpointed, committed.

Chunks are trained one after another while the host finishes the last (phases,
the store's commit). A long chunk runs in segments (``start``, ``advance``,
``finish`` of :func:`grok_jax.train.make_run`), checkpointed between them
(:mod:`grok_jax.checkpoints`) and stopped there by SIGTERM of any process
(:class:`grok_jax.peers.Peers`).
"""

from __future__ import annotations

import functools
import sys
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import zarr
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from grok_jax import config as cfg
from grok_jax import checkpoints, metrics, phases, results
from grok_jax.errors import Preempted, StoreWriteError
from grok_jax.models import flat_variables, get_model, nest_variables
from grok_jax.peers import Peers
from grok_jax.plan import Chunk, Plan, device_calls, flops_per_lane
from grok_jax.programs import program
from grok_jax.train import OPT_STATE, Lane, RunState, opt_state_like, pack_opt_state, unpack_opt_state

CHECKPOINT_MINUTES = 5.0  # default: a long chunk's state is saved at most this often


class Settings(NamedTuple):
    """How a sweep reports and checkpoints (not part of the plan)."""

    progress: bool = True  # a progress bar on stderr
    log: Callable[[str], None] = print
    checkpoint_minutes: float = CHECKPOINT_MINUTES  # a long chunk's state is saved at most this often
    checkpoint_every_segment: bool = False  # at every segment boundary instead (--checkpoint_steps)


class Runner:
    """One sweep's chunks on this process's ``devices``: into the store at ``path``
    or, without one, collected in memory."""

    def __init__(self, plan: Plan, devices: list, settings: Settings = Settings(), path: str | None = None,
                 peers: Peers | None = None):
        self.plan, self.devices, self.settings, self.path, self.log = plan, devices, settings, path, settings.log
        self.inflight = checkpoints.directory(path, jax.process_index()) if path else None
        self.statics = [cfg.static_config(g.config) for g in plan.groups]
        self.config = plan.groups[0].config  # steps, log_every: the same in every group
        self.collected: list[tuple] = []
        self.meshes: dict[int, Mesh] = {}
        self.done = np.zeros(plan.n_lanes, bool)
        self.peers = peers or Peers()  # (without a store: this process alone)

    def run(self, chunks: tuple[Chunk, ...], done: np.ndarray) -> list[tuple]:
        """Trains the lanes of ``chunks`` not ``done``; returns what it collected
        (without a store): ``(lanes, log, final, phase)`` per chunk."""
        self.done = done.copy()
        calls = [call for c in chunks for call in device_calls(c, len(self.devices))]
        self.bar = _progress_bar(sum(self._steps(c) for c in calls), self.settings.progress)
        try:
            self._run_calls(calls)
        finally:
            self.bar.close()
        if self.inflight:
            checkpoints.clear(self.inflight)  # (a stale one, e.g. of a chunk finished by another run)
        return self.collected

    def _run_calls(self, calls: list[Chunk]) -> None:
        """Trains the calls; each is finished on the host while the next trains.
        SIGTERM (of any process): the call in flight is checkpointed at its next
        segment boundary (a call of one segment is finished), then :class:`Preempted`."""
        previous, count = None, 0  # (call, its outputs, the progress bar's count when it is done)
        for i, c in enumerate(calls):
            if self.peers.stop_requested():
                break
            self.bar.set_description(f"chunk {i + 1}/{len(calls)}")
            outputs = self._train(c, lambda: self._finish(previous))  # finishes `previous` once it has dispatched
            count += self._steps(c)
            previous = (c, outputs, count)
        self._finish(previous)
        if self.peers.stopped_by is not None:
            raise Preempted(f"stopped by {self.peers.why()} between chunks; {self._committed()}: run the same "
                            "command again to resume")

    def _finish(self, previous: tuple | None) -> None:
        """Host side of a finished call: drop the padding and the lanes committed
        before (a chunk may hold some when an earlier run stopped inside it: they
        are not rewritten), classify, store."""
        if previous is None:
            return
        chunk, outputs, count = previous
        jax.block_until_ready(outputs)
        self.bar.update(max(0, count - self.bar.n))  # (a call restored from its checkpoint counted its steps)
        new = np.flatnonzero(~self.done[chunk.real])
        lanes = chunk.real[new]
        out_log, out_final = jax.tree.map(lambda v: np.asarray(v)[new], outputs)
        variables, opt_state = out_final.pop("variables"), out_final.pop("opt_state")
        out_final.update(flat_variables(variables))
        if self.plan.keep_state:
            out_final[OPT_STATE] = pack_opt_state(opt_state)
        steps = np.arange(0, self.config.steps + 1, self.config.log_every)
        phase, summary = phases.summarize(out_log, self.plan.xi[lanes], steps)
        out_final.update(summary)
        if self.path:
            results.write(self.path, lanes, out_log, out_final, phase)
        else:
            self.collected.append((lanes, out_log, out_final, phase))
        self.done[lanes] = True

    def _steps(self, c: Chunk) -> int:
        """Steps call ``c`` trains (a continued chunk starts at its first block)."""
        return self.config.steps - c.first_block * self.config.log_every

    def _call_mesh(self, c: Chunk) -> Mesh:
        """A 1-D mesh ``("lanes",)`` over the devices call ``c`` is sharded over."""
        n = len(c.lanes) // c.layout.lanes_per_device
        if n not in self.meshes:
            self.meshes[n] = Mesh(np.asarray(self.devices[:n]), ("lanes",))
        return self.meshes[n]

    def _program(self, c: Chunk, part: tuple, *args: Any) -> Callable:
        compiled = program(part, self.statics[c.group], c.n_max, c.n_min, c.layout, self._call_mesh(c), *args)
        if compiled.seconds:
            p = self.statics[c.group].p
            wide = f"; readout product {c.layout.columns} columns wide" if c.layout.columns > p else ""
            how = "loaded from the compilation cache" if compiled.cached else "compiled"
            what = "" if part == ("train",) else f" {part[0]}" + (f" of {part[1]} logged blocks" if len(part) > 1
                                                                   else "")
            self.log(f"{how}{what} in {compiled.seconds:.1f} s ({group_name(self.plan, c.group)}n_train padded "
                     f"to {c.n_max}{wide})")
        return compiled.fn

    def _lanes(self, c: Chunk) -> Lane:
        """The per-lane values of ``c``, sharded along the lanes over its mesh."""
        sharding = NamedSharding(self._call_mesh(c), PartitionSpec("lanes"))
        return Lane(*(jax.device_put(a[c.lanes], sharding) for a in self.plan.lanes))

    def _train(self, c: Chunk, dispatched: Callable[[], None]) -> tuple:
        """Dispatches call ``c`` (its programs run asynchronously), calls
        ``dispatched`` once they run, and returns its outputs (not waited for)."""
        lanes = self._lanes(c)
        n_logs = self.config.steps // self.config.log_every
        if c.layout.segment >= n_logs and not c.first_block:  # one program call: nothing to checkpoint
            outputs = self._program(c, ("train",), lanes)(lanes)
            dispatched()
            return outputs
        key = self._chunk_key(c)
        sharding = NamedSharding(self._call_mesh(c), PartitionSpec("lanes"))
        if c.first_block:  # more steps: from the state the store holds
            block, state = c.first_block, jax.device_put(self._stored_state(c), sharding)
            like = state
        else:
            start = self._program(c, ("start",), lanes)
            block, state, like = 0, None, start.out_info
        restored = checkpoints.restore(self.inflight, key, like) if self.inflight else None
        if restored is not None:
            block, state = restored[0], jax.device_put(restored[1], sharding)
            self.log(f"resuming chunk of lanes {c.lanes[0]}-{c.lanes[c.count - 1]} at step "
                     f"{block * self.config.log_every} from its checkpoint")
            self.bar.update((block - c.first_block) * self.config.log_every)
        elif state is None:
            state = start(lanes)
        dispatched()
        saved_at = time.monotonic()
        while block < n_logs:
            blocks = min(c.layout.segment, n_logs - block)
            state = self._dispatch_segment(c, lanes, state, block, blocks)
            block += blocks
            if block == n_logs:
                break
            jax.block_until_ready(state)
            self.bar.update(blocks * self.config.log_every)
            stop = self.peers.stop_requested()
            if self.inflight and (stop or self.settings.checkpoint_every_segment
                                  or time.monotonic() - saved_at >= 60.0 * self.settings.checkpoint_minutes):
                self._save(key, block, state)
                saved_at = time.monotonic()
            if stop:
                raise Preempted(f"stopped by {self.peers.why()} at step {block * self.config.log_every} of a chunk, "
                                f"which is checkpointed; {self._committed()}: run the same command again to resume")
        return self._program(c, ("finish",), lanes, state)(lanes, state)

    def _stored_state(self, c: Chunk) -> RunState:
        """The state the store holds for the lanes of ``c`` after its first block:
        their final variables, optimizer state and peak of a shorter run, and the
        log so far (a longer run's state at that block, as it would be)."""
        static = self.statics[c.group]
        model = get_model(static)
        shapes = jax.eval_shape(model.init, jax.random.key(0))
        group = zarr.open_group(self.path, mode="r")
        unique, where = np.unique(c.lanes, return_inverse=True)

        def read(name: str, leaf: Any = None) -> np.ndarray:
            # The lanes' values; of a leaf, its group's leading part (a static axis may widen the store's dims)
            values = group[name].oindex[unique][where]
            return values if leaf is None else values[(slice(None), *map(slice, leaf.shape))].astype(leaf.dtype)

        with results.readable(self.path):
            variables = nest_variables({path: read(results.START + path, leaf)
                                        for path, leaf in flat_variables(shapes).items()})
            opt_state = unpack_opt_state(read(results.START + OPT_STATE), opt_state_like(static, model))
            log = {name: read(name) for name in metrics.metric_names(tuple(model.norm_leaves(shapes["params"])))}
            return RunState(variables, opt_state, log, read(results.START + "peak_train_acc"))

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
        mine = self.plan.share(self.peers.me, self.peers.count, np.ones(self.plan.n_lanes, bool))
        mine = np.concatenate([c.real for c in mine])
        return f"{int(self.done[mine].sum())} of the {len(mine)} lanes of this process are committed to {self.path}"

    def _dispatch_segment(self, c: Chunk, lanes: Lane, state: Any, block: int, blocks: int) -> Any:
        """Dispatches logged blocks ``block`` to ``block + blocks`` of call ``c``."""
        first = jax.device_put(np.int32(block), NamedSharding(self._call_mesh(c), PartitionSpec()))
        return self._program(c, ("advance", blocks), lanes, state, first)(lanes, state, first)

    def _chunk_key(self, c: Chunk) -> dict:
        """What identifies a call's checkpoint: its lanes, group, layout and config."""
        return {"lanes": c.lanes.tolist(), "group": c.group, "n_max": c.n_max, "layout": c.layout._asdict(),
                "config": self.plan.groups[c.group].config.to_json(sort_keys=True)}


def group_name(plan: Plan, g: int) -> str:
    """``"width=64, "`` for a static group of a sweep over static axes, else ``""``."""
    return "".join(f"{k}={v}, " for k, v in plan.groups[g].values.items())


def print_plan(plan: Plan, chunks: tuple[Chunk, ...], n_devices: int, done: np.ndarray,
               log: Callable[[str], None]) -> None:
    """The plan's lines: grid, compile groups, chunks, what is done, an estimate."""
    config = plan.groups[0].config
    axes = " × ".join(f"{k}[{len(v)}]" for k, v in plan.axes.items()) or "(single run)"
    flops = sum(flops_per_lane(plan.config(c), c.n_max) * np.sum(~done[c.real])
                * (1 - c.first_block * config.log_every / config.steps) for c in chunks)
    fixed = [f"{k}={config[k]}" for k in ("p", "width") if k not in plan.axes]
    batch = f" batch={config.batch_size}" if config.batch_size and "batch_size" not in plan.axes else ""
    groups = "; ".join(f"{group_name(plan, g)}n_train padded to {n}" for g, n in plan.compile_groups)
    log(f"grid {axes} = {plan.n_lanes} lanes; {' '.join(fixed)} steps={config.steps}{batch}; "
        f"{len(plan.compile_groups)} compile group(s) ({groups})")
    chunks = [call for c in chunks for call in device_calls(c, n_devices)]
    sizes = sorted({len(c.lanes) for c in chunks})
    platform = plan.platform if plan.rules == "cpu" or plan.platform != "cpu" else "cpu (accelerator layout)"
    log(f"{len(chunks)} chunk(s) of {'/'.join(map(str, sizes)) or 0} lanes on {n_devices} {platform} device(s); "
        f"{int(done.sum())} lanes already done")
    rate = _matmul_rate_once()
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
