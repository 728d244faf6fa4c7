"""Runs of the paper's other architectures (§2.2, Fig. 7, App. G)."""

from grok_jax.presets import alpha_axis, pick, run_config, xi_axis


def transformer_run(scale: str):
    """The 1-layer Transformer of Fig. 7a: d 128, 4 heads, AdamW lr 0.001, MSE, 3000
    steps at p 97. Quick: p 23, d 32, lr 0.002, 1500 steps, α 0.5-0.9 (a CPU-sized
    Transformer generalizes from larger data fractions: at α 0.9 and wd 3 it reaches
    96% test accuracy by step 750)."""
    run = run_config(scale)
    run.model = "transformer"
    run.p = pick(scale, 11, 23, 97)  # modulus
    run.width = pick(scale, 16, 32, 128)  # embedding dimension d
    run.transformer.heads = 4  # attention heads
    run.lr = pick(scale, 0.002, 0.002, 0.001)  # AdamW learning rate
    run.steps = pick(scale, 60, 1500, 3000)  # AdamW steps
    run.log_every = pick(scale, 20, 50, 50)  # metrics every this many steps
    run.sweep.alpha = pick(scale, alpha_axis(scale), (0.5, 0.7, 0.9), alpha_axis(scale))  # data fraction (y axis)
    run.sweep.xi = pick(scale, xi_axis(scale), (0.0, 0.1, 0.2, 0.3), xi_axis(scale))  # ξ (x axis)
    run.plot.x, run.plot.y = "xi", "alpha"
    return run


def with_paper_seeds(run, scale: str):
    """``run`` with the paper's 3 seeds at paper scale (Fig. 7a and 7b: §3 of the
    paper), one elsewhere: a cell's phase is then its seeds' majority."""
    if scale == "paper":
        run.sweep.seed = (0, 1, 2)  # seeds of each cell
    return run


def mlp3_run(scale: str):
    """The 3-layer ReLU MLP of Fig. 7b: N 500, 5000 steps at p 97; quick: p 31, N 128, 1000 steps."""
    run = run_config(scale)
    run.model = "mlp3"
    run.p = pick(scale, 11, 31, 97)  # modulus
    run.width = pick(scale, 24, 128, 500)  # hidden width N
    run.steps = pick(scale, 60, 1000, 5000)  # AdamW steps
    run.log_every = pick(scale, 20, 50, 50)  # metrics every this many steps
    run.sweep.alpha = alpha_axis(scale)  # data fraction (y axis)
    run.sweep.xi = pick(scale, xi_axis(scale), (0.0, 0.1, 0.2, 0.3, 0.4), xi_axis(scale))  # ξ (x axis)
    run.plot.x, run.plot.y = "xi", "alpha"
    return run
