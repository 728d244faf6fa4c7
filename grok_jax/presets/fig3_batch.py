"""Figure 3 (right): phase diagrams over α × ξ with BatchNorm, one panel per batch size.

Mini-batches follow App. A: steps × 256/B and lr × sqrt(B/256), so every batch size
trains the same number of epochs (``grok_jax.config.scale_for_batch``); each batch
size is a run (a store) of its own, since their step counts differ.
"""

from grok_jax.config import scale_for_batch
from grok_jax.data import split_sizes
from grok_jax.presets import alpha_axis, figure_config, pick, run_config, xi_axis


def bn_run(scale: str, batch_size: int):
    run = run_config(scale)
    run.batchnorm = True  # post-activation BatchNorm (Eq. 5), PyTorch running statistics
    run.sweep.alpha = tuple(a for a in alpha_axis(scale)  # data fraction (y axis), one-row batches left out
                            if split_sizes(a, 0.0, run.task, run.p)[0] % batch_size != 1)
    run.sweep.xi = xi_axis(scale)  # corruption fraction (x axis)
    run.plot.x, run.plot.y = "xi", "alpha"
    return scale_for_batch(run, batch_size)


def get_config(scale: str = "quick"):
    sizes = pick(scale, (32,), (64, 256), (8, 64, 256))  # batch sizes, one panel each
    config = figure_config("phase diagrams α × ξ with BatchNorm, one panel per batch size", "phases",
                           **{f"bn_batch{b}": bn_run(scale, b) for b in sizes})
    config.options.panel = "batch_size"  # the runs differ in this field: it labels the panels
    return config
