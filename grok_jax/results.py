"""The results store: a zarr directory written chunk by chunk, read back as N-D.

On disk every per-run variable has a flat ``lane`` dimension (lanes in C order of
the grid); the whole config (JSON), the swept axes and their values are in the
attributes. :func:`load_results` reshapes ``lane`` into the swept axes:

    >>> ds = grok_jax.load_results("results/wd_xi")   # dims: wd, xi, step, hidden, ...
    >>> ds.test_acc.isel(step=-1).to_pandas()

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
writes only the lane chunks it owns (:func:`grok_jax.plan.process_chunks`) and
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
from grok_jax.errors import ConfigError, StoreWriteError

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
FORMAT = 4  # bumped when the layout changes (2: per-layer weight norms; 3: parameters, neuron groups;
# 4: grokking and unlearning steps)
PARTIAL = ".{name}.partial-"  # prefix of a store being built, before its rename
REPLACED = ".{name}.replaced-"  # prefix of a store being replaced (--overwrite), before its removal


def store_path(out: str | os.PathLike) -> str:
    """The store inside output directory ``out`` (a path to a store is kept)."""
    out = os.fspath(out)
    return out if out.rstrip("/").endswith(".zarr") else os.path.join(out, STORE)


def empty(config_json: str, axes: dict[str, tuple], steps: np.ndarray, metric_names: tuple[str, ...],
          finals: dict[str, tuple[tuple[str, ...], tuple[int, ...]]]) -> xr.Dataset:
    """The flat results of the grid ``axes`` before any lane ran (NaN metrics over
    ``steps`` and final arrays ``name -> (dims, shape)``, ``phase`` -1, ``done``
    all False), with the config and axes in the attributes."""
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


def create(path: str, flat: xr.Dataset, lanes_per_chunk: int) -> None:
    """Writes ``flat`` (see :func:`empty`) as a new store, every variable chunked
    along ``lane`` in blocks of ``lanes_per_chunk`` lanes, ``done`` too: each chunk
    file of ``done`` is replaced atomically, and the processes of a multi-host run
    write disjoint blocks (:func:`grok_jax.plan.process_chunks`).

    The store is built as ``.<name>.partial-<host>-<pid>-<random>`` beside ``path``
    and renamed to ``path`` once whole (call it under :func:`exclusive`)."""
    parent, name = os.path.split(os.path.abspath(path))
    partial = os.path.join(parent, f"{PARTIAL.format(name=name)}{socket.gethostname()}-{os.getpid()}-"
                                   f"{uuid.uuid4().hex[:8]}")
    encoding = {k: {"chunks": (lanes_per_chunk,) + v.shape[1:]} for k, v in flat.data_vars.items()}
    try:
        flat.to_zarr(partial, mode="w-", encoding=encoding, consolidated=False)
        _publish(partial, path)
    except OSError as e:
        shutil.rmtree(partial, ignore_errors=True)
        raise StoreWriteError(f"cannot create {path}: {_reason(e)}") from e


def _publish(partial: str, path: str) -> None:
    """Renames the whole new store into place (atomic); a store already there
    (``--overwrite``) is first moved aside, then removed."""
    if not os.path.exists(path):
        os.rename(partial, path)
        return
    parent, name = os.path.split(os.path.abspath(path))
    old = os.path.join(parent, f"{REPLACED.format(name=name)}{uuid.uuid4().hex[:8]}")
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
    """Removes the partial stores of killed runs beside ``path`` (under :func:`exclusive`)."""
    parent, name = os.path.split(os.path.abspath(path))
    for entry in sorted(os.listdir(parent)):
        if entry.startswith(PARTIAL.format(name=name)):
            log(f"removing {os.path.join(parent, entry)}: the unfinished store of a killed run")
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
        elif entry.startswith(REPLACED.format(name=name)):
            log(f"removing {os.path.join(parent, entry)}: a store replaced by --overwrite")
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def open_to_resume(path: str, config_json: str, resumable: tuple[str, ...] = (),
                   defaults: dict | None = None, overwrite: bool = False) -> xr.Dataset | None:
    """The store at ``path`` if it may be resumed with ``config_json``; ``None`` if
    there is none, or with ``overwrite`` (it is to be replaced: see :func:`prepare`).
    A ``ConfigError`` names what is wrong otherwise (not a store, an old format,
    another config up to the ``resumable`` fields); nothing is written. A field the
    stored config lacks (added to grok_jax since) counts as its value in
    ``defaults``."""
    if overwrite or not os.path.exists(path):
        return None
    try:
        ds = _open(path)
        old, fmt = json.loads(ds.attrs["config"]), int(ds.attrs.get("format", 0))
        ds["done"]
    except Exception as e:  # noqa: BLE001 - any unreadable store is refused
        raise ConfigError(f"{path} exists but is not a complete grok_jax results store "
                          f"({type(e).__name__}: {e}); choose another --out") from e
    if fmt != FORMAT:
        raise ConfigError(f"{path} was written in store format {fmt}, this version reads format {FORMAT}; "
                          "choose another --out")
    new = json.loads(config_json)  # numbers compare by value: (0, 5) is (0.0, 5.0); no field may be NaN
    old = {**{k: v for k, v in (defaults or {}).items() if k not in old}, **old}
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in resumable)
    if diff:
        k = diff[0]
        raise ConfigError(f"{path} holds results of another config ({k}={old.get(k)!r} there, {new.get(k)!r} now); "
                          "write to another directory, replace it with --overwrite, or resume it with the same config")
    return ds


def stored_layout(ds: xr.Dataset) -> dict | None:
    """The layout a store was written with (see :func:`prepare`), or ``None`` for a
    store of an earlier version, which records none."""
    if "layout" not in ds.attrs:
        return None
    try:
        layout = json.loads(ds.attrs["layout"])
        if not (isinstance(layout.get("platform"), str) and all(
                isinstance(g[k], int) for g in layout["groups"] for k in ("group", "n_max", "lanes_per_device"))):
            raise ValueError("no platform, or a compile group without integer group, n_max, lanes_per_device")
        return layout
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(f"the layout recorded in the store is unreadable ({type(e).__name__}: {e}); "
                          "choose another --out") from e


def prepare(path: str, existing: xr.Dataset | None, config_json: str, make_empty: Callable[[], xr.Dataset],
            lanes_per_chunk: int, resumable: tuple[str, ...] = (), log: Callable[[str], None] = print,
            layout: dict | None = None, run: dict | None = None, replace: bool = False) -> np.ndarray:
    """Creates the store at ``path`` (with ``replace``, in place of the one there),
    or takes ``existing`` (from :func:`open_to_resume`, which checked its config) to
    resume; under :func:`exclusive`. Returns the mask of the lanes already committed.

    ``run`` (JSON-able: what runs now, versions and devices) is appended to the
    store's ``runs`` attribute, a list with one entry per run that wrote to it.

    New values of the ``resumable`` fields, and ``layout`` (JSON-able: the platform
    and each compile group's layout) where a store of an earlier version has none,
    are recorded in its attributes (a new store has its layout from ``make_empty``).
    Lanes marked done without results (a crash while an earlier version, whose
    ``done`` was no commit mark, wrote them) are reported and count as not done.
    """
    remove_leftovers(path, log)
    if existing is None:
        if os.path.exists(path) and not replace:
            raise ConfigError(f"{path} exists; it is replaced only with --overwrite")
        flat = make_empty()
        flat.attrs["runs"] = json.dumps([run] if run else [], sort_keys=True)
        if os.path.exists(path):
            log(f"replacing {path} (--overwrite)")
        create(path, flat, lanes_per_chunk)
        return flat["done"].values
    ds = existing
    old, new, done = json.loads(ds.attrs["config"]), json.loads(config_json), ds["done"].values
    _check_writable(path)
    if run:
        _set_attr(path, "runs", json.dumps([*json.loads(ds.attrs.get("runs", "[]")), run], sort_keys=True))
    if any(old.get(k) != new.get(k) for k in resumable):
        _set_attr(path, "config", json.dumps({**old, **{k: new[k] for k in resumable}}, sort_keys=True))
    if layout is not None and "layout" not in ds.attrs:
        log(f"warning: {path} records no layout (an earlier version); its remaining lanes run in this "
            "version's layout, which may round differently from its finished ones")
        _set_attr(path, "layout", json.dumps(layout, sort_keys=True))
    empty_done = done & ~_has_results(ds)
    if empty_done.any():
        log(f"warning: {int(empty_done.sum())} lane(s) of {path} were marked done without results "
            "(an earlier version crashed while writing them); running them again")
    return done & ~empty_done


def committed(ds: xr.Dataset) -> np.ndarray:
    """The lanes of store ``ds`` marked done with their results."""
    return ds["done"].values & _has_results(ds)


def lane_chunk(path: str) -> int:
    """Lanes per chunk of the store's files; ``ConfigError`` when ``done`` is chunked
    otherwise (a store of an earlier version: one chunk), which several processes
    cannot share."""
    group = zarr.open_group(path, mode="r")
    size, done = group["train_loss"].chunks[0], group["done"].chunks[0]
    if done != size and group["done"].shape[0] > size:
        raise ConfigError(f"{path} was written by an earlier version, whose done mark several processes cannot "
                          "share; resume it with one process, or choose another --out")
    return size


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
    """Commits the results of ``lanes`` (increasing grid indices): every variable
    (arrays smaller than the store's fill its leading part), a flush to disk, then
    their ``done`` mark in a write of its own."""
    try:
        group = zarr.open_group(path, mode="r+")
        for name, values in {**log, **final, "phase": phase.astype(np.int8)}.items():
            group[name].oindex[_region(lanes, values)] = values
        _flush(path)
        _mark_done(group, lanes)
    except OSError as e:
        raise StoreWriteError(f"cannot write results to {path}: {_reason(e)}; the lanes committed before "
                              "are kept: run the same command again to resume") from e


def _region(lanes: np.ndarray, values: np.ndarray) -> tuple:
    """Where ``values`` ``(lanes, ...)`` go: those lanes, the leading part of each other dim."""
    return (_selection(lanes), *(slice(0, n) for n in values.shape[1:]))


def _selection(lanes: np.ndarray) -> slice | np.ndarray:
    """A slice for consecutive lanes (a plain region write), else the indices."""
    if len(lanes) and lanes[-1] - lanes[0] == len(lanes) - 1:
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


def _mark_done(group: zarr.Group, lanes: np.ndarray) -> None:
    group["done"].oindex[_selection(lanes)] = True


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
    ``attrs["phases"]``; -1 for lanes not yet run) and ``done``. With a ``seed`` axis, ``phase_majority``
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
    return to_grid(flat.load())


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
    if "seed" in axes:
        top, frac = phases.majority(ds["phase"].values, axis=list(axes).index("seed"))
        dims = tuple(a for a in axes if a != "seed")
        ds["phase_majority"] = (dims, top, ds["phase"].attrs)
        ds["phase_fraction"] = (dims, frac)
    return ds


def _open(path: str) -> xr.Dataset:
    return xr.open_zarr(path, consolidated=False)
