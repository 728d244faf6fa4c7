"""Appendix O: a wide network (N 5000 at paper scale; 512 at quick scale) beside the default width."""

from grok_jax.presets import figure_config, pick
from grok_jax.presets._variants import wd_xi_run


def get_config(scale: str = "quick"):
    run = wd_xi_run(scale)
    run.sweep.width = pick(scale, (24, 64), (128, 512), (500, 5000))  # one panel each (static axis)
    return figure_config("phase diagrams wd × ξ at the default and a large width", "phases", wide=run)
