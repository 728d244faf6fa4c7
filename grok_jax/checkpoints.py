"""In-flight checkpoints: the training state of a chunk between its program calls.

A long chunk runs as a series of calls of :func:`grok_jax.train.Run.advance`
(:func:`grok_jax.layouts.segment_blocks`); between two calls the sweep may save the
chunk's :class:`~grok_jax.train.RunState` (parameters, optimizer and model state,
the log so far) and the next logged block with orbax. A re-run of the same command
restores it and continues with the very same programs, so its results are bitwise
those of an uninterrupted run. Each process keeps one checkpoint, of the chunk it
is training, in ``.<store>.inflight/process-<k>/`` beside the store; orbax writes a
checkpoint under a temporary name and renames it into place, so a kill leaves the
previous one or the new one, never half of one. A checkpoint names its chunk (its
lanes, compile group, layout and config): one that is not the chunk about to run
is ignored and replaced.

With several processes (``jax.distributed``) each process trains chunks of its own
on its local devices, so its state is host-local. orbax's array handlers save only
global arrays (or NumPy arrays from process 0) in a multi-process job, so the state
is written by ``HostStateHandler``, a small orbax checkpoint handler for one
process's NumPy arrays, under an orbax checkpoint manager whose only process is this
one (its barriers and renames involve no other process). Single-process runs take
the same path, so the suite tests it either way.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import warnings
import zipfile
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

if TYPE_CHECKING:
    import orbax.checkpoint as ocp

SUFFIX = ".inflight"  # .<store name><SUFFIX> beside the store
_ARRAYS, _CHUNK = "arrays.npz", "chunk.json"


def directory(store: str, process: int) -> str:
    """Where process ``process`` keeps the in-flight checkpoint of ``store``."""
    parent, name = os.path.split(os.path.abspath(store))
    return os.path.join(parent, f".{name}{SUFFIX}", f"process-{process}")


@functools.cache
def _orbax_args() -> tuple[type, type]:
    """``(HostStateSave, HostStateRestore)``: orbax's checkpoint args of
    :class:`HostStateHandler`, defined on first use (orbax is imported only by runs
    that checkpoint: half a second off every start-up)."""
    import orbax.checkpoint as ocp

    class HostStateHandler(ocp.CheckpointHandler):
        """Saves one process's NumPy arrays (``.npz``, no pickle) and the JSON
        description of their chunk; orbax's manager makes the directory, renames it
        into place once written and keeps the latest."""

        def save(self, directory: os.PathLike, args: HostStateSave) -> None:
            with open(os.path.join(directory, _ARRAYS), "wb") as f:
                np.savez(f, **args.arrays)
                _sync(f)
            with open(os.path.join(directory, _CHUNK), "w") as f:
                json.dump(args.chunk, f, sort_keys=True)
                _sync(f)

        def restore(self, directory: os.PathLike, args: HostStateRestore) -> dict[str, np.ndarray] | None:
            """The arrays, or ``None`` when they are of another chunk than ``args.chunk``
            (or in the format of an earlier version, without ``chunk.json``)."""
            if not os.path.exists(os.path.join(directory, _CHUNK)):
                return None
            with open(os.path.join(directory, _CHUNK)) as f:
                if json.dumps(json.load(f), sort_keys=True) != json.dumps(args.chunk, sort_keys=True):
                    return None
            with np.load(os.path.join(directory, _ARRAYS), allow_pickle=False) as saved:
                return {name: saved[name] for name in saved.files}

    @ocp.args.register_with_handler(HostStateHandler, for_save=True)
    @dataclasses.dataclass
    class HostStateSave(ocp.args.CheckpointArgs):
        arrays: dict[str, np.ndarray]
        chunk: dict

    @ocp.args.register_with_handler(HostStateHandler, for_restore=True)
    @dataclasses.dataclass
    class HostStateRestore(ocp.args.CheckpointArgs):
        chunk: dict

    return HostStateSave, HostStateRestore


def _sync(f: Any) -> None:
    """``f`` on disk before orbax renames the checkpoint into place (a power cut then
    leaves the previous checkpoint or the whole new one)."""
    f.flush()
    os.fsync(f.fileno())


def _manager(path: str) -> ocp.CheckpointManager:
    """orbax's manager of the checkpoint at ``path``, for this process alone (its
    barriers and directory operations involve no other process). Saves stay
    synchronous: orbax's asynchronous saves signal through the coordination service
    under keys that would not be this process's alone."""
    import orbax.checkpoint as ocp

    me = jax.process_index()
    alone = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me},
                                               barrier_sync_key_prefix=f"inflight-{me}")
    options = ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False, create=False,
                                           multiprocessing_options=alone)
    return ocp.CheckpointManager(os.path.abspath(path), options=options)


