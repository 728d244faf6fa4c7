"""A seconds-long grid for tests and smoke runs: 2 wd × 2 ξ × 2 seeds at p = 11."""

from grok_jax.config import base_config

SCALES = ("small",)  # one size only: --scale=paper is refused rather than ignored


def get_config(scale: str = "small"):
    config = base_config(scale)
    config.p = 11  # tiny modulus: 121 pairs
    config.width = 32  # tiny hidden layer
    config.steps = 60  # a few steps: enough to move the metrics, not to grok
    config.log_every = 20  # 4 logged points (steps 0, 20, 40, 60)
    config.alpha = 0.6  # 72 training pairs
    config.sweep.wd = (0.0, 5.0)  # weight decay values (y axis)
    config.sweep.xi = (0.0, 0.3)  # corruption fractions (x axis)
    config.sweep.seed = (0, 1)  # seeds, aggregated into a majority phase
    config.plot.x, config.plot.y = "xi", "wd"  # heatmap axes
    return config
