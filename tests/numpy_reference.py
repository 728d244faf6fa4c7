"""Independent plain-NumPy reference (test oracle) for grok_jax.

Layout: U (p, N), V (p, N), W (N, p); f(m, n) = phi(U[m] + V[n]) @ W gives p logits.
U[i, k] is the paper's U_{k i}; W[k, q] is the paper's W_{q k}. Everything in float64.
IPR uses the one-sided real FFT (rfft, DC included), so a pure cosine has IPR 1.
"""
from __future__ import annotations

import numpy as np


def ipr(x: np.ndarray) -> np.ndarray:
    """Inverse participation ratio of |rfft(x)| along the last axis."""
    xt = np.abs(np.fft.rfft(np.asarray(x, dtype=np.float64), axis=-1))
    return np.sum(xt**4, axis=-1) / np.sum(xt**2, axis=-1) ** 2


def neuron_ipr(U: np.ndarray, V: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Per-neuron IPR (ipr(U[:, k]) + ipr(V[:, k]) + ipr(W[k, :])) / 3, shape (N,)."""
    return (ipr(np.asarray(U).T) + ipr(np.asarray(V).T) + ipr(np.asarray(W))) / 3.0


def _act(h: np.ndarray, activation: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (phi(h), phi'(h)) for activation 'quad' (h**2) or 'relu'."""
    if activation == "quad":
        return h * h, 2.0 * h
    if activation == "relu":
        return np.maximum(h, 0.0), (h > 0).astype(np.float64)
    raise ValueError(f"unknown activation {activation!r}")


def forward(params: dict, m: np.ndarray, n: np.ndarray, activation: str) -> np.ndarray:
    """Logits phi(U[m] + V[n]) @ W, shape (len(m), p)."""
    U, V, W = (np.asarray(params[k], dtype=np.float64) for k in ("U", "V", "W"))
    h = U[np.asarray(m)] + V[np.asarray(n)]
    return _act(h, activation)[0] @ W


def loss_and_grads(params: dict, m: np.ndarray, n: np.ndarray, y: np.ndarray,
                   activation: str = "quad", loss: str = "mse") -> tuple[float, dict]:
    """Full-batch loss and hand-written gradients w.r.t. U, V, W.

    'mse': mean over examples and the p outputs of (logits - onehot(y))**2.
    'ce': mean softmax cross-entropy.
    """
    U, V, W = (np.asarray(params[k], dtype=np.float64) for k in ("U", "V", "W"))
    m, n, y = np.asarray(m), np.asarray(n), np.asarray(y)
    B, p = len(m), W.shape[1]
    h = U[m] + V[n]                       # (B, N)
    a, da = _act(h, activation)           # (B, N)
    z = a @ W                             # (B, p)
    onehot = np.zeros((B, p))
    onehot[np.arange(B), y] = 1.0
    if loss == "mse":
        r = z - onehot
        L = float(np.mean(r * r))
        gz = 2.0 * r / (B * p)
    elif loss == "ce":
        zs = z - z.max(axis=1, keepdims=True)
        lse = np.log(np.sum(np.exp(zs), axis=1, keepdims=True))
        logp = zs - lse
        L = float(-np.mean(logp[np.arange(B), y]))
        gz = (np.exp(logp) - onehot) / B
    else:
        raise ValueError(f"unknown loss {loss!r}")
    gW = a.T @ gz                         # (N, p)
    gh = (gz @ W.T) * da                  # (B, N)
    gU, gV = np.zeros_like(U), np.zeros_like(V)
    np.add.at(gU, m, gh)
    np.add.at(gV, n, gh)
    return L, {"U": gU, "V": gV, "W": gW}


def train_reference(params0: dict, m: np.ndarray, n: np.ndarray, y: np.ndarray,
                    steps: int, lr: float, wd: float, b1: float = 0.9, b2: float = 0.98,
                    eps: float = 1e-8, activation: str = "quad",
                    loss: str = "mse", history: list | None = None) -> tuple[dict, list[float]]:
    """Full-batch training with torch.optim.AdamW semantics (decoupled decay first).

    Returns (final params, loss at the start of each step; length `steps`).
    params0 is copied, not mutated. If given, `history` receives a copy of the params
    at the start of every step and at the end (steps + 1 entries).
    """
    w = {k: np.array(params0[k], dtype=np.float64, copy=True) for k in ("U", "V", "W")}
    mom = {k: np.zeros_like(v) for k, v in w.items()}
    vel = {k: np.zeros_like(v) for k, v in w.items()}
    losses: list[float] = []
    for t in range(1, steps + 1):
        if history is not None:
            history.append({k: v.copy() for k, v in w.items()})
        L, g = loss_and_grads(w, m, n, y, activation, loss)
        losses.append(L)
        for k in w:
            w[k] = w[k] * (1.0 - lr * wd)
            mom[k] = b1 * mom[k] + (1.0 - b1) * g[k]
            vel[k] = b2 * vel[k] + (1.0 - b2) * g[k] ** 2
            mhat = mom[k] / (1.0 - b1**t)
            vhat = vel[k] / (1.0 - b2**t)
            w[k] = w[k] - lr * mhat / (np.sqrt(vhat) + eps)
    if history is not None:
        history.append({k: v.copy() for k, v in w.items()})
    return w, losses


def metrics(params: dict, order: np.ndarray, label: np.ndarray, n_train: int, n_corrupt: int,
            pair_label: np.ndarray, usable: int, activation: str = "quad", loss: str = "mse") -> dict:
    """The logged metrics over every usable pair, by argmax.

    order: pair indices m·p + n, training rows first, the `usable` pairs before the
    unusable ones; label: the labels trained on, in that order (corrupted in the first
    n_corrupt rows); pair_label: the true label of every pair, in pair order.
    """
    p = len(params["W"][0])
    order = np.asarray(order)[:usable]
    m, n = np.divmod(order, p)
    z = forward(params, m, n, activation)
    true = np.asarray(pair_label)[order]
    y = np.concatenate([np.asarray(label)[:n_train], true[n_train:]])
    if loss == "mse":
        terms = np.mean((z - np.eye(p)[y]) ** 2, axis=1)
    else:
        zs = z - z.max(axis=1, keepdims=True)
        terms = np.log(np.sum(np.exp(zs), axis=1)) - zs[np.arange(len(y)), y]
    pred = np.argmax(z, axis=1)
    mean = lambda x: np.sum(x) / len(x) if len(x) else np.nan  # noqa: E731  (NaN for an empty set)
    train, corrupt, clean, test = slice(0, n_train), slice(0, n_corrupt), slice(n_corrupt, n_train), slice(n_train, None)
    U, V, W = (np.asarray(params[k], np.float64) for k in "UVW")
    return {
        "train_loss": mean(terms[train]), "test_loss": mean(terms[test]),
        "train_acc": mean(pred[train] == y[train]), "test_acc": mean(pred[test] == y[test]),
        "corrupt_acc": mean(pred[corrupt] == y[corrupt]), "inversion_acc": mean(pred[corrupt] == true[corrupt]),
        "clean_acc": mean(pred[clean] == true[clean]),
        "norm_U": np.linalg.norm(U), "norm_V": np.linalg.norm(V), "norm_W": np.linalg.norm(W),
        "weight_norm": np.sqrt(np.sum(U**2) + np.sum(V**2) + np.sum(W**2)),
        "ipr": np.mean(neuron_ipr(U, V, W)),
    }


def analytic_solution(p: int, N: int, rng: np.random.Generator) -> dict:
    """Paper Eq. 2 (modular addition) in our layout: U, V (p, N), W (N, p).

    sigma(k) ~ uniform{1..(p-1)//2}; phases phi_u, phi_v ~ uniform (-pi, pi].
    Amplitude (2/N)**(1/3): the correct-class logit then averages 1 (PAPER.md prints
    the exponent as -1/3, which gives logits of order N**2/4 with the same argmax).
    """
    sigma = rng.integers(1, (p - 1) // 2 + 1, size=N)
    phi_u = np.pi - rng.uniform(0.0, 2.0 * np.pi, size=N)   # in (-pi, pi]
    phi_v = np.pi - rng.uniform(0.0, 2.0 * np.pi, size=N)
    c = (2.0 / N) ** (1.0 / 3.0)
    i = np.arange(p)[:, None]
    theta = 2.0 * np.pi * i * sigma[None, :] / p             # (p, N)
    U = c * np.cos(theta + phi_u[None, :])
    V = c * np.cos(theta + phi_v[None, :])
    W = (c * np.cos(-theta - phi_u[None, :] - phi_v[None, :])).T
    return {"U": U, "V": V, "W": W}
