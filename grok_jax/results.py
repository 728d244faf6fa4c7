"""The results store: a zarr directory written chunk by chunk, read back as N-D.

On disk every per-run variable has a flat ``lane`` dimension (lanes in C order of
the grid); the whole config (JSON), the swept axes and their values are in the
attributes. :func:`load_results` reshapes ``lane`` into the swept axes:

    >>> import grok_jax
    >>> _ = grok_jax.run_sweep(grok_jax.load_config("tiny"), out="results/tiny", progress=False)
    grid ...
    >>> ds = grok_jax.load_results("results/tiny")
    >>> ds.test_acc.dims, ds.ipr_hidden.dims
    (('seed', 'wd', 'xi', 'step'), ('seed', 'wd', 'xi', 'hidden'))
    >>> table = ds.test_acc.isel(step=-1).mean("seed").to_pandas()   # wd × ξ

Variables: the logged metrics over ``step``; the final per-neuron IPR
``ipr_<group>`` over the group's neurons (dim ``<group>``, e.g. ``hidden``); the
final parameters and model state, one variable per leaf under its dotted path
(``params.U`` over ``operand`` × ``hidden``, ``batch_stats.mean``, ...), compressed.
Lanes of static groups with smaller shapes (a smaller width or p in the same
sweep) fill the leading part of each dim and are NaN past it.

Crash safety. One run at a time holds a store (:func:`exclusive`). A store appears
whole or not at all: it is built under a temporary name beside its final one and
renamed into place (:func:`create`). A finished chunk
of lanes is committed by :func:`write`: every variable first, flushed to disk, then
``done`` for its lanes in writes of their own. zarr replaces each chunk file
atomically (it writes a temporary file and renames it over the old one), so at any
instant the lanes marked done are committed ones (a commit cut short leaves some of
its lanes unmarked: they run again). With several processes (multi-host), each
writes only the lane chunks it owns (:meth:`grok_jax.plan.Plan.share`) and
process 0 the attributes. ``runs`` in the attributes records what ran, one entry
per run. Write errors raise :class:`~grok_jax.errors.StoreWriteError`.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import socket
import sys
import uuid
from typing import Any, Callable, Iterator

import numpy as np
import xarray as xr
import zarr

from grok_jax import phases
from grok_jax.errors import ConfigError, StoreDamaged, StoreWriteError

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None


def _find_syncfs() -> Callable[[int], int] | None:
    """Linux's ``syncfs(fd)``: flushes one file system, not every one (``sync``)."""
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs if sys.platform == "linux" else None
    except (OSError, AttributeError):
        return None


_SYNCFS = _find_syncfs()

STORE = "results.zarr"  # name of the store inside an output directory
FORMAT = 6  # bumped when the layout changes (2: per-layer weight norms; 3: parameters, neuron groups;
# 4: grokking and unlearning steps; 5: the plan; 6: scheduled and inferred lanes of a refined sweep)
PARTIAL = ".{name}.partial-"  # prefix of a store being built, before its rename
REPLACED = ".{name}.replaced-"  # prefix of a store being replaced (--overwrite), before its removal
GROWN = ".{name}.before-growth-"  # prefix of a store being grown, until the grown one is in place
START = "start."  # prefix of the state continued lanes start from (see keep_start)


def store_path(out: str | os.PathLike) -> str:
    """The store inside output directory ``out`` (a path to a store is kept)."""
    out = os.fspath(out)
    return out if out.rstrip("/").endswith(".zarr") else os.path.join(out, STORE)


