"""PyTorch CPU baseline of the authors' 1-layer Transformer, one run at a time.

Their semantics (arXiv:2310.13061, Fig. 7a; github.com/d-doshi/Grokking): the two
tokens (m, n), learned token and position embeddings N(0, 1), one block with residual attention and a 4·d ReLU MLP, no
biases, no LayerNorm, scores divided by d_head, logits at the last position times
1/d, Kaiming-normal (fan-in, unit gain) linear layers; full-batch AdamW on MSE. The
whole block runs at both positions, as their loop does. Used for wall time per step
against grok_jax (``bench_speed.py --only transformer``).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
from torch import nn

torch.set_num_threads(os.cpu_count() or 1)


class Block(nn.Module):
    def __init__(self, p: int, d: int, heads: int):
        super().__init__()
        self.d, self.heads = d, heads
        self.embed = nn.Parameter(torch.randn(p, d))
        self.pos = nn.Parameter(torch.randn(2, d))
        self.qkv = nn.ModuleList(nn.Linear(d, d, bias=False) for _ in range(3))
        self.out = nn.Linear(d, d, bias=False)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d, bias=False), nn.ReLU(), nn.Linear(4 * d, d, bias=False))
        self.readout = nn.Linear(d, p, bias=False)
        for layer in (*self.qkv, self.out, self.mlp[0], self.mlp[2], self.readout):
            nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="linear")

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, d, h = tokens.shape[0], self.d, self.heads
        x = self.embed[tokens] + self.pos  # (b, 2, d)
        q, k, v = (f(x).view(b, 2, h, d // h).transpose(1, 2) for f in self.qkv)  # (b, h, 2, dh)
        att = torch.softmax(q @ k.transpose(-1, -2) / (d // h), dim=-1)
        x = x + self.out((att @ v).transpose(1, 2).reshape(b, 2, d))
        x = x + self.mlp(x)
        return self.readout(x)[:, -1] / d


def time_per_step(p: int = 97, d: int = 128, alpha: float = 0.5, heads: int = 4, steps: int = 10,
                  warmup: int = 3, repeats: int = 3, seed: int = 0) -> float:
    """Median over ``repeats`` of the mean seconds per full-batch AdamW step."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    pairs = np.array([(m, n) for m in range(p) for n in range(p)])[rng.permutation(p * p)]
    n_train = int(alpha * p * p)
    tokens = torch.from_numpy(pairs[:n_train])
    target = nn.functional.one_hot(torch.from_numpy((pairs[:n_train].sum(1) % p)), p).float()
    model = Block(p, d, heads)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-8, weight_decay=1.0)
    loss_fn = nn.MSELoss()

    def train(n: int) -> None:
        for _ in range(n):
            opt.zero_grad()
            loss_fn(model(tokens), target).backward()
            opt.step()

    train(warmup)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        train(steps)
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--p", type=int, default=97)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--alpha", type=float, default=0.5)
    args = ap.parse_args()
    print(f"time per step: {1e3 * time_per_step(args.p, args.d, args.alpha):.1f} ms")


if __name__ == "__main__":
    main()
