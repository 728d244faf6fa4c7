"""Figure 3 (left): phase diagrams over α × ξ, one panel per weight decay (0, 5, 15, 20).

The quick network (p 41, N 128) forgets only from wd 15 on, at small ξ (``appE``): its
panels are wd 0, 4, 8, 12, where its Coexistence and Inversion phases are.
"""

from grok_jax.presets import INVERSION, Claim, alpha_axis, count, figure_config, pick, run_config, xi_axis


def get_config(scale: str = "quick"):
    run = run_config(scale)
    run.sweep.alpha = alpha_axis(scale)  # data fraction (y axis)
    run.sweep.xi = pick(scale, xi_axis(scale), (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5),
                        xi_axis(scale))  # corruption fraction (x axis)
    run.sweep.wd = pick(scale, (0.0, 15.0), (0.0, 4.0, 8.0, 12.0), (0.0, 5.0, 15.0, 20.0))  # panels
    run.plot.x, run.plot.y = "xi", "alpha"
    config = figure_config("phase diagrams α × ξ, one panel per weight decay", "phases", alpha_wd=run)
    config.claims = claims(scale)
    return config


def claims(scale: str):
    """Weight decay trades Memorization for Coexistence and Inversion; too much forgets."""
    some, more, most = pick(scale, (15.0, 15.0, 15.0), (4.0, 8.0, 12.0), (5.0, 15.0, 20.0))

    def fewer_memorization(summary):
        at0, at = (count(summary, ("Memorization",), wd=w) for w in (0.0, some))
        return at < at0, f"{at0} Memorization cells at wd 0, {at} at wd {some:g}"

    def inversion(summary):
        at0, at = (count(summary, INVERSION, wd=w) for w in (0.0, more))
        return at0 == 0 and at > 0, f"{at0} Inversion cells at wd 0, {at} at wd {more:g}"

    def forgetting(summary):
        n = count(summary, ("Forgetting",), wd=most)
        return n > 0, f"{n} Forgetting cells at wd {most:g}"

    return (
        Claim(f"Fig. 3: weight decay shrinks Memorization (fewer cells at wd {some:g} than at wd 0)",
              fewer_memorization, why="strictly fewer Memorization cells on the same α × ξ grid: the paper "
                                      "states a direction, not a size"),
        Claim(f"Fig. 3: Inversion needs weight decay (none at wd 0, some at wd {more:g})", inversion,
              why="Partial or Full Inversion cells counted; wd 0 has none in the paper's panel"),
        Claim(f"Fig. 3: too much weight decay ends in Forgetting (cells at wd {most:g})", forgetting,
              scales=("paper",), why="at least one Forgetting cell; quick panels stop at wd 12, before the "
                                     "quick network forgets (from wd 15), so only the paper's wd 20 is expected"),
    )
