"""The random draws of one run, from the keys docs/design.md documents
(``fold_in(key(seed), stream)``), for the NumPy reference to build everything else
from: the shuffle of the pairs, the noise labels, the initial normals, the dropout
uniforms (step ``t``: ``fold_in(dropout key, t)``, then one key per pair index), the
mini-batch order's random words (epoch ``e``: ``fold_in(batch key, e)``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

STREAMS = {"init": 0, "split": 1, "corrupt": 2, "dropout": 3, "batch": 4}


def key(seed: int, stream: str) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seed), STREAMS[stream])


def data(seed: int, p: int) -> tuple[np.ndarray, np.ndarray]:
    """(shuffle of the p² pair indices, one uniform label in 0..p-1 per row)."""
    shuffle = jax.random.permutation(key(seed, "split"), jnp.arange(p * p, dtype=jnp.int32))
    noise = jax.random.randint(key(seed, "corrupt"), (p * p,), 0, p, dtype=jnp.int32)
    return np.asarray(shuffle), np.asarray(noise)


def normals(seed: int, p: int, width: int) -> dict[str, np.ndarray]:
    ku, kv, kw = jax.random.split(key(seed, "init"), 3)
    shapes = {"U": (p, width), "V": (p, width), "W": (width, p)}
    return {k: np.asarray(jax.random.normal(sub, shapes[k])) for k, sub in zip("UVW", (ku, kv, kw))}


def dropout(seed: int, t: int, pairs: np.ndarray, width: int) -> np.ndarray:
    """Step ``t``'s uniforms for the rows of ``pairs``, shape (len(pairs), width)."""
    return dropout_from_key(jax.random.fold_in(key(seed, "dropout"), t), pairs, width)


def dropout_from_key(step: jax.Array, pairs: np.ndarray, width: int) -> np.ndarray:
    """The uniforms a step with key ``step`` draws: one key per pair index."""
    return np.asarray(jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(step, i), (width,)))(pairs))


def epoch_bits(seed: int, epoch: int, total: int) -> np.ndarray:
    """Epoch ``epoch``'s random words of the mini-batch order: ``total`` (one per usable
    pair) uint32 from ``bits(fold_in(batch key, epoch))``; training row r takes word r."""
    step = jax.random.fold_in(key(seed, "batch"), epoch)
    return np.asarray(jax.random.bits(step, (total,), jnp.uint32))
