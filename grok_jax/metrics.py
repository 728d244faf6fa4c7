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

from grok_jax.data import Dataset
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


def ipr(x: jax.Array) -> jax.Array:
    """IPR of ``x`` along its last axis (rfft convention, see module doc).

    Example:
      >>> float(ipr(jnp.cos(2 * jnp.pi * 3 * jnp.arange(11) / 11)))  # doctest: +ELLIPSIS
      1.0...
    """
    # IPR is scale-free; normalizing first keeps tiny (decayed) rows from underflowing.
    x = x / jnp.max(jnp.abs(x), axis=-1, keepdims=True)
    power = jnp.square(jnp.abs(jnp.fft.rfft(x, axis=-1)))
    return jnp.sum(jnp.square(power), axis=-1) / jnp.square(jnp.sum(power, axis=-1))


def neuron_ipr(params: Params) -> jax.Array:
    """``IPR_k = (IPR(U_k) + IPR(V_k) + IPR(W_k)) / 3`` for every hidden neuron k.

    A neuron whose weights weight decay drove to exactly zero has no spectrum: its
    IPR is NaN, and the network IPR (a ``nanmean``) leaves it out.
    """
    return (ipr(params["U"].T) + ipr(params["V"].T) + ipr(params["W"])) / 3.0


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
        onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
        return jnp.mean(jnp.square(logits - onehot), axis=-1)
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=-1)[:, 0]


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``x`` over ``mask``; NaN when the mask is empty (e.g. ξ = 0)."""
    return jnp.sum(jnp.where(mask, x, 0.0)) / jnp.sum(mask)


def evaluate(all_logits: jax.Array, ds: Dataset, all_labels: jax.Array, loss: str) -> dict:
    """Accuracy and loss metrics from the logits of all ``p²`` pairs.

    ``all_logits`` and ``all_labels`` are in pair order ``m·p + n``; the training
    rows are gathered from them through ``ds.order``. A prediction is correct when
    the label's logit is the unique maximum: a tie (e.g. the all-zero logits of a
    network whose weights decayed to zero) counts as wrong. (This is argmax without
    its variadic reduction, which costs as much as the evaluation's matmul on CPU.)
    """
    top = jnp.max(all_logits, axis=-1)
    unique = jnp.sum(all_logits == top[:, None], axis=-1) == 1

    def hits(logits: jax.Array, labels: jax.Array, top: jax.Array, unique: jax.Array) -> jax.Array:
        return unique & (jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0] == top)

    idx = ds.order[: ds.m.shape[0]]
    row_logits = all_logits[idx]
    hit = hits(row_logits, ds.label, top[idx], unique[idx])
    hit_true = hits(row_logits, ds.true_label, top[idx], unique[idx])
    clean = ds.train & ~ds.corrupt
    return {
        "train_loss": masked_mean(loss_terms(row_logits, ds.label, loss), ds.train),
        "test_loss": masked_mean(loss_terms(all_logits, all_labels, loss), ds.test),
        "train_acc": masked_mean(hit, ds.train),
        "test_acc": masked_mean(hits(all_logits, all_labels, top, unique), ds.test),
        "corrupt_acc": masked_mean(hit, ds.corrupt),
        "inversion_acc": masked_mean(hit_true, ds.corrupt),
        "clean_acc": masked_mean(hit_true, clean),
    }
