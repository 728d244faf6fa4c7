"""The 1-layer encoder-only Transformer of the paper's Fig. 7a (flax), the authors'
semantics (arXiv:2310.13061 and github.com/d-doshi/Grokking):

* the sequence is the two tokens (m, n): learned token embeddings ``embed``
  ``(p, d)`` and position embeddings ``pos`` ``(2, d)``, both N(0, 1);
* one block, residual: ``x ← x + attn(x)``, ``x ← x + mlp(x)``; ``heads`` heads of
  ``d/heads`` dims, scores divided by ``d_head`` (not its square root; see
  ``parameterization`` below); MLP ``4·d`` wide with ReLU; no biases; LayerNorm
  (PyTorch's ε 1e-5, scale only) before each sublayer only with ``layernorm=True``
  (off by default; theirs, ``if_ln``, also has a bias, and a third LayerNorm before
  the read-out: ll. 130, 160, 244-252 of the file below);
* logits at the last position: ``x · R / d`` (``R`` ``(d, p)``; with
  ``tie_embeddings=True`` ``R = embedᵀ``), the "s = 1" μP-style scaling (``/ sqrt(d)``
  with ``parameterization="standard"``);
* linear layers Kaiming-normal, fan-in, unit gain (std ``1/sqrt(fan_in)``).

Two settings of the authors' code that the paper does not name, as options
(``config.transformer.*``; references are to ``utils/models.py`` of
github.com/d-doshi/Grokking, commit 3d99179):

* ``parameterization``: their ``s`` (``"mup"``: s = 1, the default; ``"standard"``:
  s = 0). Scores are divided by ``d_head ** ((1 + s)/2)`` (``MultiHeadAttention``:
  ``self.power = 0.5 * (1. + config.s)``, l. 269, used l. 278), i.e. by ``d_head`` or
  ``sqrt(d_head)``; logits are multiplied by ``sqrt(1/d^(1+s))`` (the ``scale``
  buffer, l. 137, applied l. 161), i.e. ``1/d`` or ``1/sqrt(d)``. The init does not
  depend on ``s`` (``_init_weights``, ll. 140-146).
* ``optimizer``: their ``rescale_optim`` (``config_optimizers``, ll. 165-228).
  ``"single"`` (off, the default): one AdamW at ``lr`` over every parameter, weight
  decay on those with ``ndim > 1`` (timm's ``param_groups_weight_decay``, l. 227):
  every matrix here, embeddings included. (The LayerNorm scales of
  ``layernorm=True``, 1-d, are decayed here all the same: theirs are not.)
  ``"per_module"`` (on, ll. 170-198): one AdamW group per module, group learning
  rate ``lr · d^(s/2 − 1/2) · g`` (``d^(s/2-1/2)`` is 1 at s = 1, ``1/sqrt(d)`` at
  s = 0), each group decayed by its own learning rate times ``wd`` (PyTorch AdamW:
  ``w ← w·(1 − lr_g·wd_g) − lr_g·adam``), with ``g`` from the modules' ``g_scale``:
  query, key, value (their ``to_qkv``) and the attention output ``1/d`` (ll.
  264-265; l. 175), MLP input ``1/(d·sqrt(4))`` (``g_scale = 1/d`` times
  ``wide_factor^(-1/2)``, l. 293 and l. 179), MLP output ``1/(4d)`` (l. 299, l. 175),
  read-out 1 (l. 183); the token and position embeddings ``g = 1`` with **no**
  weight decay (ll. 189-192: at s = 0 they too learn at ``lr/sqrt(d)``); the
  LayerNorm scales (``layernorm=True``) at ``lr`` itself, not rescaled, with no
  weight decay (ll. 185-188). Tied embeddings are the embedding group (the read-out
  module is skipped, l. 181). The groups reach the optimizer through
  :meth:`Transformer.optimizer_groups` (see :class:`grok_jax.models.Model`).

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

import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from grok_jax.errors import ConfigError
from grok_jax.metrics import ipr
from grok_jax.models import Inputs, ModelSpec, OptimizerGroups, Variables, register
from grok_jax.models.layers import RowDropout, apply_module, init_module

KAIMING = nn.initializers.variance_scaling(1.0, "fan_in", "normal")  # std 1/sqrt(fan_in)
LEAVES = ("embed", "pos", "query", "key", "value", "out", "mlp_in", "mlp_out", "readout")
PARAMETERIZATIONS = ("mup", "standard")  # the authors' s = 1 and s = 0
OPTIMIZERS = ("single", "per_module")  # their rescale_optim off and on
MLP_RATIO = 4  # the MLP's width over d (their wide_factor)


def _s(parameterization: str) -> float:
    """The authors' ``s`` of a parameterization."""
    return {"mup": 1.0, "standard": 0.0}[parameterization]


def group_factors(d: int, parameterization: str) -> dict[str, tuple[float, bool]]:
    """Top-level parameter name -> (learning-rate factor, weight decay) of the
    authors' per-module AdamW groups (``rescale_optim``; see the module doc)."""
    base = d ** (_s(parameterization) / 2 - 0.5)
    attention = (base / d, True)
    return {"embed": (base, False), "pos": (base, False), "query": attention, "key": attention,
            "value": attention, "out": attention, "mlp_in": (base / (d * MLP_RATIO ** 0.5), True),
            "mlp_out": (base / (MLP_RATIO * d), True), "readout": (base, True),
            "ln1": (1.0, False), "ln2": (1.0, False)}


def _dense(features: int, name: str) -> nn.Dense:
    return nn.Dense(features, use_bias=False, kernel_init=KAIMING, name=name)