def empty(config_json: str, axes: dict[str, tuple], steps: np.ndarray, metric_names: tuple[str, ...],
          finals: dict[str, tuple[tuple[str, ...], tuple[int, ...]]]) -> xr.Dataset:
    """The flat results of the grid ``axes`` before any lane ran (NaN metrics over
    ``steps`` and final arrays ``name -> (dims, shape)``, ``phase`` -1, ``done``
    and ``inferred`` all False, ``scheduled`` all True), with the config and axes in
    the attributes."""
    n_lanes = int(np.prod([len(v) for v in axes.values()]))
    coords = {"step": ("step", steps)}
    for dims, shape in finals.values():
        coords.update({d: (d, np.arange(n)) for d, n in zip(dims, shape)})
    grid = np.meshgrid(*[np.asarray(v) for v in axes.values()], indexing="ij")
    # Numeric axes also label the lanes (strings are in the attributes only).
    coords.update({name: ("lane", g.ravel()) for name, g in zip(axes, grid) if g.dtype.kind in "biuf"})
    nan = lambda *shape: np.full(shape, np.nan, np.float32)  # noqa: E731
    data = {name: (("lane", "step"), nan(n_lanes, len(steps))) for name in metric_names}
    data.update({name: (("lane", *dims), nan(n_lanes, *shape)) for name, (dims, shape) in finals.items()})
    data["phase"] = ("lane", np.full(n_lanes, -1, np.int8))
    data["done"] = ("lane", np.zeros(n_lanes, bool))
    data["scheduled"] = ("lane", np.ones(n_lanes, bool))  # to run (a refined sweep schedules round by round)
    data["inferred"] = ("lane", np.zeros(n_lanes, bool))  # never run; its phase inferred (grok_jax.refine)
    attrs = {
        "config": config_json,
        "axes": json.dumps({k: list(v) for k, v in axes.items()}),
        "phases": json.dumps(phases.PHASES),
        "format": FORMAT,
    }
    ds = xr.Dataset(data, coords, attrs)
    ds["phase"].attrs = {"flag_values": list(range(len(phases.PHASES))), "flag_meanings": " ".join(
        name.replace(" ", "_") for name in phases.PHASES), "description": "-1: not run yet"}
    return ds


def new_results(config_json: str, plan: Any) -> xr.Dataset:
    """The flat results of a plan's grid before any lane ran (:func:`empty`), with
    the plan in the attributes. Metrics and final arrays are the union over the
    static groups, each dim as large as its largest group's."""
    import jax

    from grok_jax import config as cfg
    from grok_jax import metrics
    from grok_jax.models import final_specs, get_model
    from grok_jax.train import OPT_STATE, opt_state_size

    config = plan.groups[0].config
    steps = np.arange(0, config.steps + 1, config.log_every)
    names, dims, sizes = [], {}, {}
    for group in plan.groups:
        model = get_model(cfg.static_config(group.config))
        params = jax.eval_shape(model.init, jax.random.key(0))["params"]
        names += [n for n in metrics.metric_names(tuple(model.norm_leaves(params))) if n not in names]
        specs = {name: (spec.dims, spec.shape) for name, spec in final_specs(model).items()}
        if plan.keep_state:
            specs[OPT_STATE] = (("opt_value",), (opt_state_size(cfg.static_config(group.config), model),))
        for name, (d, shape) in specs.items():  # the same dims in every group (plan.check_fits)
            dims[name] = d
            for k, n in zip(d, shape):
                sizes[k] = max(sizes.get(k, 0), n)
    finals = {name: (d, tuple(sizes[k] for k in d)) for name, d in dims.items()}
    finals.update({name: ((), ()) for name in phases.SUMMARY})  # see grok_jax.phases.summarize
    flat = empty(config_json, plan.axes, steps, tuple(names), finals)
    flat.attrs["plan"] = plan.to_json()
    return flat


def create(path: str, flat: xr.Dataset, lanes_per_chunk: int, log: Callable[[str], None] = print,
           keep_old: bool = False) -> None:
    """Writes ``flat`` (see :func:`new_results`) as a new store, every variable chunked
    along ``lane`` in blocks of ``lanes_per_chunk`` lanes, ``done`` too: each chunk
    file of ``done`` is replaced atomically, and the processes of a multi-host run
    write disjoint blocks (:meth:`grok_jax.plan.Plan.share`).

    The store is built as ``.<name>.partial-<host>-<pid>-<random>`` beside ``path``
    and renamed to ``path`` once whole (call it under :func:`exclusive`). A store
    already there is moved aside first and removed after: with ``keep_old`` (a
    grown store replacing its original) under a name that :func:`remove_leftovers`
    restores if the run dies between the two renames, else (``--overwrite``) under
    one it removes."""
    parent, name = os.path.split(os.path.abspath(path))
    partial = os.path.join(parent, f"{PARTIAL.format(name=name)}{socket.gethostname()}-{os.getpid()}-"
                                   f"{uuid.uuid4().hex[:8]}")
    encoding = {k: {"chunks": (lanes_per_chunk,) + v.shape[1:]} for k, v in flat.data_vars.items()}
    if os.path.exists(path) and not keep_old:
        log(f"replacing {path} (--overwrite)")
    try:
        flat.to_zarr(partial, mode="w-", encoding=encoding, consolidated=False)
        _flush(partial)
        _publish(partial, path, GROWN if keep_old else REPLACED)
    except OSError as e:
        shutil.rmtree(partial, ignore_errors=True)
        raise StoreWriteError(f"cannot {'grow' if keep_old else 'create'} {path}: {_reason(e)}"
                              + ("; the store is as it was" if keep_old else "")) from e


