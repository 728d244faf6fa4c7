"""Modular-arithmetic data with a corrupted fraction of the training labels.

Every lane of a sweep sees the same fixed-shape arrays: all ``p²`` pairs, shuffled
by the lane's own split key, with the training set padded to ``n_max`` rows (the
largest training set of its compile group) and masks saying which rows are real
training rows and which carry a corrupted label. The counts ``n_train`` and
``n_corrupt`` are traced integers, so lanes with different α and ξ share one
compiled program.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from grok_jax.errors import ConfigError

TASKS: dict[str, Callable[[jax.Array, jax.Array, int], jax.Array]] = {
    "add": lambda m, n, p: (m + n) % p,
    "sub": lambda m, n, p: (m - n) % p,
    "mul": lambda m, n, p: (m * n) % p,
    # m / n = m · n^(p-2) mod p (Fermat); defined for prime p and n ≠ 0.
    "div": lambda m, n, p: (m * _pow_mod(n, p - 2, p)) % p,
}


class Dataset(NamedTuple):
    """One lane's data; rows ``[0, n_max)`` of a fixed shuffle of all pairs.

    Attributes:
      m, n: operands of the training rows, int32 ``(n_max,)``.
      label: label trained on (corrupted where ``corrupt``), ``(n_max,)``.
      true_label: the correct answer ``(m ∘ n) mod p``, ``(n_max,)``.
      train: row is in the training set (``row < n_train``).
      corrupt: row is a training row with a corrupted label (``row < n_corrupt``).
      test: over all ``p²`` pairs in natural order ``m·p + n``: the pair is a test
        pair (division: pairs with n = 0 are neither training nor test pairs).
      order: the shuffle; ``order[:n_max]`` are the pair indices of the rows.
    """

    m: jax.Array
    n: jax.Array
    label: jax.Array
    true_label: jax.Array
    train: jax.Array
    corrupt: jax.Array
    test: jax.Array
    order: jax.Array


class Rows(NamedTuple):
    """Pairs a loss or metric is computed over: training rows (all ``n_max``, or in
    blocks of rows), or the test pairs past them (:func:`held_out_rows`)."""

    m: jax.Array
    n: jax.Array
    label: jax.Array  # the label trained on; the true label of a test pair
    true_label: jax.Array
    train: jax.Array  # a real training row (a padding row of the training set is a test pair)
    corrupt: jax.Array
    test: jax.Array  # a test pair (rows that pad blocks of rows are neither)
    pair: jax.Array  # pair index, which keys the row's dropout noise


def training_rows(ds: Dataset, n_max: int, row_blocks: int = 1) -> Rows:
    """The ``n_max`` training rows of ``ds`` (rows ``n_train`` on are test pairs), or
    ``(row_blocks, block)`` arrays of them, the last block padded with rows that
    are neither training nor test pairs (pair 0, label 0).

    Example:
      >>> ds = make_dataset(jax.random.key(0), jax.random.key(1), 60, 6,
      ...                   task="add", p=11, n_max=80)
      >>> training_rows(ds, n_max=80, row_blocks=3).m.shape
      (3, 27)
    """
    pair = ds.order[:n_max]
    rows = Rows(ds.m, ds.n, ds.label, ds.true_label, ds.train, ds.corrupt, ds.test[pair], pair)
    if row_blocks == 1:
        return rows
    block = -(-n_max // row_blocks)
    return Rows(*(jnp.pad(a, (0, block * row_blocks - n_max)).reshape(row_blocks, block) for a in rows))


def held_out_rows(ds: Dataset, n_max: int, task: str, p: int) -> Rows:
    """The pairs past the training rows, ``order[n_max:]`` up to the usable pairs:
    all of them test pairs (with :func:`training_rows`, every pair once).

    Example:
      >>> ds = make_dataset(jax.random.key(0), jax.random.key(1), 60, 6,
      ...                   task="add", p=11, n_max=80)
      >>> held_out_rows(ds, n_max=80, task="add", p=11).m.shape
      (41,)
    """
    pair = ds.order[n_max:num_pairs(task, p)]
    m, n = jnp.divmod(pair, p)
    label = pair_labels(task, p)[pair]
    no, yes = jnp.zeros(pair.shape, bool), jnp.ones(pair.shape, bool)
    return Rows(m, n, label, label, no, no, yes, pair)


def is_prime(p: int) -> bool:
    """Whether ``p`` is prime."""
    return p >= 2 and all(p % d for d in range(2, math.isqrt(p) + 1))


def check_task(task: str, p: int) -> None:
    """Raises ``ConfigError`` with a one-line message for an unusable task or p."""
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    if p < 2:
        raise ConfigError(f"p={p} is too small; p must be an integer >= 2")
    if task == "div" and not is_prime(p):
        raise ConfigError(f"task 'div' needs a prime p, got p={p} (e.g. 11, 13, 31, 97)")


def pair_labels(task: str, p: int) -> jax.Array:
    """Correct labels of all ``p²`` pairs, index ``m·p + n``; division pairs with
    ``n = 0`` have no answer, and :func:`make_dataset` never draws them."""
    m, n = jnp.divmod(jnp.arange(p * p, dtype=jnp.int32), p)
    return TASKS[task](m, n, p).astype(jnp.int32)


def num_pairs(task: str, p: int) -> int:
    """Number of usable pairs: ``p²``, or ``p(p-1)`` for division (n ≠ 0)."""
    return p * (p - 1) if task == "div" else p * p


def split_sizes(alpha: float, xi: float, task: str, p: int) -> tuple[int, int]:
    """``(n_train, n_corrupt) = (⌊α·P⌋, ⌊ξ·n_train⌋)`` for ``P`` usable pairs.

    Computed on the host in float64 with a 1e-9 guard so that, e.g., α = 0.7 of
    100 pairs gives 70 and not 69 from the rounding of 0.7.
    """
    if not 0.0 <= xi <= 1.0:
        raise ConfigError(f"xi={xi} is outside [0, 1]; the corrupted fraction must lie in [0, 1]")
    total = num_pairs(task, p)
    n_train = math.floor(alpha * total + 1e-9)
    if not 1 <= n_train < total:
        raise ConfigError(
            f"alpha={alpha} gives {n_train} training pairs of {total} (p={p}); "
            f"need 1 <= alpha*{total} < {total}, i.e. alpha in [{1 / total:.4g}, 1)"
        )
    return n_train, math.floor(xi * n_train + 1e-9)


def make_dataset(
    split_key: jax.Array,
    corrupt_key: jax.Array,
    n_train: jax.Array,
    n_corrupt: jax.Array,
    *,
    task: str,
    p: int,
    n_max: int,
) -> Dataset:
    """Builds one lane's shuffled, padded, partly corrupted training set.

    Example:
      >>> ds = make_dataset(jax.random.key(0), jax.random.key(1), 60, 6,
      ...                   task="add", p=11, n_max=80)
      >>> int(ds.train.sum()), int(ds.corrupt.sum()), int(ds.test.sum())
      (60, 6, 61)
    """
    labels = pair_labels(task, p)
    usable = num_pairs(task, p)
    # Division: put the n = 0 pairs last so they are never drawn (usable < p²).
    pairs = jnp.arange(p * p, dtype=jnp.int32)
    valid = pairs % p != 0 if task == "div" else jnp.ones(p * p, bool)
    shuffled = jax.random.permutation(split_key, pairs)
    order = shuffled[jnp.argsort(~valid[shuffled], stable=True)]
    rows = jnp.arange(n_max)
    idx = order[:n_max]
    m, n = jnp.divmod(idx, p)
    train = rows < n_train
    corrupt = rows < n_corrupt
    true_label = labels[idx]
    # Drawn for all p² rows and cut, so a row's label does not depend on n_max.
    noise = jax.random.randint(corrupt_key, (p * p,), 0, p, dtype=jnp.int32)[:n_max]
    label = jnp.where(corrupt, noise, true_label)
    rank = jnp.zeros(p * p, jnp.int32).at[order].set(jnp.arange(p * p, dtype=jnp.int32))
    test = (rank >= n_train) & (rank < usable)
    return Dataset(m, n, label, true_label, train, corrupt, test, order)


def _pow_mod(base: jax.Array, exp: int, mod: int) -> jax.Array:
    """``base**exp % mod`` elementwise by square-and-multiply (no overflow for p < 46341)."""
    result = jnp.ones_like(base)
    base = base % mod
    while exp:
        if exp & 1:
            result = (result * base) % mod
        base = (base * base) % mod
        exp >>= 1
    return result


def epoch_order(key: jax.Array, n_train: jax.Array, n_max: int, total: int) -> jax.Array:
    """The order of the training rows in one epoch of mini-batches, ``(n_max,)``:
    the ``n_train`` real rows in a random order drawn from ``key`` (the epoch's key),
    then the padding rows, which are never drawn. Random bits are drawn for all
    ``total`` pairs and cut, so the order does not depend on ``n_max``.

    Example:
      >>> order = epoch_order(jax.random.key(0), 5, n_max=8, total=121)
      >>> sorted(order[:5].tolist()), order[5:].tolist()
      ([0, 1, 2, 3, 4], [5, 6, 7])
    """
    bits = jax.random.bits(key, (total,), jnp.uint32)[:n_max] >> 1  # below 2³¹ ...
    keys = jnp.where(jnp.arange(n_max) < n_train, bits, jnp.uint32(2**31))  # ... and padding last
    return jnp.argsort(keys, stable=True).astype(jnp.int32)


def batches_per_epoch(n_train: jax.Array, batch_size: int) -> jax.Array:
    """``⌈n_train / batch_size⌉``: the last batch is partial (PyTorch's DataLoader
    with ``drop_last=False``)."""
    return (n_train + batch_size - 1) // batch_size


def batch_rows(rows: Rows, order: jax.Array, index: jax.Array, batch_size: int, n_train: jax.Array) -> Rows:
    """Mini-batch ``index`` of an epoch in ``order`` (:func:`epoch_order`): rows
    ``order[index·B : (index+1)·B]`` of the training rows ``rows``. The last batch
    of an epoch has ``n_train mod B`` real rows (or B); its other slots are masked
    out (``train`` False), so that every batch is a fixed-shape array of ``B`` rows.

    Example:
      >>> ds = make_dataset(jax.random.key(0), jax.random.key(1), 60, 6,
      ...                   task="add", p=11, n_max=80)
      >>> order = epoch_order(jax.random.key(2), n_train=60, n_max=80, total=121)
      >>> rows = training_rows(ds, n_max=80)
      >>> [int(batch_rows(rows, order, i, batch_size=16, n_train=60).train.sum()) for i in range(4)]
      [16, 16, 16, 12]
    """
    slot = index * batch_size + jnp.arange(batch_size)
    valid = slot < n_train
    idx = order[jnp.minimum(slot, order.shape[0] - 1)]
    take = lambda a: a[idx]  # noqa: E731
    return Rows(take(rows.m), take(rows.n), take(rows.label), take(rows.true_label), valid,
                take(rows.corrupt) & valid, jnp.zeros(batch_size, bool), take(rows.pair))
