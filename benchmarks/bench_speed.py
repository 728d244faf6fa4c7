"""grok_jax vs the PyTorch baseline vs the machine's matmul limit, in one run.

    pip install torch==2.13.0          # the baseline only; not a grok_jax dependency
    python benchmarks/bench_speed.py   # about 10 minutes on a 2-core CPU

Prints one table per benchmark of issue "Performance" with the ratios, and the
process's peak memory. Time per run-step is the difference of two runs of
different length divided by the extra steps, so compilation, data set-up and the
host side cancel out. The limit is three n_train×N×p matmuls per run-step
(6·n_train·N·p FLOPs; the one-hot layer is a gather) at the float32 matmul rate
measured here on a large square product.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from typing import Callable

import grok_jax
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_baseline  # noqa: E402
import torch_transformer  # noqa: E402

from grok_jax.config import base_config  # noqa: E402
from grok_jax.data import split_sizes  # noqa: E402
from grok_jax import layouts, plan as planning, programs, runner  # noqa: E402
from grok_jax.execution import run_sweep  # noqa: E402
from grok_jax.train import Lane  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

grok_jax.use_cpu_cores()  # as the command line does, before anything runs JAX

QUIET = dict(progress=False, log=lambda s: None)


def matmul_rate(sizes: tuple[int, ...] = (2048, 4096), reps: int = 5) -> float:
    """Best float32 FLOP/s of a large square matmul on the default device."""
    return max(runner.matmul_rate(n, reps) for n in sizes)


def config(p: int, width: int, alpha: float, steps: int, log_every: int | None = None, **sweep):
    c = base_config()
    c.p, c.width, c.alpha, c.steps = p, width, alpha, steps
    c.log_every = log_every or steps
    for name, values in sweep.items():
        c.sweep[name] = tuple(values)
    return c


def timed(c, results: list | None = None, **kw) -> float:
    """Wall seconds of ``run_sweep(c)``; its dataset is appended to ``results``."""
    start = time.perf_counter()
    ds = run_sweep(c, **QUIET, **kw)
    seconds = time.perf_counter() - start
    if results is not None:
        results.append(ds)
    return seconds


def chunk_programs(c, lanes_per_device: int | None = None) -> tuple[Callable, list]:
    """The sweep's compiled chunk program for config ``c`` (run once) and its chunks."""
    devices = jax.devices()
    platform = devices[0].platform
    plan = planning.make_plan(c, planning.Resources(4.0, lanes_per_device, len(devices), platform,
                                                    layouts.layout_rules(platform)))
    mesh = Mesh(np.asarray(devices[:plan.n_devices]), ("lanes",))
    sharding = NamedSharding(mesh, PartitionSpec("lanes"))
    chunks = [Lane(*(jax.device_put(a[chunk.lanes], sharding) for a in plan.lanes)) for chunk in plan.chunks]
    program = programs.compiled_train(plan.config(plan.chunks[0]), plan.chunks[0], chunks[0], mesh).fn
    jax.block_until_ready(program(chunks[0]))
    return program, chunks


def run_seconds(program: Callable, chunks: list) -> float:
    """Wall seconds of one compiled chunk program run over ``chunks``."""
    start = time.perf_counter()
    jax.block_until_ready([program(chunk) for chunk in chunks])
    return time.perf_counter() - start


def grok_step_time(p: int, width: int, alpha: float, lanes: int, lanes_per_device: int | None = None,
                   rounds: int = 5, between: Callable[[], None] | None = None) -> np.ndarray:
    """Seconds per run-step of ``lanes`` seeds, one estimate per round: the compiled
    chunk programs of the sweep timed for two run lengths in each round; the
    difference per extra step. ``between`` runs before each round's timings (for a
    reference measurement taken at the same moment)."""
    n_train, _ = split_sizes(alpha, 0.0, "add", p)
    # ~2 s of work, at least 60 steps (paper scale: ~10 s per round, so the noise of this
    # VM averages out over the difference of two runs)
    extra = int(np.clip(3e11 / (lanes * 6.0 * n_train * width * p), 60, 1000))
    runs = [chunk_programs(config(p, width, alpha, steps, seed=range(lanes)), lanes_per_device)
            for steps in (10, 10 + extra)]
    times = np.zeros((rounds, 2))
    for r in range(rounds):
        if between is not None:
            between()
        for i, (program, chunks) in enumerate(runs):
            times[r, i] = run_seconds(program, chunks)
    return (times[:, 1] - times[:, 0]) / extra / lanes


