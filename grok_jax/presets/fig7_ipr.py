"""Figure 7 (IPR): the Transformer's embedding IPR, init vs final, at wd 10 and 50, α 0.5
(quick: 0.9) and ξ 0.2, from Figure 7a's run (the same store). The paper: much lower
values than the MLP's (0-0.4), rising with weight decay."""

from grok_jax.presets import figure_config, pick
from grok_jax.presets.fig7_transformer import transformer_wd_run


def get_config(scale: str = "quick"):
    config = figure_config("Transformer embedding IPR histograms, init vs final, per weight decay",
                           "ipr_histograms", transformer=transformer_wd_run(scale))
    config.options.bins = 25  # histogram bins over [0, 1]
    config.options.select = {"alpha": pick(scale, 0.5, 0.9, 0.5), "xi": pick(scale, 0.0, 0.2, 0.2)}  # cells drawn
    return config
