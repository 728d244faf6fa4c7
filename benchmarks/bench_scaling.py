"""How the cost of a run-step scales with lanes, p and N, against the matmul limit.

    python benchmarks/bench_scaling.py [--plot benchmarks/scaling.png]   # ~5 min on 2 cores

For each setting: grok_jax's time per run-step (two runs of different length,
compiled programs reused, so compilation and host work cancel), the FLOP limit
6·n_train·N·p at the float32 matmul rate measured in the same run, and the
achieved fraction of it.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np



sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_speed import grok_step_time, limit_step_time, matmul_rate  # noqa: E402  (splits the CPU into cores)

ALPHA = 0.5
SERIES = {
    "lanes": [(41, 128, n) for n in (2, 8, 32, 64)],
    "p": [(p, 128, 8) for p in (23, 41, 61, 97)],
    "N": [(41, n, 8) for n in (64, 128, 256, 512)],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plot", help="write a PNG of the table here")
    args = parser.parse_args()
    rate = matmul_rate()
    print(f"# float32 matmul rate: {rate / 1e9:.0f} GFLOP/s; α = {ALPHA}; 1 lane per device")
    print(f"{'vary':>5} {'p':>4} {'N':>5} {'lanes':>5} {'ms/run-step':>12} {'limit ms':>9} {'of limit':>8}")
    rows = {}
    for name, settings in SERIES.items():
        for p, width, lanes in settings:
            ours = float(np.min(grok_step_time(p, width, ALPHA, lanes, lanes_per_device=1, rounds=3)))
            limit = limit_step_time(p, width, ALPHA, rate)
            rows.setdefault(name, []).append((p, width, lanes, ours, limit))
            print(f"{name:>5} {p:>4} {width:>5} {lanes:>5} {ours * 1e3:>12.3f} {limit * 1e3:>9.3f} {limit / ours:>8.0%}",
                  flush=True)
    if args.plot:
        plot(rows, args.plot)


def plot(rows: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axs = plt.subplots(1, 3, figsize=(12, 3.4), constrained_layout=True)
    for ax, (name, series) in zip(axs, rows.items()):
        index = {"p": 0, "N": 1, "lanes": 2}[name]
        x = [r[index] for r in series]
        ax.plot(x, [r[3] * 1e3 for r in series], "o-", label="grok_jax")
        ax.plot(x, [r[4] * 1e3 for r in series], "k--", label="matmul limit")
        ax.set_xlabel(name)
        ax.set_ylabel("ms per run-step")
        ax.set_xscale("log", base=2)
        if name == "lanes":  # flat: per-lane cost does not grow with the grid
            ax.set_ylim(0, 1.3 * max(r[3] * 1e3 for r in series))
        else:
            ax.set_yscale("log")
        fixed = {"lanes": "p 41, N 128", "p": "N 128, 8 lanes", "N": "p 41, 8 lanes"}[name]
        ax.set_title(f"vary {name} ({fixed})", fontsize=10)
    axs[0].legend()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
