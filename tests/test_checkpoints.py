"""In-flight checkpoints on their own: a state comes back bit for bit, and only for
its own chunk (the sweeps that use them are tested in test_store and test_multihost)."""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from grok_jax import checkpoints

CHUNK = {"lanes": [0, 1], "group": 0, "n_max": 72, "config": "{}"}


def _state(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"params": {"w": rng.normal(size=(3, 4)).astype(np.float32)}, "step": np.int32(seed),
            "log": (rng.normal(size=5).astype(np.float32), rng.random(5) < 0.5)}


def _like(state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), state)


def test_the_latest_state_comes_back_bit_for_bit(tmp_path):
    path = checkpoints.directory(str(tmp_path / "results.zarr"), 1)
    checkpoints.save(path, CHUNK, 2, _state(0))
    checkpoints.save(path, CHUNK, 4, _state(1))
    block, state = checkpoints.restore(path, CHUNK, _like(_state(0)))
    assert block == 4
    assert jax.tree.structure(state) == jax.tree.structure(_state(1))
    for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(_state(1))):
        assert got.dtype == want.dtype and np.array_equal(got, want)
    assert os.listdir(path) == ["4"]  # one checkpoint kept
    checkpoints.clear(path)
    checkpoints.remove_directory(str(tmp_path / "results.zarr"))
    assert not os.path.exists(os.path.dirname(path))


def test_a_new_chunk_replaces_the_checkpoint_of_another(tmp_path):
    path = str(tmp_path / "process-0")
    checkpoints.save(path, CHUNK, 4, _state(0))
    other = dict(CHUNK, lanes=[2, 3])
    assert checkpoints.restore(path, other, _like(_state(0))) is None
    checkpoints.save(path, other, 2, _state(1))  # an earlier step than the old chunk's
    assert checkpoints.restore(path, other, _like(_state(0)))[0] == 2
    assert checkpoints.restore(path, CHUNK, _like(_state(0))) is None


def test_other_shapes_or_an_earlier_versions_format_are_not_restored(tmp_path):
    path = str(tmp_path / "process-0")
    checkpoints.save(path, CHUNK, 2, _state(0))
    wrong = _like(_state(0))
    wrong["params"]["w"] = jax.ShapeDtypeStruct((4, 3), np.float32)
    assert checkpoints.restore(path, CHUNK, wrong) is None
    old = str(tmp_path / "old")  # the format before host-local checkpoints: orbax's standard items
    leaves = {str(i): leaf for i, leaf in enumerate(jax.tree.leaves(_state(0)))}
    with ocp.CheckpointManager(old, options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False)) as m:
        m.save(2, args=ocp.args.Composite(state=ocp.args.StandardSave(leaves), chunk=ocp.args.JsonSave(CHUNK)))
    assert checkpoints.restore(old, CHUNK, _like(_state(0))) is None


def test_a_damaged_checkpoint_is_ignored(tmp_path):
    path = str(tmp_path / "process-0")
    checkpoints.save(path, CHUNK, 2, _state(0))
    with open(os.path.join(path, "2", "state", "arrays.npz"), "wb") as f:
        f.write(b"PK\x03\x04 cut short")  # as a power cut before the data reached the disk could leave it
    with pytest.warns(UserWarning, match="unreadable checkpoint"):
        assert checkpoints.restore(path, CHUNK, _like(_state(0))) is None
    checkpoints.save(path, CHUNK, 2, _state(1))  # and it is replaced
    assert checkpoints.restore(path, CHUNK, _like(_state(0)))[0] == 2


def test_only_the_checkpoints_of_processes_beyond_the_count_are_cleared(tmp_path):
    store = str(tmp_path / "results.zarr")
    for k in range(3):
        checkpoints.save(checkpoints.directory(store, k), CHUNK, 2, _state(k))
    checkpoints.clear_beyond(store, 2)
    assert sorted(os.listdir(os.path.dirname(checkpoints.directory(store, 0)))) == ["process-0", "process-1"]
