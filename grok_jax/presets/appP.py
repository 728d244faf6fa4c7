"""Appendix P: modular multiplication beside addition (almost identical phase diagrams)."""

from grok_jax.presets import figure_config
from grok_jax.presets._variants import wd_xi_run


def get_config(scale: str = "quick"):
    run = wd_xi_run(scale)
    run.sweep.task = ("add", "mul")  # one panel each (a static axis: two programs, one store)
    return figure_config("phase diagrams wd × ξ for modular addition and multiplication", "phases", task=run)
