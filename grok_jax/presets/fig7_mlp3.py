"""Figure 7b: 3-layer ReLU MLP phase diagrams over α × ξ, one panel per weight decay."""

from grok_jax.presets import figure_config, more_cells, pick
from grok_jax.presets._architectures import mlp3_run, with_paper_seeds


def get_config(scale: str = "quick"):
    run = mlp3_run(scale)
    run.sweep.wd = pick(scale, (0.0, 5.0), (0.0, 2.0, 5.0), (0.0, 2.0, 5.0))  # one panel each
    config = figure_config("3-layer ReLU MLP phase diagrams α × ξ, one panel per weight decay", "phases",
                           mlp3=with_paper_seeds(run, scale))
    config.claims = (more_cells("Fig. 7b: the 3-layer ReLU MLP", "wd", 0.0, 5.0),)
    return config
