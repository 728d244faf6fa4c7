"""Inverse participation ratio (PAPER.md §4, Eq. 3-4) and accuracy metrics.

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
from grok_jax.models import Params

METRICS = (
    "train_loss",  # loss on the training set, against the labels trained on
    "test_loss",  # loss on the test pairs
    "train_acc",  # accuracy on the training set, against the labels trained on
    "test_acc",  # accuracy on the test pairs
    "corrupt_acc",  # corrupted examples vs their corrupted labels (memorization)
    "inversion_acc",  # corrupted examples vs their true labels (inversion)
    "clean_acc",  # uncorrupted training examples
    "weight_norm",  # Frobenius norm of U, V and W together
    "norm_U",  # Frobenius norm of each layer
    "norm_V",
    "norm_W",
    "ipr",  # mean of IPR_k over the neurons that have one (see neuron_ipr)
)


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


def neuron_ipr(params: Params) -> jax.Array:
    """``IPR_k = (IPR(U_k) + IPR(V_k) + IPR(W_k)) / 3`` for every hidden neuron k.

    A neuron whose weights weight decay drove to exactly zero has no spectrum: its
    IPR is NaN, and the network IPR (a ``nanmean``) leaves it out.
    """
    width = params["W"].shape[0]
    # One product for all three, with the neurons along the minor axis: the sums over
    # frequencies then run across vectors (the IPR alone ~8 µs faster at p 31 than
    # with the neurons as rows).
    columns = jnp.concatenate([params["U"], params["V"], params["W"].T], axis=1)
    return jnp.mean(ipr(columns, axis=0).reshape(3, width), axis=0)


def weight_norms(params: Params) -> dict[str, jax.Array]:
    """Frobenius norms of U, V, W and of the three together (BatchNorm's scale and
    shift are left out: they start at ones and would hide the weights' decay)."""
    sq = {k: jnp.sum(jnp.square(params[k])) for k in "UVW"}
    out = {f"norm_{k}": jnp.sqrt(v) for k, v in sq.items()}
    out["weight_norm"] = jnp.sqrt(sum(sq.values()))
    return out


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
    logits of a network whose weights decayed to zero) counts as wrong. (This is
    argmax without its variadic reduction, which on CPU costs as much as a matmul.)"""
    top = jnp.max(logits, axis=-1, keepdims=True)
    unique = jnp.sum(logits == top, axis=-1) == 1
    return unique & (jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0] == top[..., 0])


def row_sums(logits: jax.Array, rows: Rows, loss: str) -> dict[str, jax.Array]:
    """The sums over ``rows`` (any shape) behind the loss and accuracy metrics of
    :data:`METRICS`; :func:`means` divides them by the set sizes. Sums of several
    row sets add up (``jax.tree.map(jnp.add, ...)``).

    Example:
      >>> sums = row_sums(logits, training_rows(ds, n_max), "mse")
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