def limit_step_time(p: int, width: int, alpha: float, rate: float) -> float:
    n_train, _ = split_sizes(alpha, 0.0, "add", p)
    return 6.0 * n_train * width * p / rate


def table(title: str, rows: list[tuple[str, str]]) -> None:
    print(f"\n## {title}")
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")


def bench_paper_scale(lanes: int, rounds: int = 5) -> None:
    p, width, alpha = 97, 500, 0.5
    # This VM's speed drifts from minute to minute: each round measures the matmul rate
    # right before timing grok_jax, and the fraction of the limit is taken per round.
    rates: list[float] = []
    ours = grok_step_time(p, width, alpha, lanes, rounds=rounds,
                          between=lambda: rates.append(matmul_rate((2048, 4096), reps=3)))
    fractions = np.array([limit_step_time(p, width, alpha, r) for r in rates]) / ours
    torch_step = torch_baseline.time_per_step(p, width, alpha)
    step = float(np.median(ours))
    table(f"paper scale: p {p}, N {width}, α {alpha}, {lanes} lanes, time per run-step ({rounds} rounds)", [
        ("grok_jax", f"{step * 1e3:.2f} ms (median; rounds {ours.min() * 1e3:.2f}-{ours.max() * 1e3:.2f})"),
        ("PyTorch baseline", f"{torch_step * 1e3:.2f} ms"),
        ("matmul rate", f"{np.median(rates) / 1e9:.0f} GFLOP/s (median; rounds {min(rates) / 1e9:.0f}-"
                        f"{max(rates) / 1e9:.0f})"),
        ("matmul limit", f"{limit_step_time(p, width, alpha, float(np.median(rates))) * 1e3:.2f} ms"),
        ("speed-up vs baseline", f"{torch_step / step:.2f}x  (target >= 2.5x)"),
        ("fraction of the limit", f"{np.median(fractions):.0%} median of the rounds ({fractions.min():.0%}-"
                                  f"{fractions.max():.0%}); best step / best rate "
                                  f"{limit_step_time(p, width, alpha, max(rates)) / ours.min():.0%}  (target >= 70%)"),
    ])


def bench_small_grid(steps: int, rounds: int = 2) -> None:
    p, width, alpha = 31, 128, 0.5
    axes = dict(wd=(0.0, 2.0, 5.0, 10.0), xi=(0.0, 0.1, 0.2, 0.35), seed=(0, 1, 2, 3))  # 64 lanes
    c = config(p, width, alpha, steps, log_every=20, **axes)
    with_compile = timed(c)  # first use of these shapes: compiles
    datasets: list = []
    ours, theirs = [], []
    for _ in range(rounds):  # the VM's speed drifts: interleaved, best of each
        ours.append(timed(c, datasets))
        runs, seconds = torch_baseline.run_grid(p, width, alpha, list(axes["xi"]), list(axes["wd"]),
                                                list(axes["seed"]), steps)
        theirs.append(seconds)
    ds, without, torch_total = datasets[-1], min(ours), min(theirs)
    table(f"small grid: p {p}, N {width}, α {alpha}, 64 lanes, {steps} steps, whole-grid wall time", [
        ("grok_jax incl. compilation", f"{with_compile:.1f} s"),
        ("grok_jax excl. compilation", f"{without:.1f} s (best of {', '.join(f'{t:.1f}' for t in ours)})"),
        ("PyTorch loop", f"{torch_total:.1f} s (best of {', '.join(f'{t:.1f}' for t in theirs)})"),
        ("speed-up excl. compilation", f"{torch_total / without:.1f}x  (target >= 8x)"),
        ("speed-up incl. compilation", f"{torch_total / with_compile:.1f}x  (target >= 3x)"),
    ])
    # Same science: seed-mean final accuracies per (wd, ξ) cell, both implementations.
    final = ds.isel(step=-1).mean("seed")
    diffs = {"train_acc": [], "test_acc": []}
    for wd in axes["wd"]:
        for xi in axes["xi"]:
            cell = [r for r in runs if r["wd"] == wd and r["xi"] == xi]
            for name in diffs:
                theirs = np.mean([r[name] for r in cell])
                diffs[name].append(abs(float(final[name].sel(wd=wd, xi=xi)) - theirs))
    table("baseline check: |grok_jax − PyTorch| of seed-mean final accuracy over the 16 cells", [
        (name, f"mean {np.mean(d):.3f}, max {np.max(d):.3f}") for name, d in diffs.items()
    ])


