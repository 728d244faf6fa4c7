"""Dropout probability × corruption fraction ξ at fixed α and no weight decay.

Dropout acts on the hidden pre-activation (as in the code of Doshi et al.,
arXiv:2310.13061); like weight decay it moves networks from memorizing the
corrupted labels towards inverting them.
"""

from grok_jax.config import base_config


def get_config(scale: str = "small"):
    config = base_config(scale)  # small: p 41, N 128, 1000 steps; paper: p 97, N 500, 2000
    config.alpha = 0.5  # data fraction, fixed
    config.wd = 0.0  # no weight decay: dropout is the only regularizer
    config.sweep.dropout = (0.0, 0.15, 0.3, 0.45, 0.6, 0.75, 0.9)  # dropout probability (y axis)
    if scale == "paper":
        config.sweep.xi = tuple(round(0.05 * i, 2) for i in range(19))  # ξ = 0 ... 0.9 (x axis)
        config.sweep.seed = (0, 1, 2)  # seeds, aggregated into a majority phase
    else:
        config.sweep.xi = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)  # ξ (x axis)
    config.plot.x, config.plot.y = "xi", "dropout"  # heatmap axes
    return config