class TransformerModule(nn.Module):
    """The network itself; :class:`Transformer` adapts it to the model interface."""

    p: int
    d: int = 128
    heads: int = 4
    layernorm: bool = False
    tie_embeddings: bool = False
    parameterization: str = "mup"

    @nn.compact
    def __call__(self, inputs: Inputs, train: bool, rate: jax.Array | float = 0.0,
                 mask: dict[str, jax.Array] | None = None) -> jax.Array:
        d, h = self.d, self.heads
        mup = self.parameterization == "mup"
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
        # s = 1: / d_head; s = 0: / sqrt(d_head) (their d_head ** ((1 + s)/2))
        scores = jnp.einsum("...hc,...thc->...ht", q, k) / ((d // h) if mup else math.sqrt(d // h))
        heads_out = jnp.einsum("...ht,...thc->...hc", jax.nn.softmax(scores, axis=-1), v)
        attn = _dense(d, "out")(heads_out.reshape(*heads_out.shape[:-2], d))
        y = last + RowDropout(name="dropout_attn")(attn, inputs.pair, rate, train)
        b = nn.LayerNorm(epsilon=1e-5, use_bias=False, name="ln2")(y) if self.layernorm else y
        u = jax.nn.relu(_dense(4 * d, "mlp_in")(b))
        if mask is not None and "mlp" in mask:
            u = u * mask["mlp"]
        y = y + RowDropout(name="dropout_mlp")(_dense(d, "mlp_out")(u), inputs.pair, rate, train)
        scale = d if mup else math.sqrt(d)  # logits × sqrt(1/d^(1+s)): 1/d or 1/sqrt(d)
        if self.tie_embeddings:
            return y @ embed.T / scale
        return _dense(self.p, "readout")(y) / scale


class Transformer(NamedTuple):
    """The :class:`grok_jax.models.Model` ``"transformer"`` (see the module doc);
    ``d`` is the config's ``width``."""

    p: int
    d: int = 128
    heads: int = 4
    layernorm: bool = False
    tie_embeddings: bool = False
    parameterization: str = "mup"  # one of PARAMETERIZATIONS
    optimizer: str = "single"  # one of OPTIMIZERS

    @property
    def module(self) -> TransformerModule:
        return TransformerModule(self.p, self.d, self.heads, self.layernorm, self.tie_embeddings,
                                 self.parameterization)

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

    def optimizer_groups(self, params: Any) -> OptimizerGroups | None:
        """None with ``optimizer="single"`` (one AdamW); with ``"per_module"`` each
        leaf's learning-rate factor and weight decay, the authors' groups (module doc)."""
        if self.optimizer == "single":
            return None
        factors = group_factors(self.d, self.parameterization)
        per_leaf = lambda i: {name: jax.tree.map(lambda _: factors[name][i], sub)  # noqa: E731
                              for name, sub in params.items()}
        return OptimizerGroups(lr_scale=per_leaf(0), decay=per_leaf(1))


def options() -> ml_collections.ConfigDict:
    """The section ``config.transformer`` of the config (``width`` is its d)."""
    o = ml_collections.ConfigDict()
    o.heads = 4  # attention heads (must divide width, the embedding dimension)
    o.layernorm = False  # LayerNorm before each sublayer (the paper's has none)
    o.tie_embeddings = False  # read out with the token embedding (the paper's does not)
    # the authors' s: "mup" (s = 1: scores / d_head, logits / d) or "standard" (s = 0:
    # scores / sqrt(d_head), logits / sqrt(d)); a sweep axis
    o.parameterization = "mup"
    # their rescale_optim: "single" (one AdamW, every matrix decayed) or "per_module"
    # (an AdamW group per module, lr·d^(s/2-1/2)·factor, embeddings undecayed); a sweep axis
    o.optimizer = "single"
    return o


def defaults(scale: str) -> dict:
    """The paper's settings (Fig. 7a) where they differ from the two-layer MLP's; the
    small scale's are a CPU-sized stand-in."""
    return {"width": 128, "lr": 0.001, "steps": 3000} if scale == "paper" else {"width": 32, "lr": 0.002, "steps": 1500}


def check(config) -> None:
    """The heads split the embedding dimension (``width``) evenly."""
    heads = config.transformer.heads
    if not 1 <= heads <= 2**31 - 1:
        raise ConfigError(f"transformer.heads={heads!r} must be >= 1 (and at most {2**31 - 1})")
    if config.width % heads:
        raise ConfigError(f"transformer.heads={heads} does not divide width={config.width} (the transformer's "
                          "embedding dimension)")


def _make(config, readout_columns: int | None = None) -> Transformer:
    o = config.transformer
    return Transformer(config.p, config.width, o.heads, o.layernorm, o.tie_embeddings, o.parameterization,
                       o.optimizer)


def _describe(config, options, swept) -> list[str]:
    layernorm = ", LayerNorm" if options["layernorm"] else ""
    parts = [] if "width" in swept else [f"d={config['width']}, {options['heads']} heads{layernorm}"]
    # the non-default settings only (a store of an earlier version has neither)
    if options.get("parameterization", "mup") != "mup" and not {"model", "parameterization"} & swept:
        parts.append(f"{options['parameterization']} param.")
    if options.get("optimizer", "single") != "single" and not {"model", "optimizer"} & swept:
        parts.append(f"{options['optimizer'].replace('_', '-')} AdamW")
    return parts


SPEC = register("transformer", ModelSpec(
    factory=_make, title="1-layer Transformer", options=options(),
    choices={"parameterization": PARAMETERIZATIONS, "optimizer": OPTIMIZERS},
    axes=("parameterization", "optimizer"), defaults=defaults, check=check, describe=_describe))