def save(path: str, chunk: dict, block: int, state: Any) -> None:
    """Saves ``state`` (a pytree of arrays) of ``chunk`` (a JSON-able description)
    before logged block ``block``, replacing the previous checkpoint (which a new
    chunk's first one replaces only once the chunk before it is committed)."""
    import orbax.checkpoint as ocp

    save_args, _ = _orbax_args()
    os.makedirs(path, exist_ok=True)
    arrays = {str(i): np.asarray(leaf) for i, leaf in enumerate(jax.tree.leaves(jax.device_get(state)))}
    with _manager(path) as manager:
        if (manager.latest_step() or 0) >= block:  # an earlier chunk's: steps only grow within a chunk
            manager.delete(manager.latest_step())
        manager.save(block, args=ocp.args.Composite(state=save_args(arrays, chunk)), force=True)
        manager.wait_until_finished()


def restore(path: str, chunk: dict, like: Any) -> tuple[int, Any] | None:
    """``(block, state)`` of the checkpoint at ``path`` if it is one of ``chunk``,
    with the structure of ``like`` (its leaves' shapes and dtypes checked); else ``None``."""
    import orbax.checkpoint as ocp

    _, restore_args = _orbax_args()
    if not os.path.isdir(path):
        return None
    with _manager(path) as manager:
        block = manager.latest_step()
        if block is None:
            return None
        try:
            arrays = manager.restore(block, args=ocp.args.Composite(state=restore_args(chunk)))["state"]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # damaged: the chunk starts over
            warnings.warn(f"ignoring the unreadable checkpoint {path}/{block}: {e}", stacklevel=2)
            return None
    leaves, treedef = jax.tree.flatten(like)
    if arrays is None or sorted(arrays) != sorted(map(str, range(len(leaves)))):
        return None
    state = [arrays[str(i)] for i in range(len(leaves))]
    for saved, leaf in zip(state, leaves):
        if saved.shape != tuple(leaf.shape) or saved.dtype != leaf.dtype:
            return None  # cannot happen for the same chunk key; never feed a program wrong shapes
    return block, jax.tree.unflatten(treedef, state)


def clear(path: str) -> None:
    """Removes the checkpoint at ``path`` (its chunk is committed to the store)."""
    shutil.rmtree(path, ignore_errors=True)


def clear_beyond(store: str, count: int) -> None:
    """Removes the checkpoints of processes ``count`` and up (of a run with more
    processes: this one deals the lanes otherwise, and would never replace them)."""
    parent = os.path.dirname(directory(store, 0))
    for name in os.listdir(parent) if os.path.isdir(parent) else ():
        if name.startswith("process-") and name[8:].isdigit() and int(name[8:]) >= count:
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def remove_directory(store: str) -> None:
    """Removes the directory of checkpoints of ``store`` once no process has one
    (process 0, after every process has ended)."""
    try:
        os.rmdir(os.path.dirname(directory(store, 0)))
    except OSError:  # a process's checkpoint is there, or there is none
        pass


def clear_all(store: str) -> None:
    """Removes every process's in-flight checkpoint of ``store`` (``--overwrite``)."""
    shutil.rmtree(os.path.dirname(directory(store, 0)), ignore_errors=True)
