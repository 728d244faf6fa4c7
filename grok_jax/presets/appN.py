"""Appendix N: ReLU instead of the quadratic activation, beside the quadratic one."""

from grok_jax.presets import figure_config
from grok_jax.presets._variants import wd_xi_run


def get_config(scale: str = "quick"):
    run = wd_xi_run(scale)
    run.sweep.activation = ("quad", "relu")  # one panel each (a static axis: two programs, one store)
    return figure_config("phase diagrams wd × ξ, quadratic and ReLU activation", "phases", activation=run)
