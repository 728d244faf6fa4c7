"""Inverse participation ratio (Doshi et al., arXiv:2310.13061, Eq. 3-4) and accuracy metrics.

IPR convention: ``x̃ = |rfft(x)|`` is the one-sided real FFT magnitude, DC included
(``⌊p/2⌋ + 1`` numbers), and ``IPR(x) = Σ x̃⁴ / (Σ x̃²)²``. A pure cosine of one
nonzero frequency has IPR exactly 1 in this convention (with a full complex FFT its
two mirror peaks would give 0.5); Gaussian rows sit near the floor
``2/(⌊p/2⌋ + 1)``, about 0.04 at p = 97.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from grok_jax.data import Rows

METRICS = (
    "train_loss",  # loss on the training set, against the labels trained on
    "test_loss",  # loss on the test pairs
    "train_acc",  # accuracy on the training set, against the labels trained on
    "test_acc",  # accuracy on the test pairs
    "corrupt_acc",  # corrupted examples vs their corrupted labels (memorization)
    "inversion_acc",  # corrupted examples vs their true labels (inversion)
    "clean_acc",  # uncorrupted training examples
    "weight_norm",  # Frobenius norm of the model's norm leaves together (mlp2: U, V and W)
    "ipr",  # mean IPR over the neurons of the model's first group that have one
)  # and norm_<leaf>, the norm of each norm leaf (mlp2: norm_U, norm_V, norm_W); see metric_names


def ipr(x: jax.Array, axis: int = -1) -> jax.Array:
    """IPR of ``x`` along ``axis`` (rfft convention, see module doc).

    The one-sided DFT is a product with a ``(2·(⌊p/2⌋ + 1), p)`` cosine and sine
    table rather than an FFT: at the sizes of this model (p up to a few hundred) one
    small matmul beats XLA's FFT calls (logging every 10 steps at p 31: 2-3% less
    time in all).

    Example:
      >>> float(ipr(jnp.cos(2 * jnp.pi * 3 * jnp.arange(11) / 11)))  # doctest: +ELLIPSIS
      1.0...
    """
    x = jnp.moveaxis(x, axis, 0)
    # IPR is scale-free; normalizing first keeps tiny (decayed) vectors from underflowing.
    x = x / jnp.max(jnp.abs(x), axis=0, keepdims=True)
    p, half = x.shape[0], x.shape[0] // 2 + 1
    angle = 2 * np.pi * np.outer(np.arange(half), np.arange(p)) / p
    table = jnp.asarray(np.concatenate([np.cos(angle), np.sin(angle)]), x.dtype)
    y = jnp.tensordot(table, x, axes=1, precision=jax.lax.Precision.HIGHEST)  # float32 passes on TPUs too
    power = jnp.square(y[:half]) + jnp.square(y[half:])
    return jnp.sum(jnp.square(power), axis=0) / jnp.square(jnp.sum(power, axis=0))


def weight_norms(leaves: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Frobenius norm ``norm_<name>`` of each of a model's norm leaves (see
    :meth:`grok_jax.models.Model.norm_leaves`) and ``weight_norm`` of them together."""
    sq = {name: jnp.sum(jnp.square(w)) for name, w in leaves.items()}
    out = {f"norm_{name}": jnp.sqrt(v) for name, v in sq.items()}
    out["weight_norm"] = jnp.sqrt(sum(sq.values()))
    return out


def metric_names(norm_leaves: tuple[str, ...]) -> tuple[str, ...]:
    """The logged metrics of a model whose norm leaves have these names:
    :data:`METRICS` and ``norm_<name>`` for each."""
    return METRICS + tuple(f"norm_{name}" for name in norm_leaves)


def loss_terms(logits: jax.Array, labels: jax.Array, loss: str) -> jax.Array:
    """Per-example loss: MSE averaged over the ``p`` outputs against one-hot
    targets (``nn.MSELoss`` semantics), or softmax cross-entropy."""
    if loss == "mse":
        # (logit − 1 at the label, the logit elsewhere)²: the same numbers as against a
        # one-hot array, without building it (1.5-3% less time per training step on CPU)
        target = jnp.arange(logits.shape[-1]) == labels[..., None]
        return jnp.mean(jnp.square(jnp.where(target, logits - 1.0, logits)), axis=-1)
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], axis=-1)[..., 0]


def correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Whether each label's logit is the unique maximum: a tie (e.g. the all-zero
    logits of a network whose weights decayed to zero) counts as wrong. (The label's
    logit above every other one: one max-reduction, into which XLA fuses the mask.
    A max and a count of ties take two passes, argmax's variadic reduction on CPU
    as long as a matmul; the training step counts every step.)"""
    others = jnp.where(jnp.arange(logits.shape[-1]) == labels[..., None], -jnp.inf, logits)
    return jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0] > jnp.max(others, axis=-1)


def row_sums(logits: jax.Array, rows: Rows, loss: str) -> dict[str, jax.Array]:
    """The sums over ``rows`` (any shape) behind the loss and accuracy metrics of
    :data:`METRICS`; :func:`means` divides them by the set sizes. Sums of several
    row sets add up (``jax.tree.map(jnp.add, ...)``).

    Example:
      >>> from grok_jax.data import make_dataset, training_rows
      >>> ds = make_dataset(jax.random.key(0), jax.random.key(1), 60, 6,
      ...                   task="add", p=11, n_max=80)
      >>> rows = training_rows(ds, n_max=80)      # 60 training rows (6 corrupted), 20 test pairs
      >>> sums = row_sums(jax.nn.one_hot(rows.true_label, 11), rows, "mse")  # every true label
      >>> int(sums["inversion_acc"]), int(sums["test_acc"])
      (6, 20)
    """
    hit, hit_true = correct(logits, rows.label), correct(logits, rows.true_label)
    terms = loss_terms(logits, rows.label, loss)  # a test pair's label is its true label
    total = lambda x, mask: jnp.sum(jnp.where(mask, x, 0.0))  # noqa: E731
    return {
        "train_loss": total(terms, rows.train),
        "test_loss": total(terms, rows.test),
        "train_acc": total(hit, rows.train),
        "test_acc": total(hit, rows.test),
        "corrupt_acc": total(hit, rows.corrupt),
        "inversion_acc": total(hit_true, rows.corrupt),
        "clean_acc": total(hit_true, rows.train & ~rows.corrupt),
    }


def means(sums: dict[str, jax.Array], n_train: jax.Array, n_corrupt: jax.Array, n_test: jax.Array) -> dict:
    """The metrics from :func:`row_sums` over every pair: each sum divided by the
    size of its set. An empty set (e.g. no corrupted rows at ξ = 0) gives NaN."""
    size = {"train": n_train, "test": n_test, "corrupt": n_corrupt, "inversion": n_corrupt,
            "clean": n_train - n_corrupt}
    return {name: total / jnp.asarray(size[name.split("_")[0]], total.dtype) for name, total in sums.items()}
