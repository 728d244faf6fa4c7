"""PyTorch CPU baseline: the authors' semantics, one training run at a time.

Modular addition with a fraction xi of corrupted training labels, a bias-free
2-layer MLP with x**2 activation, MSE on one-hot targets, AdamW on the full batch
or on shuffled mini-batches (`torch.utils.data.DataLoader`). Used to compare wall
time (and sanity-check accuracies) against grok_jax.
"""
from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.set_num_threads(os.cpu_count() or 1)


class Quadratic(nn.Module):
    """Elementwise x**2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x**2


def make_data(p: int, alpha: float, xi: float, seed: int) -> dict[str, torch.Tensor | int]:
    """One-hot inputs, trained-on and true labels for train/test; first corrupted rows."""
    rng = np.random.default_rng(seed)
    pairs = np.array([(m, n) for m in range(p) for n in range(p)])
    pairs = pairs[rng.permutation(p * p)]
    true = (pairs[:, 0] + pairs[:, 1]) % p
    n_train = int(alpha * p * p)
    n_corrupt = int(xi * n_train)
    noisy = true[:n_train].copy()
    noisy[:n_corrupt] = rng.integers(0, p, n_corrupt)
    x = torch.zeros(p * p, 2 * p)
    rows = torch.arange(p * p)
    x[rows, torch.from_numpy(pairs[:, 0])] = 1.0
    x[rows, torch.from_numpy(p + pairs[:, 1])] = 1.0
    return {
        "x_train": x[:n_train], "x_test": x[n_train:],
        "y_train": torch.from_numpy(noisy), "y_true": torch.from_numpy(true[:n_train]),
        "y_test": torch.from_numpy(true[n_train:]), "n_corrupt": n_corrupt,
    }


def make_model(p: int, N: int, seed: int) -> nn.Sequential:
    """Linear(2p, N) -> x**2 -> Linear(N, p), no biases, weights ~ Normal(0, sigma^2)."""
    model = nn.Sequential(nn.Linear(2 * p, N, bias=False), Quadratic(), nn.Linear(N, p, bias=False))
    sigma = 0.5 / (2 * N) ** (1 / 3)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in model.parameters():
            w.normal_(0.0, sigma, generator=gen)
    return model


def _setup(p: int, N: int, alpha: float, xi: float, wd: float, seed: int, lr: float):
    """Data, model, optimizer and one-hot targets for one run."""
    data = make_data(p, alpha, xi, seed)
    model = make_model(p, N, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-8, weight_decay=wd)
    target = nn.functional.one_hot(data["y_train"], p).float()
    return data, model, opt, target


def _train(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, target: torch.Tensor, steps: int) -> None:
    """`steps` full-batch AdamW steps on MSE loss."""
    loss_fn = nn.MSELoss()
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model(x), target).backward()
        opt.step()


def _train_minibatch(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, labels: torch.Tensor,
                     steps: int, batch_size: int, seed: int) -> None:
    """`steps` AdamW steps on MSE loss over mini-batches of `batch_size` rows: epochs of a
    shuffling DataLoader (last partial batch kept), stopped after exactly `steps` steps."""
    p = model[-1].out_features
    loader = DataLoader(TensorDataset(x, labels), batch_size=batch_size, shuffle=True, drop_last=False,
                        generator=torch.Generator().manual_seed(seed))
    loss_fn = nn.MSELoss()
    step = 0
    while step < steps:
        for xb, yb in loader:
            opt.zero_grad()
            loss_fn(model(xb), nn.functional.one_hot(yb, p).float()).backward()
            opt.step()
            step += 1
            if step == steps:
                break


def _acc(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of argmax predictions equal to labels (nan if empty)."""
    return (logits.argmax(-1) == labels).float().mean().item() if len(labels) else float("nan")


