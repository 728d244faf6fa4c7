"""Figure 2: grokking without label noise, accuracy and mean IPR over steps (α 0.5, ξ 0, wd 5)."""

from grok_jax.presets import Claim, figure_config, lane, pick, run_config


def get_config(scale: str = "quick"):
    run = run_config(scale)
    run.alpha = 0.5  # data fraction
    run.xi = 0.0  # no corrupted labels
    run.wd = 5.0  # weight decay
    run.log_every = pick(scale, 20, 10, 20)  # dense curves
    config = figure_config("accuracy and mean IPR over steps without label noise: the IPR rises as the network "
                           "groks", "dynamics", clean=run)
    config.options.rows = ("accuracy", "ipr")  # panels, top to bottom
    config.claims = (Claim("Fig. 2: without label noise the network groks and its mean IPR ends high", _grokked,
                           why="test accuracy ≥ 90% at a logged step (the phase rule's threshold) and final mean "
                                "IPR > 0.5: a random network's neurons have mean IPR ≈ 0.1 (0.09 at p 41), one "
                                "above 0.5 puts most of each neuron's weight on one frequency"),)
    return config


def _grokked(summary: dict) -> tuple[bool, str]:
    run = lane(summary)
    return run["grok_step"] is not None and run["final_ipr"] > 0.5, (
        f"grokking step {run['grok_step']}, final mean IPR {run['final_ipr']:.3f}")
