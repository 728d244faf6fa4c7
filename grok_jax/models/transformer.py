"""The 1-layer encoder-only Transformer of the paper's Fig. 7a (flax), the authors'
semantics (PAPER.md §2):

* the sequence is the two tokens (m, n): learned token embeddings ``embed``
  ``(p, d)`` and position embeddings ``pos`` ``(2, d)``, both N(0, 1);
* one block, residual: ``x ← x + attn(x)``, ``x ← x + mlp(x)``; ``heads`` heads of
  ``d/heads`` dims, scores divided by ``d_head`` (not its square root); MLP ``4·d``
  wide with ReLU; no biases; LayerNorm (PyTorch's ε 1e-5, scale only) before each
  sublayer only with ``layernorm=True`` (off by default);
* logits at the last position: ``x · R / d`` (``R`` ``(d, p)``; with
  ``tie_embeddings=True`` ``R = embedᵀ``), the "s = 1" μP-style scaling;
* linear layers Kaiming-normal, fan-in, unit gain (std ``1/sqrt(fan_in)``).

Only the last position is read out, and the block has one layer: the query, the
attention output and the MLP are computed at that position alone (keys and values at
both). Without LayerNorm the query, key and value projections are linear in the
embeddings, so they are computed once per call for the p tokens and the 2 positions
and gathered per row. The logits are those of the full computation (tested against a
NumPy forward of the whole block); the per-row work is about 40% of it.
Dropout (rate per lane) acts on each sublayer's output before its residual sum.

Neuron groups: ``"embed"`` (the d embedding dims; IPR of each ``embed`` column over
the p tokens, the paper's embedding IPR) and ``"mlp"`` (the 4·d MLP neurons; the mean
of the IPR of a neuron's input weights seen from the tokens, ``embed · W_in[:, k]``,
and of its output seen at the logits, ``W_out[k] · R``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from grok_jax.metrics import ipr
from grok_jax.models import Inputs, Variables
from grok_jax.models.layers import RowDropout, apply_module, init_module

KAIMING = nn.initializers.variance_scaling(1.0, "fan_in", "normal")  # std 1/sqrt(fan_in)
LEAVES = ("embed", "pos", "query", "key", "value", "out", "mlp_in", "mlp_out", "readout")


def _dense(features: int, name: str) -> nn.Dense:
    return nn.Dense(features, use_bias=False, kernel_init=KAIMING, name=name)


class TransformerModule(nn.Module):
    """The network itself; :class:`Transformer` adapts it to the model interface."""

    p: int
    d: int = 128
    heads: int = 4
    layernorm: bool = False
    tie_embeddings: bool = False

    @nn.compact
    def __call__(self, inputs: Inputs, train: bool, rate: jax.Array | float = 0.0,
                 mask: dict[str, jax.Array] | None = None) -> jax.Array:
        d, h = self.d, self.heads
        embed = self.param("embed", nn.initializers.normal(1.0), (self.p, d))
        pos = self.param("pos", nn.initializers.normal(1.0), (2, d))
        if mask is not None and "embed" in mask:
            embed, pos = embed * mask["embed"], pos * mask["embed"]
        split = lambda y: y.reshape(*y.shape[:-1], h, d // h)  # noqa: E731  (..., heads, d_head)
        query, key, value = _dense(d, "query"), _dense(d, "key"), _dense(d, "value")
        last = embed[inputs.n] + pos[1]  # the residual stream at the last position
        if self.layernorm:
            x = jnp.stack([embed[inputs.m] + pos[0], last], axis=-2)  # (..., 2, d)
            a = nn.LayerNorm(epsilon=1e-5, use_bias=False, name="ln1")(x)
            q, k, v = query(a[..., -1, :]), key(a), value(a)
        else:
            # Without LayerNorm the projections are linear in the embeddings: a row's
            # query, keys and values are rows of per-token tables (embed · W, p × d, once
            # per call) plus the positions' (pos · W), gathered instead of multiplied.
            tables = [(f(embed), f(pos)) for f in (query, key, value)]
            (q_tok, q_pos), (k_tok, k_pos), (v_tok, v_pos) = tables
            q = q_tok[inputs.n] + q_pos[1]
            k = jnp.stack([k_tok[inputs.m] + k_pos[0], k_tok[inputs.n] + k_pos[1]], axis=-2)
            v = jnp.stack([v_tok[inputs.m] + v_pos[0], v_tok[inputs.n] + v_pos[1]], axis=-2)
        q, k, v = split(q), split(k), split(v)  # q: the last position's only
        scores = jnp.einsum("...hc,...thc->...ht", q, k) / (d // h)
        heads_out = jnp.einsum("...ht,...thc->...hc", jax.nn.softmax(scores, axis=-1), v)
        attn = _dense(d, "out")(heads_out.reshape(*heads_out.shape[:-2], d))
        y = last + RowDropout(name="dropout_attn")(attn, inputs.pair, rate, train)
        b = nn.LayerNorm(epsilon=1e-5, use_bias=False, name="ln2")(y) if self.layernorm else y
        u = jax.nn.relu(_dense(4 * d, "mlp_in")(b))
        if mask is not None and "mlp" in mask:
            u = u * mask["mlp"]
        y = y + RowDropout(name="dropout_mlp")(_dense(d, "mlp_out")(u), inputs.pair, rate, train)
        if self.tie_embeddings:
            return y @ embed.T / d
        return _dense(self.p, "readout")(y) / d


class Transformer(NamedTuple):
    """The :class:`grok_jax.models.Model` ``"transformer"`` (see the module doc);
    ``d`` is the config's ``width``."""

    p: int
    d: int = 128
    heads: int = 4
    layernorm: bool = False
    tie_embeddings: bool = False

    @property
    def module(self) -> TransformerModule:
        return TransformerModule(self.p, self.d, self.heads, self.layernorm, self.tie_embeddings)

    @property
    def groups(self) -> dict[str, int]:
        return {"embed": self.d, "mlp": 4 * self.d}

    @property
    def batch_coupled(self) -> bool:
        return False

    @property
    def eval_stats(self) -> str:
        return "running"

    @property
    def param_dims(self) -> dict[str, tuple[str, ...]]:
        dims = {"params.embed": ("operand", "embed"), "params.pos": ("position", "embed"),
                "params.query.kernel": ("embed", "attn"), "params.key.kernel": ("embed", "attn"),
                "params.value.kernel": ("embed", "attn"), "params.out.kernel": ("attn", "embed"),
                "params.mlp_in.kernel": ("embed", "mlp"), "params.mlp_out.kernel": ("mlp", "embed")}
        if not self.tie_embeddings:
            dims["params.readout.kernel"] = ("embed", "logit")
        if self.layernorm:
            dims.update({"params.ln1.scale": ("embed",), "params.ln2.scale": ("embed",)})
        return dims

    @property
    def row_flops(self) -> float:
        # per row: attention output and MLP at the last position, readout; with LayerNorm also
        # the query there and keys and values at both (else gathered from per-token tables)
        return 2.0 * ((14 if self.layernorm else 9) * self.d * self.d + self.d * self.p)

    @property
    def row_floats(self) -> float:
        return 40.0 * self.d + 4.0 * self.p

    @property
    def eval_floats(self) -> float:
        return 12.0 * self.d + 3.0 * self.p

    @property
    def n_params(self) -> int:
        return (2 - self.tie_embeddings) * self.p * self.d + 2 * self.d + 12 * self.d * self.d

    def init(self, key: jax.Array) -> Variables:
        return init_module(self.module, key)

    def apply(self, variables: Variables, inputs: Inputs, *, train: bool, dropout_rate: jax.Array | float = 0.0,
              dropout_key: jax.Array | None = None, neuron_mask: dict[str, jax.Array] | None = None
              ) -> tuple[jax.Array, Variables]:
        return apply_module(self.module, variables, inputs, train, dropout_rate, dropout_key, neuron_mask)

    def neuron_ipr(self, params: Any) -> dict[str, jax.Array]:
        embed = params["embed"]
        readout = embed.T if self.tie_embeddings else params["readout"]["kernel"]
        seen_in = embed @ params["mlp_in"]["kernel"]  # (p, 4d): each MLP neuron's input per token
        seen_out = params["mlp_out"]["kernel"] @ readout  # (4d, p): its output per logit
        return {"embed": ipr(embed, axis=0), "mlp": (ipr(seen_in, axis=0) + ipr(seen_out, axis=1)) / 2}

    def norm_leaves(self, params: Any) -> dict[str, jax.Array]:
        leaves = {name: params[name] if name in ("embed", "pos") else params[name]["kernel"]
                  for name in LEAVES if name in params}
        return leaves