def paired_logging_cost(end_only, every_10, rounds: int, chunks: int = 4) -> np.ndarray:
    """The logging cost once per round: the two configs' compiled chunk programs run
    back to back on the same ``chunks`` chunks (in alternating order), so that the
    VM's drift, which moves whole-run times by ±2%, mostly cancels within a pair."""
    runs = [chunk_programs(c) for c in (end_only, every_10)]
    times = np.zeros((rounds, 2))
    for r in range(rounds):
        for i in (0, 1) if r % 2 else (1, 0):
            program, lanes = runs[i]
            times[r, i] = run_seconds(program, lanes[:chunks])
    return times[:, 1] / times[:, 0] - 1


def bench_logging(steps: int) -> None:
    rows = []
    for p, width, lanes in ((31, 128, 64), (97, 500, 8)):
        n = steps if p == 31 else steps // 10
        end_only = config(p, width, 0.5, n, seed=range(lanes))
        every_10 = config(p, width, 0.5, n, log_every=10, seed=range(lanes))
        for c in (end_only, every_10):
            timed(c)  # compiles
        # Interleaved and best of 5: the VM's speed drifts more than the effect measured.
        t = np.min([[timed(c) for c in (end_only, every_10)] for _ in range(5)], axis=0)
        rows.append((f"p {p}, N {width}, {lanes} lanes, {n} steps",
                     f"end only {t[0]:.2f} s, every 10 steps {t[1]:.2f} s: {t[1] / t[0] - 1:+.1%} (target <= 10%)"))
        cost = paired_logging_cost(end_only, every_10, rounds=40 if p == 31 else 10)
        rows.append(("  same, compiled chunk programs in pairs",
                     f"median {np.median(cost):+.1%}, quartiles {np.percentile(cost, 25):+.1%} to "
                     f"{np.percentile(cost, 75):+.1%} over {len(cost)} pairs"))
    table("logging cost", rows)


def bench_compile_groups(steps: int) -> None:
    """The paper's 17 α at p 97, N 500: one program padded to α 0.9 vs compile groups."""
    alphas = tuple(round(0.1 + 0.05 * i, 2) for i in range(17))
    rows = []
    for groups in (1, 8):
        c = config(97, 500, 0.5, steps)
        c.sweep.alpha, c.compile_groups = alphas, groups
        n_groups = len(planning.make_plan(c, planning.Resources(n_devices=len(jax.devices()))).compile_groups)
        first = timed(c)  # compiles
        again = timed(c)  # every program cached
        rows.append((f"compile_groups={groups}: {n_groups} program(s)",
                     f"{first:.1f} s incl. compilation, {again:.1f} s excl."))
    table(f"α grid: 17 α (0.1-0.9), p 97, N 500, {steps} steps, 1 seed, whole-grid wall time", rows)


def bench_minibatch(steps: int, batch_size: int = 64, rounds: int = 2) -> None:
    """Mini-batch training at p 97, N 500: grok_jax's ``batch_size`` sweep vs the
    baseline's shuffling DataLoader loop, 2 wd × 2 seeds, accuracies only at the end."""
    p, width, alpha = 97, 500, 0.5
    axes = dict(wd=(0.0, 1.0), seed=(0, 1))
    runs = len(axes["wd"]) * len(axes["seed"])
    c = config(p, width, alpha, steps, **axes)
    c.batch_size = batch_size  # a field of base_config: 0 = full batch
    with_compile = timed(c)  # first use of these shapes: compiles
    datasets: list = []
    ours, theirs = [], []
    for _ in range(rounds):  # interleaved, best of each
        ours.append(timed(c, datasets))
        results, _ = torch_baseline.run_grid(p, width, alpha, [0.0], list(axes["wd"]), list(axes["seed"]),
                                             steps, batch_size)
        theirs.append(sum(r["seconds_train"] for r in results))
    without, torch_total = min(ours), min(theirs)
    per_step = lambda seconds: f"{seconds / (runs * steps) * 1e3:.3f} ms per run-step"  # noqa: E731
    table(f"mini-batch: p {p}, N {width}, α {alpha}, batch {batch_size}, {runs} runs (2 wd × 2 seeds), "
          f"{steps} steps, wall time of all runs", [
        ("grok_jax run_sweep incl. compilation", f"{with_compile:.1f} s"),
        ("grok_jax run_sweep excl. compilation", f"{without:.1f} s (best of {', '.join(f'{t:.1f}' for t in ours)}): "
                                                 f"{per_step(without)}"),
        ("PyTorch DataLoader loop", f"{torch_total:.1f} s (sum of the runs' training loops, best of "
                                    f"{', '.join(f'{t:.1f}' for t in theirs)}): {per_step(torch_total)}"),
        ("speed-up excl. compilation", f"{torch_total / without:.1f}x"),
    ])
    # Different shuffles and draws, same task: seed-mean final accuracies per wd side by side.
    final = datasets[-1].isel(step=-1).mean("seed")
    rows = []
    for wd in axes["wd"]:
        pairs = [(float(final[name].sel(wd=wd)), np.mean([r[name] for r in results if r["wd"] == wd]))
                 for name in ("train_acc", "test_acc")]
        rows.append((f"wd {wd:g}", ", ".join(f"{name} {a:.3f} / {b:.3f}"
                                             for name, (a, b) in zip(("train", "test"), pairs))))
    table("mini-batch check: seed-mean final accuracy per wd, grok_jax / PyTorch", rows)


