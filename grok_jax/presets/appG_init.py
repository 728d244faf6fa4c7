"""Appendix G.3: the 3-layer MLP's two parameterizations, standard N(0, 2/fan_in) and
lazy N(0, 2/N^(2/3)), phase diagrams wd × ξ at α 0.5."""

from grok_jax.presets import figure_config, pick
from grok_jax.presets._architectures import mlp3_run


def get_config(scale: str = "quick"):
    run = mlp3_run(scale)
    del run.sweep["alpha"]
    run.alpha = 0.5  # data fraction
    run.sweep.wd = pick(scale, (0.0, 5.0), (0.0, 1.0, 2.0, 5.0, 10.0), (0.0, 1.0, 2.0, 5.0, 10.0, 20.0))  # y
    run.sweep.parameterization = ("standard", "lazy")  # one panel each (a static axis)
    run.plot.x, run.plot.y = "xi", "wd"
    return figure_config("3-layer MLP phase diagrams wd × ξ, standard and lazy init", "phases", mlp3_init=run)
