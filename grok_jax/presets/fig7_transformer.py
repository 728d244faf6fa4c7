"""Figure 7a: Transformer phase diagrams over α × ξ at weight decay 10 and 50 (lr 0.001:
a per-step decay of 1% and 5%). Quick: wd 1 and 3 at lr 0.002 (0.2% and 0.6% per
step): the small Transformer generalizes at α 0.9, ξ 0 at wd 3 (wd 5: Forgetting, Confusion)."""

from grok_jax.presets import figure_config, more_coexistence, pick
from grok_jax.presets._architectures import transformer_run


def transformer_wd_run(scale: str):
    """The run of Figure 7a's phase diagrams and embedding IPR histograms."""
    run = transformer_run(scale)
    run.sweep.wd = pick(scale, (10.0, 50.0), (1.0, 3.0), (10.0, 50.0))  # one panel each
    return run


def get_config(scale: str = "quick"):
    config = figure_config("Transformer phase diagrams α × ξ at wd 10 and 50", "phases",
                           transformer=transformer_wd_run(scale))
    low, high = pick(scale, (10.0, 50.0), (1.0, 3.0), (10.0, 50.0))
    config.claims = (more_coexistence("Fig. 7a: the Transformer", "wd", low, high),)
    return config
