"""Appendix Q: how many neurons can be pruned (lowest IPR first, no retraining) before
the test accuracy drops, against the width, over seeds.

lr 0.005, wd 1, α 0.5, no label noise (the appendix names no ξ; set ``runs.widths.xi``
to change it). A network's prunable count is the number of neurons zeroed before
the test accuracy first falls below 90%; networks that never reach 90% are left out.
"""

from grok_jax.presets import Claim, figure_config, pick, run_config


def get_config(scale: str = "quick"):
    run = run_config(scale)
    run.lr = 0.005  # AdamW learning rate
    run.wd = 1.0  # weight decay
    run.alpha = 0.5  # data fraction
    run.xi = 0.0  # corruption fraction
    run.sweep.width = pick(scale, (16, 32), (64, 128, 256, 512), (500, 1000, 2000, 5000, 10000))  # static axis
    run.sweep.seed = pick(scale, (0, 1), (0, 1, 2, 3), tuple(range(40)))  # seeds per width
    run.plot.x, run.plot.y = "width", None
    config = figure_config("neurons prunable (lowest IPR first) before the test accuracy drops, against the width",
                           "prunable", widths=run)
    config.options.fractions = pick(scale, (), (), tuple(i / 200 for i in range(201)))  # () = every count
    config.options.threshold = 0.9  # test accuracy below which the network counts as broken
    config.claims = (Claim("App. Q: the number of prunable neurons grows with the width", _grows,
                           why="the mean prunable count over seeds strictly increases from each width to the "
                               "next (a wider network adds neurons that can go)"),)
    return config


def _grows(summary):
    widths = sorted(summary["widths"].items(), key=lambda kv: int(kv[0]))
    means = [v["mean"] for _, v in widths]
    holds = None not in means and all(b > a for a, b in zip(means, means[1:]))
    return holds, ", ".join(f"N {w}: {v['mean']}" for w, v in widths)
