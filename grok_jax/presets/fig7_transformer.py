"""Figure 7a: Transformer phase diagrams over α × ξ at two weight decays.

The paper names wd 10 and 50 (at lr 0.001 a decay of 1% and 5% of every weight per
step) and shows more generalization at the larger. Neither value reproduces under any
of the authors' four settings (parameterization × optimizer path) at p 97, at learning
rates from 0.0003 to 0.1: with the default μP-like parameterization the N(0, 1)
embeddings collapse before the network learns, and from wd 20 on nothing is learned in
3000 steps. With the standard parameterization (the authors' s = 0, one AdamW) the
trend shows from wd 1 to 10 (α 0.5, seeds 0-2): wd 1 memorizes, wd 3 is Coexistence at
ξ 0.1 and Memorization at ξ 0.3, wd 10 inverts at ξ 0.1-0.3 (8 of 9 lanes Full
Inversion), and the mean embedding IPR rises from 0.04-0.07 to 0.12-0.47. The
paper-scale preset runs wd 3 and 10 with it and the paper's 3 seeds; on a coarse
sub-grid of it (α 0.3-0.7 × ξ 0-0.5) its claim holds: 5 vs 8 cells with the three
seeds' majority (5 vs 9, 5 vs 6, 4 vs 8 at seeds 0, 1, 2; ``figures/README.md``,
"Figure 7", has the numbers). Quick: the paper-scale setting at p 41, d 32 (standard,
lr 0.001, 3000 steps), wd 1 and 3: 1 vs 3 cells at seed 0 (a small margin: 1 vs 1 and
1 vs 4 at seeds 1 and 2); at p 23 in 1500 steps no setting tried gave more than one
cell."""

from grok_jax.presets import GENERALIZING, figure_config, more_cells, pick
from grok_jax.presets._architectures import transformer_run, with_paper_seeds

WD = {"tiny": (10.0, 50.0), "quick": (1.0, 3.0), "paper": (3.0, 10.0)}  # one panel each


def transformer_wd_run(scale: str):
    """The run of Figure 7a's phase diagrams and embedding IPR histograms."""
    run = transformer_run(scale)
    run.sweep.wd = WD[scale]
    run.transformer.parameterization = pick(scale, "mup", "standard", "standard")  # the trend's setting (module doc)
    if scale == "quick":  # the trend needs more data and steps than p 23 in 1500 (module doc)
        run.p, run.lr, run.steps = 41, 0.001, 3000
    return with_paper_seeds(run, scale)


def get_config(scale: str = "quick"):
    low, high = WD[scale]
    config = figure_config(f"Transformer phase diagrams α × ξ at wd {low:g} and {high:g}", "phases",
                           transformer=transformer_wd_run(scale))
    config.claims = (more_cells("Fig. 7a: the Transformer", "wd", low, high, GENERALIZING),)
    return config
