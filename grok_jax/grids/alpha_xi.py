"""Data fraction α × corruption fraction ξ, one panel per weight decay (Figure 3 layout).

The paper's scale sweeps 17 α × 19 ξ × 4 wd; the small default is a coarser grid
at p = 41 that finishes in minutes on a laptop CPU.
"""

from grok_jax.config import base_config


def get_config(scale: str = "small"):
    config = base_config(scale)  # small: p 41, N 128, 1000 steps; paper: p 97, N 500, 2000
    if scale == "paper":
        config.sweep.alpha = tuple(round(0.1 + 0.05 * i, 2) for i in range(17))  # α = 0.1 ... 0.9 (y axis)
        config.sweep.xi = tuple(round(0.05 * i, 2) for i in range(19))  # ξ = 0 ... 0.9 (x axis)
        config.sweep.wd = (0.0, 5.0, 15.0, 20.0)  # one panel per weight decay
    else:
        config.sweep.alpha = (0.3, 0.4, 0.5, 0.6, 0.7)  # data fraction (y axis)
        config.sweep.xi = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)  # corruption fraction (x axis)
        config.sweep.wd = (0.0, 5.0, 10.0, 16.0)  # one panel per weight decay
    config.plot.x, config.plot.y = "xi", "alpha"  # heatmap axes; wd makes the panels
    return config
