"""The 3-layer ReLU MLP of the paper's §2.2 / Fig. 7b (flax): width N, no biases.

``f(m, n) = W3 h2``, ``h2 = φ(W2 h1)``, ``h1 = φ(U e_m + V e_n)`` with φ = ReLU, optional post-activation BatchNorm and dropout after each
hidden layer. The one-hot first layer is a gather of ``U`` and ``V`` rows
(``(p, N)`` each, input-major like the two-layer MLP); ``W2`` is ``(N, N)`` and ``W3``
``(N, p)``. Init (``parameterization``): ``"standard"`` draws every weight from
N(0, 2/fan_in) (fan-in 2p for the one-hot layer, N for the others); ``"lazy"`` from
N(0, 2/N^(2/3)) (App. G.3).

Neuron groups: ``"hidden"`` (the first hidden layer; IPR of its ``U`` and ``V`` columns
over each operand's one-hot block, averaged) and ``"hidden2"`` (the second; IPR of its
``W3`` row over the p outputs).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import ml_collections

from grok_jax.metrics import ipr
from grok_jax.models import Inputs, ModelSpec, Variables, register
from grok_jax.models.layers import BatchNorm, RowDropout, apply_module, init_module

PARAMETERIZATIONS = ("standard", "lazy")


def init_stds(p: int, width: int, parameterization: str) -> tuple[float, float, float]:
    """Standard deviations of the three layers' weights."""
    if parameterization == "lazy":
        std = (2.0 / width ** (2.0 / 3.0)) ** 0.5
        return std, std, std
    return (2.0 / (2 * p)) ** 0.5, (2.0 / width) ** 0.5, (2.0 / width) ** 0.5


class MLP3Module(nn.Module):
    """The network itself; :class:`MLP3` adapts it to the model interface."""

    p: int
    width: int
    batchnorm: bool = False
    bn_stats: str = "running"
    parameterization: str = "standard"

    @nn.compact
    def __call__(self, inputs: Inputs, train: bool, rate: jax.Array | float = 0.0,
                 mask: dict[str, jax.Array] | None = None) -> jax.Array:
        s1, s2, s3 = init_stds(self.p, self.width, self.parameterization)
        U = self.param("U", nn.initializers.normal(s1), (self.p, self.width))
        V = self.param("V", nn.initializers.normal(s1), (self.p, self.width))
        W2 = self.param("W2", nn.initializers.normal(s2), (self.width, self.width))
        W3 = self.param("W3", nn.initializers.normal(s3), (self.width, self.p))
        h = U[inputs.m] + V[inputs.n]
        for layer, (group, weight) in enumerate((("hidden", W2), ("hidden2", None))):
            h = jax.nn.relu(h)
            if self.batchnorm:
                h = BatchNorm(self.bn_stats, name=f"bn{layer + 1}")(h, inputs.weight, train)
            h = RowDropout(name=f"dropout{layer + 1}")(h, inputs.pair, rate, train)
            if mask is not None and group in mask:
                h = h * mask[group]
            if weight is not None:
                h = h @ weight
        return h @ W3


class MLP3(NamedTuple):
    """The :class:`grok_jax.models.Model` ``"mlp3"`` (see the module doc)."""

    p: int
    width: int
    batchnorm: bool = False
    bn_stats: str = "running"
    parameterization: str = "standard"

    @property
    def module(self) -> MLP3Module:
        return MLP3Module(self.p, self.width, self.batchnorm, self.bn_stats, self.parameterization)

    @property
    def groups(self) -> dict[str, int]:
        return {"hidden": self.width, "hidden2": self.width}

    @property
    def batch_coupled(self) -> bool:
        return self.batchnorm

    @property
    def eval_stats(self) -> str:
        return "training_rows" if self.batchnorm and self.bn_stats == "full_batch" else "running"

    @property
    def param_dims(self) -> dict[str, tuple[str, ...]]:
        dims = {"params.U": ("operand", "hidden"), "params.V": ("operand", "hidden"),
                "params.W2": ("hidden", "hidden2"), "params.W3": ("hidden2", "logit")}
        if self.batchnorm:
            for i, group in ((1, "hidden"), (2, "hidden2")):
                dims.update({f"params.bn{i}.scale": (group,), f"params.bn{i}.shift": (group,),
                             f"batch_stats.bn{i}.mean": (group,), f"batch_stats.bn{i}.var": (group,)})
        return dims

    @property
    def row_flops(self) -> float:
        return 2.0 * self.width * (self.width + self.p)  # the one-hot layer is a gather

    @property
    def row_floats(self) -> float:
        return 16.0 * self.width + 4.0 * self.p

    @property
    def eval_floats(self) -> float:
        return 4.0 * self.width + 3.0 * self.p

    @property
    def n_params(self) -> int:
        return self.width * (3 * self.p + self.width)

    def init(self, key: jax.Array) -> Variables:
        return init_module(self.module, key)

    def apply(self, variables: Variables, inputs: Inputs, *, train: bool, dropout_rate: jax.Array | float = 0.0,
              dropout_key: jax.Array | None = None, neuron_mask: dict[str, jax.Array] | None = None
              ) -> tuple[jax.Array, Variables]:
        return apply_module(self.module, variables, inputs, train, dropout_rate, dropout_key, neuron_mask)

    def neuron_ipr(self, params: Any) -> dict[str, jax.Array]:
        first = (ipr(params["U"], axis=0) + ipr(params["V"], axis=0)) / 2
        return {"hidden": first, "hidden2": ipr(params["W3"], axis=1)}

    def norm_leaves(self, params: Any) -> dict[str, jax.Array]:
        return {k: params[k] for k in ("U", "V", "W2", "W3")}



def options() -> ml_collections.ConfigDict:
    """The section ``config.mlp3`` of the config."""
    o = ml_collections.ConfigDict()
    # init: "standard" N(0, 2/fan_in) or "lazy" N(0, 2/N^(2/3)) (App. G.3); a sweep axis
    o.parameterization = "standard"
    return o


def defaults(scale: str) -> dict:
    """The paper's settings (Fig. 7b) where they differ from the two-layer MLP's."""
    return {"steps": 5000} if scale == "paper" else {}


def _make(config, readout_columns: int | None = None) -> MLP3:
    return MLP3(config.p, config.width, config.batchnorm, config.bn_stats, config.mlp3.parameterization)


def _describe(config, options, swept) -> list[str]:
    init = [] if {"model", "parameterization"} & swept else [f"{options['parameterization']} init"]
    return ([] if "width" in swept else [f"N={config['width']}"]) + init


SPEC = register("mlp3", ModelSpec(
    factory=_make, title="3-layer ReLU MLP", options=options(), choices={"parameterization": PARAMETERIZATIONS},
    axes=("parameterization",), defaults=defaults, batchnorm=True, describe=_describe))