def bench_transformer(lanes: int = 16, rounds: int = 3, extra: int = 3) -> None:
    """The Transformer at d 128, p 97, α 0.5: time per run-step of a ``lanes``-lane
    grid (the chunk programs timed at two run lengths, per extra step) against the
    authors' PyTorch block, one run at a time; and the fraction of the matmul limit
    for the FLOPs of their block (attention and MLP at both positions) and for the
    FLOPs grok_jax does (query, attention output and MLP at the last position)."""
    p, d, alpha = 97, 128, 0.5

    def transformer_config(steps: int):
        c = config(p, d, alpha, steps, seed=range(lanes))
        c.model, c.lr = "transformer", 1e-3
        return c

    runs = [chunk_programs(transformer_config(steps)) for steps in (2, 2 + extra)]
    times, rates = np.zeros((rounds, 2)), []
    for r in range(rounds):
        rates.append(matmul_rate((2048,), reps=3))
        for i, (program, chunks) in enumerate(runs):
            times[r, i] = run_seconds(program, chunks)
    ours = (times[:, 1] - times[:, 0]) / extra / lanes
    theirs = torch_transformer.time_per_step(p, d, alpha)
    n_train, _ = split_sizes(alpha, 0.0, "add", p)
    rate = float(np.median(rates))
    full = 6.0 * n_train * (24 * d * d + 2 * d * p) / rate  # their block's matmuls, forward and backward
    done = 6.0 * n_train * (9 * d * d + d * p) / rate  # out, MLP at the last position; q, k, v gathered
    step = float(np.median(ours))
    table(f"transformer: p {p}, d {d}, 4 heads, α {alpha}, {lanes} lanes, time per run-step ({rounds} rounds)", [
        ("grok_jax", f"{step * 1e3:.1f} ms (median; rounds {ours.min() * 1e3:.1f}-{ours.max() * 1e3:.1f})"),
        ("PyTorch baseline (authors' block)", f"{theirs * 1e3:.1f} ms"),
        ("speed-up vs baseline", f"{theirs / step:.2f}x  (target >= 3x)"),
        ("matmul rate", f"{rate / 1e9:.0f} GFLOP/s (median of the rounds)"),
        ("fraction of the limit, their FLOPs", f"{full / step:.0%} (limit {full * 1e3:.1f} ms)"),
        ("fraction of the limit, FLOPs done", f"{done / step:.0%} (limit {done * 1e3:.1f} ms)"),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000,
                        help="steps of the small grid (groups: a tenth of them, minibatch: twice)")
    parser.add_argument("--paper_lanes", type=int, default=16)
    parser.add_argument("--only", choices=("paper", "small", "logging", "groups", "minibatch", "transformer"),
                        help="run one benchmark")
    args = parser.parse_args()
    devices = jax.devices()
    rate = matmul_rate()
    print(f"# {len(devices)} {devices[0].platform} device(s), {os.cpu_count()} cores, jax {jax.__version__}, "
          f"torch {torch_baseline.torch.__version__} ({torch_baseline.torch.get_num_threads()} threads)")
    print(f"# float32 matmul rate (square 2048-4096): {rate / 1e9:.0f} GFLOP/s")
    if args.only in (None, "paper"):
        bench_paper_scale(args.paper_lanes)
    if args.only in (None, "small"):
        bench_small_grid(args.steps)
    if args.only in (None, "logging"):
        bench_logging(args.steps)
    if args.only in (None, "groups"):
        bench_compile_groups(args.steps // 10)
    if args.only in (None, "minibatch"):
        bench_minibatch(2 * args.steps)
    if args.only in (None, "transformer"):
        bench_transformer()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\n# peak RSS of this process: {peak:.2f} GiB")


if __name__ == "__main__":
    main()
