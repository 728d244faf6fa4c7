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

Single-process runs only, for now: orbax writes host-local NumPy state from process 0
alone and refuses host-local device arrays in a multi-host job, so a sweep over
several processes runs its chunks without in-flight checkpoints (finished chunks are
committed to the store as always).
"""

from __future__ import annotations

import json
import os
import shutil
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

if TYPE_CHECKING:
    import orbax.checkpoint as ocp

SUFFIX = ".inflight"  # .<store name><SUFFIX> beside the store


def directory(store: str, process: int) -> str:
    """Where process ``process`` keeps the in-flight checkpoint of ``store``."""
    parent, name = os.path.split(os.path.abspath(store))
    return os.path.join(parent, f".{name}{SUFFIX}", f"process-{process}")


def _manager(path: str) -> ocp.CheckpointManager:
    import orbax.checkpoint as ocp  # imported where used: half a second off every start-up

    options = ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False, create=False)
    return ocp.CheckpointManager(os.path.abspath(path), options=options)


def save(path: str, chunk: dict, block: int, state: Any) -> None:
    """Saves ``state`` (a pytree of arrays) of ``chunk`` (a JSON-able description)
    before logged block ``block``, replacing the previous checkpoint (which a new
    chunk's first one replaces only once the chunk before it is committed)."""
    import orbax.checkpoint as ocp

    os.makedirs(path, exist_ok=True)
    leaves = {str(i): np.asarray(leaf) for i, leaf in enumerate(jax.tree.leaves(jax.device_get(state)))}
    with _manager(path) as manager:
        if (manager.latest_step() or 0) >= block:  # an earlier chunk's: steps only grow within a chunk
            manager.delete(manager.latest_step())
        manager.save(block, args=ocp.args.Composite(state=ocp.args.StandardSave(leaves),
                                                   chunk=ocp.args.JsonSave(chunk)), force=True)
        manager.wait_until_finished()


def restore(path: str, chunk: dict, like: Any) -> tuple[int, Any] | None:
    """``(block, state)`` of the checkpoint at ``path`` if it is one of ``chunk``,
    with the structure of ``like`` (NumPy leaves); else ``None``."""
    import orbax.checkpoint as ocp

    if not os.path.isdir(path):
        return None
    with _manager(path) as manager:
        block = manager.latest_step()
        if block is None:
            return None
        saved = manager.restore(block, args=ocp.args.Composite(chunk=ocp.args.JsonRestore()))["chunk"]
        if json.dumps(saved, sort_keys=True) != json.dumps(chunk, sort_keys=True):
            return None
        leaves, treedef = jax.tree.flatten(like)
        target = {str(i): np.zeros(leaf.shape, leaf.dtype) for i, leaf in enumerate(leaves)}
        state = manager.restore(block, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
    return block, jax.tree.unflatten(treedef, [state[str(i)] for i in range(len(leaves))])


def clear(path: str) -> None:
    """Removes the checkpoint at ``path`` (its chunk is committed to the store), and
    the directory of checkpoints once no process has one."""
    shutil.rmtree(path, ignore_errors=True)
    try:
        os.rmdir(os.path.dirname(path))
    except OSError:  # another process's checkpoint is there, or it is gone already
        pass


def clear_all(store: str) -> None:
    """Removes every process's in-flight checkpoint of ``store`` (``--overwrite``)."""
    shutil.rmtree(os.path.dirname(directory(store, 0)), ignore_errors=True)
