"""Weight decay × corruption fraction ξ at fixed α (Doshi et al., arXiv:2310.13061, Figs. 1, 3).

Small scale (default) finishes in minutes on a laptop CPU; ``--scale=paper`` is the
paper's setting (p = 97, N = 500, 2000 steps, 3 seeds).
"""

from grok_jax.config import base_config


def get_config(scale: str = "small"):
    config = base_config(scale)  # small: p 41, N 128, 1000 steps; paper: p 97, N 500, 2000
    config.alpha = 0.5  # data fraction, fixed
    if scale == "paper":
        config.sweep.wd = (0.0, 2.5, 5.0, 7.5, 10.0, 12.5, 15.0, 17.5, 20.0)  # weight decay (y axis)
        config.sweep.xi = tuple(round(0.05 * i, 2) for i in range(19))  # ξ = 0, 0.05, ..., 0.9 (x axis)
        config.sweep.seed = (0, 1, 2)  # seeds, aggregated into a majority phase
    else:
        config.sweep.wd = (0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0, 20.0)  # weight decay (y axis)
        config.sweep.xi = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)  # ξ (x axis)
    config.plot.x, config.plot.y = "xi", "wd"  # heatmap axes
    return config
