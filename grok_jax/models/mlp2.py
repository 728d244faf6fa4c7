"""The two-layer MLP of the paper (Eq. 1): ``f(m, n) = W φ(U e_m + V e_n)``.

Parameters are stored input-major so that the one-hot first layer is a row
gather: ``U[i, k]`` is the paper's ``U_{k i}`` (shape ``(p, N)``), likewise ``V``,
and ``W[k, q]`` is the paper's ``W_{q k}`` (shape ``(N, p)``). No biases. Optional
BatchNorm of the post-activation features (Eq. 5). The forward and backward passes
are written by hand for speed (custom VJPs below); :class:`MLP2` puts them behind
the :class:`grok_jax.models.Model` interface.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from grok_jax.metrics import ipr
from grok_jax.models import Inputs, ModelSpec, Variables, register

Params = dict[str, jax.Array]
ACTIVATIONS = {"quad": jnp.square, "relu": jax.nn.relu}
BN_EPS = 1e-5  # PyTorch BatchNorm1d default
BN_MOMENTUM = 0.1  # PyTorch BatchNorm1d default: running ← 0.9·running + 0.1·batch
BN_STATS = ("running", "full_batch")  # see MLP2


class BNStats(NamedTuple):
    """Per-neuron mean and (biased) variance of the post-activation features."""

    mean: jax.Array
    var: jax.Array


def init_std(width: int) -> float:
    """Paper init scale: σ² = (16N)^(-2/3), i.e. σ = 0.5 / (2N)^(1/3)."""
    return (16.0 * width) ** (-1.0 / 3.0)


def init_params(key: jax.Array, p: int, width: int, batchnorm: bool = False) -> Params:
    """Draws every weight from ``Normal(0, σ²)``; BN scale 1 and shift 0.

    Example:
      >>> params = init_params(jax.random.key(0), p=11, width=32)
      >>> params["U"].shape, params["W"].shape
      ((11, 32), (32, 11))
    """
    ku, kv, kw = jax.random.split(key, 3)
    std = init_std(width)
    params = {
        "U": std * jax.random.normal(ku, (p, width)),
        "V": std * jax.random.normal(kv, (p, width)),
        "W": std * jax.random.normal(kw, (width, p)),
    }
    if batchnorm:
        params["bn_scale"] = jnp.ones(width)
        params["bn_shift"] = jnp.zeros(width)
    return params


def features(
    params: Params,
    m: jax.Array,
    n: jax.Array,
    activation: str,
    dropout_rate: jax.Array | float = 0.0,
    noise: jax.Array | None = None,
) -> jax.Array:
    """Hidden features ``φ(dropout(U e_m + V e_n))``, shape ``(len(m), N)``.

    Dropout (inverted, PyTorch semantics) acts on the pre-activation and only when
    ``noise`` (uniform draws in [0, 1) of that shape) is given: units whose draw is
    below the rate are zeroed, the rest scaled by 1/(1 − rate); a rate of 0 keeps
    every unit. The gradient is :func:`_first_layer`'s.
    """
    return _first_layer(params["U"], params["V"], m, n, jnp.asarray(dropout_rate, params["U"].dtype),
                        noise, activation)


def _activate(pre: jax.Array, rate: jax.Array, noise: jax.Array | None, activation: str) -> jax.Array:
    """``φ(dropout(pre))``, dropout only when ``noise`` is given (see :func:`features`)."""
    if noise is not None:
        keep = noise >= rate
        pre = jnp.where(keep, pre / (1.0 - rate), 0.0)
    return ACTIVATIONS[activation](pre)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _first_layer(U: jax.Array, V: jax.Array, m: jax.Array, n: jax.Array, rate: jax.Array,
                 noise: jax.Array | None, activation: str) -> jax.Array:
    """:func:`features` with a backward pass that gathers the pre-activations anew.

    Autodiff would keep the forward's two gathered ``(rows, N)`` arrays for the
    backward pass; XLA then writes them out and cannot fuse them into the
    activation. Here the forward is one fusion (gathers, add, activation) that
    writes only the features, and the backward regathers behind an optimization
    barrier (so that XLA does not merge the two): per step two fewer passes over
    ``(rows, N)`` arrays, 5-30% of a CPU step (p 97 to 23). dU and dV are
    autodiff's (the segment sums of d(pre) over m and n); the dropout rate and
    noise get no gradient, and there is no forward-mode (``jvp``) rule.
    """
    return _activate(U[m] + V[n], rate, noise, activation)


def _first_layer_fwd(U, V, m, n, rate, noise, activation):
    return _first_layer(U, V, m, n, rate, noise, activation), (U, V, m, n, rate, noise)


def _first_layer_bwd(activation, residuals, dh):
    U, V, m, n, rate, noise = jax.lax.optimization_barrier(residuals)
    _, vjp = jax.vjp(lambda pre: _activate(pre, rate, noise, activation), U[m] + V[n])
    (dpre,) = vjp(dh)
    dpre, m, n = dpre.reshape(-1, dpre.shape[-1]), m.reshape(-1), n.reshape(-1)  # rows of any shape
    # Indices are in range by construction: no bounds checks in the scatter-adds.
    dU = jax.ops.segment_sum(dpre, m, num_segments=U.shape[0], mode="promise_in_bounds")
    dV = jax.ops.segment_sum(dpre, n, num_segments=V.shape[0], mode="promise_in_bounds")
    # rate and noise are never differentiated: zero cotangents, which XLA drops
    return dU, dV, None, None, jnp.zeros_like(rate), None if noise is None else jnp.zeros_like(noise)


_first_layer.defvjp(_first_layer_fwd, _first_layer_bwd)


def bn_stats(h: jax.Array, weight: jax.Array) -> BNStats:
    """Batch statistics of ``h`` ``(rows, N)`` over the rows with ``weight`` 1
    (padding excluded): the mean and the biased variance."""
    w = weight[:, None] / jnp.sum(weight)
    mean = jnp.sum(w * h, axis=0)
    return BNStats(mean, jnp.sum(w * jnp.square(h - mean), axis=0))


def running_stats(running: BNStats, batch: BNStats, count: jax.Array, momentum: float = BN_MOMENTUM) -> BNStats:
    """PyTorch ``BatchNorm1d``'s update of the running statistics by a batch of
    ``count`` rows: ``(1 − momentum)·running + momentum·batch``, with the batch's
    unbiased variance (``· count/(count − 1)``)."""
    var = batch.var * count / (count - 1)
    return BNStats((1 - momentum) * running.mean + momentum * batch.mean, (1 - momentum) * running.var + momentum * var)


def readout(params: Params, h: jax.Array, stats: BNStats | None = None, columns: int | None = None,
            mask: jax.Array | None = None) -> jax.Array:
    """Logits ``W · h`` (after BatchNorm of ``h`` when ``stats`` is given, and with
    each neuron's output multiplied by ``mask``, shape ``(N,)``, when given).

    ``columns`` (at least p): the product is computed with ``W`` padded by zero
    columns to this width, which some CPU kernels multiply faster (see
    :func:`grok_jax.layouts.readout_columns`); the logits are the same.
    """
    p = params["W"].shape[1]
    if columns is not None and columns < p:
        raise ValueError(f"columns={columns}: the readout product needs at least p={p} columns")
    if stats is not None:
        h = (h - stats.mean) * jax.lax.rsqrt(stats.var + BN_EPS)
        h = h * params["bn_scale"] + params["bn_shift"]
    if mask is not None:
        h = h * mask
    return _product(h, params["W"], columns or p)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _product(h: jax.Array, w: jax.Array, columns: int) -> jax.Array:
    """``h @ w`` (computed ``columns`` wide) whose backward computes ``dwᵀ = rᵀ·h``,
    shape ``(p, N)``, behind an optimization barrier, then transposes it (a small
    ``p × N`` copy). The backward products stay ``p`` wide. No forward-mode rule.

    XLA folds the transpose into the product otherwise, and on a CPU the ``(N, p)``
    form contracts the rows in a kernel two to three times slower at small p
    (p 31, N 128, one lane per device: 25 vs 50-80 µs).
    """
    p = w.shape[1]
    if columns == p:
        return h @ w
    return (h @ jnp.pad(w, ((0, 0), (0, columns - p))))[..., :p]


def _product_fwd(h, w, columns):
    return _product(h, w, columns), (h, w)


def _product_bwd(columns, residuals, r):
    h, w = residuals
    rows = tuple(range(r.ndim - 1))  # contract the rows (and any leading row axes)
    dwt = jax.lax.dot_general(r, h, ((rows, rows), ((), ())))
    return r @ w.T, jax.lax.optimization_barrier(dwt).T


_product.defvjp(_product_fwd, _product_bwd)


def analytic_solution(key: jax.Array, p: int, width: int) -> Params:
    """The paper's periodic solution (Eq. 2) that computes ``(m + n) mod p``.

    Each neuron gets a random frequency in ``1..(p-1)/2`` and random phases; every
    neuron's IPR is exactly 1 (rfft convention), and for ``width ≫ p`` the network
    classifies every pair correctly.
    """
    kf, ku, kv = jax.random.split(key, 3)
    freq = jax.random.randint(kf, (width,), 1, (p - 1) // 2 + 1)
    phi_u = jax.random.uniform(ku, (width,), minval=-jnp.pi, maxval=jnp.pi)
    phi_v = jax.random.uniform(kv, (width,), minval=-jnp.pi, maxval=jnp.pi)
    # Amplitude (2/N)^(1/3): the three layers multiply to 2/N, which with ~N/4
    # aligned terms gives unit logits. The paper's Eq. 2 prints the exponent as -1/3, which
    # would give logits of order N²/4 (same argmax and IPR, but far from one-hot).
    scale = (2.0 / width) ** (1.0 / 3.0)
    angle = 2 * jnp.pi * jnp.outer(jnp.arange(p), freq) / p  # (p, N)
    return {
        "U": scale * jnp.cos(angle + phi_u),
        "V": scale * jnp.cos(angle + phi_v),
        "W": scale * jnp.cos(-angle - phi_u - phi_v).T,
    }


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


def dropout_noise(key: jax.Array, pair: jax.Array, width: int) -> jax.Array:
    """Uniform draws ``pair.shape + (width,)``, one key per example (its pair index),
    so that a row's mask depends neither on the batch nor on the padding."""
    draw = lambda i: jax.random.uniform(jax.random.fold_in(key, i), (width,))  # noqa: E731
    return jax.vmap(draw)(pair.reshape(-1)).reshape(*pair.shape, width)


class MLP2(NamedTuple):
    """The :class:`grok_jax.models.Model` ``"mlp2"``: one neuron group, ``"hidden"``.

    BatchNorm (``batchnorm``) has PyTorch ``BatchNorm1d`` semantics in train mode
    (batch statistics over the real rows, biased variance). ``bn_stats`` says what
    eval mode normalizes with: ``"running"`` (PyTorch's, momentum 0.1, unbiased
    variance, starting at mean 0 and variance 1) or ``"full_batch"`` (the statistics
    of all training rows at the current parameters). ``readout_columns``: see
    :func:`readout`.

    Example:
      >>> from grok_jax.models import Inputs
      >>> model = MLP2(p=11, width=32, activation="quad", batchnorm=False)
      >>> variables = model.init(jax.random.key(0))
      >>> jax.tree.map(jnp.shape, variables["params"])          # U, V: operand × hidden
      {'U': (11, 32), 'V': (11, 32), 'W': (32, 11)}
      >>> pairs = jnp.arange(3)                      # (0, 0), (0, 1), (0, 2) at p = 11
      >>> inputs = Inputs(m=pairs // 11, n=pairs % 11, pair=pairs, weight=jnp.ones(3, bool))
      >>> logits, _ = model.apply(variables, inputs, train=False)
      >>> logits.shape
      (3, 11)
    """

    p: int
    width: int
    activation: str
    batchnorm: bool
    bn_stats: str = "running"
    readout_columns: int | None = None

    @property
    def groups(self) -> dict[str, int]:
        return {"hidden": self.width}

    @property
    def batch_coupled(self) -> bool:
        return self.batchnorm

    @property
    def eval_stats(self) -> str:
        return "training_rows" if self.batchnorm and self.bn_stats == "full_batch" else "running"

    @property
    def param_dims(self) -> dict[str, tuple[str, ...]]:
        dims = {"params.U": ("operand", "hidden"), "params.V": ("operand", "hidden"), "params.W": ("hidden", "logit")}
        if self.batchnorm:
            dims.update({leaf: ("hidden",) for leaf in (
                "params.bn_scale", "params.bn_shift", "batch_stats.mean", "batch_stats.var")})
        return dims

    @property
    def row_flops(self) -> float:
        return 2.0 * self.width * self.p  # the one-hot layer is a gather

    @property
    def row_floats(self) -> float:
        return 8.0 * self.width + 4.0 * self.p

    @property
    def eval_floats(self) -> float:
        return 3.0 * (self.width + self.p)

    @property
    def n_params(self) -> int:
        return 3 * self.p * self.width

    def init(self, key: jax.Array) -> Variables:
        variables = {"params": init_params(key, self.p, self.width, self.batchnorm)}
        if self.batchnorm:
            variables["batch_stats"] = {"mean": jnp.zeros(self.width), "var": jnp.ones(self.width)}
        return variables

    def apply(self, variables: Variables, inputs: Inputs, *, train: bool, dropout_rate: jax.Array | float = 0.0,
              dropout_key: jax.Array | None = None, neuron_mask: dict[str, jax.Array] | None = None
              ) -> tuple[jax.Array, Variables]:
        params = variables["params"]
        state = {k: v for k, v in variables.items() if k != "params"}
        noise = dropout_noise(dropout_key, inputs.pair, self.width) if train and dropout_key is not None else None
        h = features(params, inputs.m, inputs.n, self.activation, dropout_rate, noise)
        stats = None
        if self.batchnorm:
            if train:
                stats, count = bn_stats(h, inputs.weight), jnp.sum(inputs.weight)
                running = BNStats(**state["batch_stats"])
                new = running_stats(running, stats, count) if self.bn_stats == "running" else stats
                state = {"batch_stats": new._asdict()}
            else:
                stats = BNStats(**state["batch_stats"])
        mask = None if neuron_mask is None else neuron_mask["hidden"]
        return readout(params, h, stats, self.readout_columns, mask), state

    def neuron_ipr(self, params: Params) -> dict[str, jax.Array]:
        return {"hidden": neuron_ipr(params)}

    def norm_leaves(self, params: Params) -> dict[str, jax.Array]:
        return {k: params[k] for k in "UVW"}


def options() -> ml_collections.ConfigDict:
    """The section ``config.mlp2`` of the config."""
    o = ml_collections.ConfigDict()
    o.activation = "quad"  # φ: "quad" (x², the paper's Eq. 1) or "relu" (App. N); a sweep axis
    return o


def _make(config, readout_columns: int | None = None) -> MLP2:
    return MLP2(config.p, config.width, config.mlp2.activation, config.batchnorm, config.bn_stats, readout_columns)


def _describe(config, options, swept) -> list[str]:
    return ([] if "width" in swept else [f"N={config['width']}"]) + (
        [] if "activation" in swept else [f"φ={options['activation']}"])


SPEC = register("mlp2", ModelSpec(
    factory=_make, title="2-layer MLP", options=options(), choices={"activation": tuple(ACTIVATIONS)},
    axes=("activation",), batchnorm=True, describe=_describe))