def run_one(p: int, N: int, alpha: float, xi: float, wd: float, seed: int, steps: int, lr: float = 0.01,
            batch_size: int = 0) -> dict:
    """Train one run (full batch if `batch_size` is 0, else mini-batches of that many rows);
    return final accuracies and the training-loop wall time."""
    data, model, opt, target = _setup(p, N, alpha, xi, wd, seed, lr)
    t0 = time.perf_counter()
    if batch_size:
        _train_minibatch(model, opt, data["x_train"], data["y_train"], steps, batch_size, seed)
    else:
        _train(model, opt, data["x_train"], target, steps)
    seconds = time.perf_counter() - t0
    k = data["n_corrupt"]
    with torch.no_grad():
        out_train, out_test = model(data["x_train"]), model(data["x_test"])
    return {
        "train_acc": _acc(out_train, data["y_train"]),
        "test_acc": _acc(out_test, data["y_test"]),
        "corrupt_acc": _acc(out_train[:k], data["y_train"][:k]),
        "inversion_acc": _acc(out_train[:k], data["y_true"][:k]),
        "seconds_train": seconds,
    }


def run_grid(p: int, N: int, alpha: float, xis: list[float], wds: list[float], seeds: list[int],
             steps: int, batch_size: int = 0) -> tuple[list[dict], float]:
    """Python loop over (seed, wd, xi); return per-run dicts and total wall seconds."""
    t0 = time.perf_counter()
    results = [{"xi": xi, "wd": wd, "seed": seed,
                **run_one(p, N, alpha, xi, wd, seed, steps, batch_size=batch_size)}
               for seed, wd, xi in itertools.product(seeds, wds, xis)]
    return results, time.perf_counter() - t0


def time_per_step(p: int, N: int, alpha: float, steps: int = 50, warmup: int = 5, repeats: int = 3,
                  batch_size: int = 0) -> float:
    """Median over `repeats` of the mean seconds per step (xi=0, wd=0); full batch if
    `batch_size` is 0, else DataLoader mini-batches (each repeat a fresh loader)."""
    data, model, opt, target = _setup(p, N, alpha, 0.0, 0.0, 0, 0.01)

    def train(n: int) -> None:
        if batch_size:
            _train_minibatch(model, opt, data["x_train"], data["y_train"], n, batch_size, 0)
        else:
            _train(model, opt, data["x_train"], target, n)

    train(warmup)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        train(steps)
        times.append((time.perf_counter() - t0) / steps)
    return statistics.median(times)


def main() -> None:
    """CLI: run a grid, print a table and the per-step time."""
    floats = lambda s: [float(v) for v in s.split(",")]  # noqa: E731
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--p", type=int, default=97)
    ap.add_argument("--width", type=int, default=500)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--xis", type=floats, default=[0.35])
    ap.add_argument("--wds", type=floats, default=[0.0])
    ap.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0])
    ap.add_argument("--batch_size", type=int, default=0, help="rows per mini-batch (DataLoader); 0: full batch")
    args = ap.parse_args()
    results, total = run_grid(args.p, args.width, args.alpha, args.xis, args.wds, args.seeds, args.steps,
                              args.batch_size)
    print(f"{'seed':>4} {'wd':>6} {'xi':>5} {'train':>6} {'test':>6} {'corr':>6} {'inv':>6} {'sec':>7}")
    for r in results:
        print(f"{r['seed']:>4} {r['wd']:>6g} {r['xi']:>5g} {r['train_acc']:>6.3f} {r['test_acc']:>6.3f} "
              f"{r['corrupt_acc']:>6.3f} {r['inversion_acc']:>6.3f} {r['seconds_train']:>7.2f}")
    print(f"total {total:.2f} s for {len(results)} runs")
    if args.batch_size:
        step = time_per_step(args.p, args.width, args.alpha, steps=500, batch_size=args.batch_size)
        print(f"time per step (mini-batch {args.batch_size}): {1e3 * step:.3f} ms")
    else:
        print(f"time per step: {1e3 * time_per_step(args.p, args.width, args.alpha):.2f} ms")


if __name__ == "__main__":
    main()
