"""Appendix G: dropout in the Transformer, dropout × ξ at α 0.5 without weight decay."""

from grok_jax.presets import figure_config, pick
from grok_jax.presets._architectures import transformer_run


def get_config(scale: str = "quick"):
    run = transformer_run(scale)
    del run.sweep["alpha"]
    run.alpha = 0.5  # data fraction
    run.wd = 0.0  # dropout is the only regularizer
    run.sweep.dropout = pick(scale, (0.0, 0.5), (0.0, 0.2, 0.4, 0.6), (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6))  # y axis
    run.plot.x, run.plot.y = "xi", "dropout"
    return figure_config("Transformer phase diagram dropout × ξ (wd 0)", "phases", transformer_dropout=run)
