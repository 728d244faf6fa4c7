"""Appendix G.4: BatchNorm between the 3-layer MLP's layers, wd × ξ at α 0.5, beside none."""

from grok_jax.presets import figure_config, pick
from grok_jax.presets._architectures import mlp3_run


def _run(scale: str, batchnorm: bool):
    run = mlp3_run(scale)
    del run.sweep["alpha"]
    run.alpha = 0.5  # data fraction
    run.batchnorm = batchnorm  # post-activation BatchNorm after each hidden layer
    run.sweep.wd = pick(scale, (0.0, 5.0), (0.0, 1.0, 2.0, 5.0, 10.0), (0.0, 1.0, 2.0, 5.0, 10.0, 20.0))  # y
    run.plot.x, run.plot.y = "xi", "wd"
    return run


def get_config(scale: str = "quick"):
    config = figure_config("3-layer MLP phase diagrams wd × ξ with and without BatchNorm between layers", "phases",
                           mlp3_plain=_run(scale, False), mlp3_bn=_run(scale, True))
    config.options.panel = "batchnorm"  # the runs differ in this field: it labels the panels
    return config
