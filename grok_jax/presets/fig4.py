"""Figure 4: per-neuron IPR histograms, init vs final, in Coexistence, Partial and Full Inversion.

The run is Figure 1's (the same store serves both).
"""

from grok_jax.presets import figure_config
from grok_jax.presets.fig1 import noisy_run


def get_config(scale: str = "quick"):
    config = figure_config("per-neuron IPR histograms at init and after training, one panel per weight decay",
                           "ipr_histograms", noisy=noisy_run(scale))
    config.options.bins = 25  # histogram bins over [0, 1]
    return config