def _publish(partial: str, path: str, aside: str) -> None:
    """Renames the whole new store into place (atomic); a store already there is
    first moved aside (``aside``: the prefix of its temporary name), then removed."""
    if not os.path.exists(path):
        os.rename(partial, path)
        return
    parent, name = os.path.split(os.path.abspath(path))
    old = os.path.join(parent, f"{aside.format(name=name)}{uuid.uuid4().hex[:8]}")
    os.rename(path, old)
    os.rename(partial, path)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def exclusive(path: str) -> Iterator[None]:
    """Holds the store at ``path`` for one run: an exclusive ``flock`` on the file
    ``.<name>.lock`` beside it, released when the run ends or dies (``kill -9``
    included). A second run on the same store is refused (``ConfigError``) rather
    than rewriting the first one's lanes. Partial stores left beside it are then
    from dead runs: they are removed, with a message. (Where ``fcntl`` is missing,
    e.g. on Windows, runs are not locked.)"""
    parent, name = os.path.split(os.path.abspath(path))
    _check_writable(parent)
    fd = os.open(os.path.join(parent, f".{name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                raise ConfigError(f"another run ({holder}) is writing {path}; wait for it to end, or choose "
                                  "another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"host {socket.gethostname()}, pid {os.getpid()}".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (deleting it would race a new run)


def remove_leftovers(path: str, log: Callable[[str], None] = print) -> None:
    """Cleans up after killed runs (under :func:`exclusive`): a store whose growth
    died between its two renames is put back as it was; partial stores and stores
    set aside are removed."""
    parent, name = os.path.split(os.path.abspath(path))
    for entry in sorted(os.listdir(parent)):
        full = os.path.join(parent, entry)
        if entry.startswith(GROWN.format(name=name)) and not os.path.exists(path):
            log(f"restoring {path} from {full}: its growth was interrupted")
            os.rename(full, path)
        elif entry.startswith(GROWN.format(name=name)):
            shutil.rmtree(full, ignore_errors=True)  # the grown store is in place
        elif entry.startswith(PARTIAL.format(name=name)):
            log(f"removing {full}: the unfinished store of a killed run")
            shutil.rmtree(full, ignore_errors=True)
        elif entry.startswith(REPLACED.format(name=name)):
            log(f"removing {full}: a store replaced by --overwrite")
            shutil.rmtree(full, ignore_errors=True)


def open_store(path: str) -> xr.Dataset | None:
    """The store at ``path`` (flat, lazily loaded), or ``None`` if there is none; a
    ``ConfigError`` says what is wrong with one that is not a store of this format."""
    if not os.path.exists(path):
        return None
    try:
        ds = _open(path)
        fmt = int(ds.attrs.get("format", 0))
        json.loads(ds.attrs["config"])
        ds["done"]
    except Exception as e:  # noqa: BLE001 - any unreadable store is refused
        raise ConfigError(f"{path} exists but is not a complete grok_jax results store "
                          f"({type(e).__name__}: {e}); move it aside, or choose another output directory") from e
    if fmt != FORMAT:
        raise ConfigError(f"{path} was written in store format {fmt}, this version reads format {FORMAT}; "
                          "move it aside, or choose another output directory")
    return ds


def stored_plan(ds: xr.Dataset, path: str):
    """The plan stored with the results (:meth:`grok_jax.plan.Plan.to_json`)."""
    from grok_jax.plan import from_json

    try:
        return from_json(ds.attrs["plan"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(f"the plan recorded in {path} is unreadable ({type(e).__name__}: {e}); "
                          "choose another --out, or replace it with --overwrite") from e


def record_run(path: str, ds: xr.Dataset, config_json: str, recorded: tuple[str, ...], run: dict) -> None:
    """A resumed store's attributes: ``run`` appended to ``runs`` (one entry per run
    that wrote to the store), and the ``recorded`` fields of ``config_json`` that
    changed (e.g. ``plot``)."""
    _check_writable(path)
    _set_attr(path, "runs", json.dumps([*json.loads(ds.attrs.get("runs", "[]")), run], sort_keys=True))
    old, new = json.loads(ds.attrs["config"]), json.loads(config_json)
    if any(old.get(k) != new.get(k) for k in recorded):
        _set_attr(path, "config", json.dumps({**old, **{k: new[k] for k in recorded}}, sort_keys=True))


def keep_start(flat: xr.Dataset) -> None:
    """Copies, in flat results about to be continued for more steps, every lane's
    state (its variables, optimizer state and peak training accuracy) under
    :data:`START` names: the commits of the continued lanes overwrite the originals,
    and a commit cut short must not leave a lane to continue from its new state."""
    for name in [n for n in flat.data_vars if "." in n and not n.startswith(START)] + ["peak_train_acc"]:
        flat[START + name] = flat[name].copy()


def drop_start(path: str) -> None:
    """Removes the :data:`START` copies from a store whose lanes are all done."""
    group = zarr.open_group(path, mode="r+")
    for name in [n for n in group.array_keys() if n.startswith(START)]:
        del group[name]


def append_run(flat: xr.Dataset, run: dict) -> None:
    """Appends ``run`` to the ``runs`` attribute of flat results in memory."""
    flat.attrs["runs"] = json.dumps([*json.loads(flat.attrs.get("runs", "[]")), run], sort_keys=True)


def committed(ds: xr.Dataset, log: Callable[[str], None] | None = None) -> np.ndarray:
    """The lanes of store ``ds`` marked done with their results. Lanes marked done
    without them (a chunk file lost) are reported to ``log`` and count as not done."""
    with readable(ds.encoding.get("source", "the store")):
        done = ds["done"].values
        empty_done = done & ~_has_results(ds)
    if empty_done.any() and log is not None:
        log(f"warning: {int(empty_done.sum())} lane(s) were marked done without results (a lost chunk "
            "file); running them again")
    return done & ~empty_done


def _has_results(ds: xr.Dataset) -> np.ndarray:
    """Lanes holding what every finished lane has: a phase; train and test accuracy
    at every logged step (counts: finite even when the loss diverged); finite losses
    and weight norms at step 0."""
    finite = lambda name: np.isfinite(ds[name].values)  # noqa: E731
    ok = (ds["phase"].values >= 0) & finite("train_acc").all(axis=1) & finite("test_acc").all(axis=1)
    for name in ("train_loss", "test_loss", "weight_norm"):
        ok &= finite(name)[:, 0]
    return ok


def _check_writable(directory: str) -> None:
    try:
        os.makedirs(directory, exist_ok=True)
        probe = os.path.join(directory, f".write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("x")  # the only sure test of writability
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"output directory {directory} is not writable ({_reason(e)}); "
                          "choose another --out") from e


def _set_attr(path: str, name: str, value: Any) -> None:
    try:
        zarr.open_group(path, mode="r+").attrs[name] = value
    except OSError as e:
        raise StoreWriteError(f"cannot write {path}: {_reason(e)}") from e


def write(path: str, lanes: np.ndarray, log: dict[str, np.ndarray], final: dict[str, np.ndarray],
          phase: np.ndarray) -> None:
    """Commits the results of ``lanes`` (grid indices, in any order: a grown store's
    chunks keep their stored order): every variable (arrays smaller than the store's
    fill its leading part), a flush to disk, then their ``done`` mark in a write of
    its own."""
    order = np.argsort(lanes, kind="stable")
    lanes = lanes[order]
    try:
        arrays = _Arrays.of(path)
        for name, values in {**log, **final, "phase": phase.astype(np.int8)}.items():
            values = values[order]
            arrays[name].oindex[_region(lanes, values)] = values
        _flush(path)
        _mark_done(arrays, lanes)
    except OSError as e:
        raise StoreWriteError(f"cannot write results to {path}: {_reason(e)}; the lanes committed before "
                              "are kept: run the same command again to resume") from e


def _region(lanes: np.ndarray, values: np.ndarray) -> tuple:
    """Where ``values`` ``(lanes, ...)`` go: those lanes, the leading part of each other dim."""
    return (_selection(lanes), *(slice(0, n) for n in values.shape[1:]))


def _selection(lanes: np.ndarray) -> slice | np.ndarray:
    """A slice for consecutive lanes (a plain region write), else the indices."""
    if len(lanes) and np.all(np.diff(lanes) == 1):
        return slice(int(lanes[0]), int(lanes[-1]) + 1)
    return lanes


def _flush(path: str) -> None:
    """Puts the data on disk before the mark that says it is there (so that even a
    power loss cannot leave done lanes without results): ``syncfs`` of the store's
    file system on Linux, else ``sync`` of all."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _SYNCFS is None or _SYNCFS(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _mark_done(arrays: Any, lanes: np.ndarray) -> None:
    arrays["done"].oindex[_selection(lanes)] = True


class _Arrays(dict):
    """The arrays of one store, each opened once (its metadata read from disk once,
    not at every commit), while the store at that path is the same: the same
    metadata file, unchanged (a store replaced or grown has a new one)."""

    _last: tuple | None = None  # ((path, inode, mtime of zarr.json), _Arrays) of the store written last

    def __init__(self, path: str):
        super().__init__()
        self.group = zarr.open_group(path, mode="r+")

    def __missing__(self, name: str) -> zarr.Array:
        self[name] = self.group[name]
        return self[name]

    @classmethod
    def of(cls, path: str) -> "_Arrays":
        meta = os.stat(os.path.join(path, "zarr.json"))
        key = (os.path.abspath(path), meta.st_ino, meta.st_mtime_ns)
        if cls._last is None or cls._last[0] != key:
            cls._last = (key, cls(path))
        return cls._last[1]


def schedule(path: str, lanes: np.ndarray) -> None:
    """Marks ``lanes`` (grid indices) ``scheduled``: a refined sweep's next round,
    stored before it runs so that a resumed sweep runs the same lanes."""
    try:
        zarr.open_group(path, mode="r+")["scheduled"].oindex[_selection(np.sort(lanes))] = True
        _flush(path)
    except OSError as e:
        raise StoreWriteError(f"cannot write {path}: {_reason(e)}") from e


def record_inferred(path: str, inferred: np.ndarray, phase: np.ndarray, done: np.ndarray) -> None:
    """Writes which lanes are ``inferred`` and, for the lanes not ``done``, their
    phase (the inferred phase, else -1)."""
    try:
        group = zarr.open_group(path, mode="r+")
        group["inferred"][:] = inferred & ~done
        todo = np.flatnonzero(~done)
        if len(todo):
            group["phase"].oindex[_selection(todo)] = np.where(inferred, phase, -1)[todo].astype(np.int8)
        _flush(path)
    except OSError as e:
        raise StoreWriteError(f"cannot write {path}: {_reason(e)}") from e


def _reason(error: OSError) -> str:
    return error.strerror or str(error) or type(error).__name__


def fill(flat: xr.Dataset, lanes: np.ndarray, log: dict[str, np.ndarray], final: dict[str, np.ndarray],
         phase: np.ndarray) -> None:
    """In memory, what :func:`write` does on disk: sets ``lanes`` of ``flat``."""
    for name, values in {**log, **final, "phase": phase.astype(np.int8)}.items():
        flat[name].values[(lanes, *(slice(0, n) for n in values.shape[1:]))] = values
    flat["done"].values[lanes] = True


def load_results(path: str | os.PathLike, parameters: bool = True) -> xr.Dataset:
    """Opens a results store as an ``xarray.Dataset`` with one dim per swept axis.

    ``path`` is an output directory or the ``.zarr`` store inside it. Variables:
    the metrics of :func:`grok_jax.metrics.metric_names` over ``step``, the final
    per-neuron IPR and parameters (see the module doc), ``phase`` (codes into
    ``attrs["phases"]``; -1 for lanes not yet run), ``done`` (= ``ran``) and, of a
    refined sweep, ``inferred`` (lanes never run whose phase was inferred). With a ``seed`` axis, ``phase_majority``
    and ``phase_fraction`` give each cell's most common phase over seeds and the
    fraction of seeds in it. ``attrs["config"]`` is the full config as JSON.
    ``parameters=False`` leaves out the final parameters and model state (the
    dotted variables, most of a large store), e.g. to plot phase diagrams.
    """
    path = store_path(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no results store at {path}")
    flat = _open(path)
    if not parameters:
        flat = flat.drop_vars([name for name in flat.data_vars if "." in name])
    with readable(path):
        flat = flat.load()
    return to_grid(flat)


def to_grid(flat: xr.Dataset) -> xr.Dataset:
    """Flat results (``lane`` dim) as the N-D dataset that :func:`load_results` returns."""
    axes = {k: tuple(v) for k, v in json.loads(flat.attrs["axes"]).items()}
    shape = tuple(len(v) for v in axes.values())
    data = {
        name: (tuple(axes) + var.dims[1:], var.values.reshape(shape + var.shape[1:]), var.attrs)
        for name, var in flat.data_vars.items()
    }
    coords = {name: (name, list(values)) for name, values in axes.items()}
    coords.update({name: flat[name] for name in flat.dims if name != "lane"})
    ds = xr.Dataset(data, coords, flat.attrs)
    ds["ran"] = ds["done"]  # cells of a partial grid never run are NaN, phase -1 unless inferred
    if "inferred" in ds:  # (a store of an older format has none)
        ds["inferred"] = ds["inferred"] & ~ds["done"]  # (a lane run after it was inferred)
    if "seed" in axes:
        top, frac = phases.majority(ds["phase"].values, axis=list(axes).index("seed"))
        dims = tuple(a for a in axes if a != "seed")
        ds["phase_majority"] = (dims, top, ds["phase"].attrs)
        ds["phase_fraction"] = (dims, frac)
    return ds


@contextlib.contextmanager
def readable(path: str) -> Iterator[None]:
    """Reads of the store at ``path`` inside it that fail on a damaged chunk raise
    :class:`StoreDamaged` naming the first damaged chunk (:func:`damaged_chunks`)."""
    try:
        yield
    except (StoreDamaged, MemoryError, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - a codec's error on bad bytes is of any type
        bad = damaged_chunks(path) if os.path.isdir(path) else []
        if not bad:
            raise
        name, lo, hi, why = bad[0]
        more = f" (and {len(bad) - 1} more chunk(s))" if len(bad) > 1 else ""
        raise StoreDamaged(f"{path}: variable {name!r}, lanes {lo}-{hi - 1}, cannot be read ({why}){more}; run "
                           "the same command again with --repair to recompute the lanes of damaged chunks (the "
                           "sweep: or with --overwrite to start over)") from e


def damaged_chunks(path: str) -> list[tuple[str, int, int, str]]:
    """Every chunk of the store's variables that cannot be read: ``(variable, first
    lane, end lane, why)``, reading each lane chunk of each variable on its own."""
    bad = []
    for name, array in sorted(zarr.open_group(path, mode="r").arrays()):
        if "lane" not in array.metadata.dimension_names[:1]:
            continue
        step = array.chunks[0]
        for lo in range(0, array.shape[0], step):
            try:
                array[lo:lo + step]
            except Exception as e:  # noqa: BLE001
                bad.append((name, lo, min(lo + step, array.shape[0]), f"{type(e).__name__}: {_first_line(e)}"))
    return bad


def repair(path: str, log: Callable[[str], None] = print) -> int:
    """Rewrites every damaged chunk (:func:`damaged_chunks`) with its fill value and
    marks its lanes not done, so that the sweep recomputes them; returns how many
    lanes. Under :func:`exclusive`."""
    group = zarr.open_group(path, mode="r+")
    bad = damaged_chunks(path)
    for name, lo, hi, why in bad:
        log(f"repairing {path}: {name!r} lanes {lo}-{hi - 1} ({why}) will be recomputed")
        array = group[name]
        array[lo:hi] = np.full((hi - lo, *array.shape[1:]), array.fill_value, array.dtype)
    lanes = sorted({lane for _, lo, hi, _ in bad for lane in range(lo, hi)})
    if lanes:
        group["done"][lanes[0]:lanes[-1] + 1] = group["done"][lanes[0]:lanes[-1] + 1] & ~np.isin(
            np.arange(lanes[0], lanes[-1] + 1), lanes)
    return len(lanes)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0][:200]


def _open(path: str) -> xr.Dataset:
    return xr.open_zarr(path, consolidated=False)
