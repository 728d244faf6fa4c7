"""Independent plain-NumPy reference (test oracle) for grok_jax.

It shares no code with grok_jax: it builds the data set, the initial weights, the
dropout masks, the mini-batches and BatchNorm (with its running statistics) from the
random draws it is handed (tests draw them with jax.random from the documented keys)
and from the paper's definitions.

Layout: U (p, N), V (p, N), W (N, p); f(m, n) = phi(U[m] + V[n]) @ W gives p logits.
U[i, k] is the paper's U_{k i}; W[k, q] is the paper's W_{q k}. Everything in float64.
IPR uses the one-sided real FFT (rfft, DC included), so a pure cosine has IPR 1.
"""
from __future__ import annotations

from typing import Callable

import numpy as np


def ipr(x: np.ndarray) -> np.ndarray:
    """Inverse participation ratio of |rfft(x)| along the last axis."""
    xt = np.abs(np.fft.rfft(np.asarray(x, dtype=np.float64), axis=-1))
    return np.sum(xt**4, axis=-1) / np.sum(xt**2, axis=-1) ** 2


def neuron_ipr(U: np.ndarray, V: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Per-neuron IPR (ipr(U[:, k]) + ipr(V[:, k]) + ipr(W[k, :])) / 3, shape (N,)."""
    return (ipr(np.asarray(U).T) + ipr(np.asarray(V).T) + ipr(np.asarray(W))) / 3.0


STD_EXPONENT = -1.0 / 3.0  # init: every weight N(0, σ²), σ² = (16N)^(-2/3) (arXiv:2310.13061)
BN_EPS = 1e-5  # PyTorch BatchNorm1d


def pair_labels(task: str, p: int) -> np.ndarray:
    """(m ∘ n) mod p for every pair m·p + n, by plain integer arithmetic; division by
    n = 0 (no answer) gives -1."""
    m, n = np.divmod(np.arange(p * p), p)
    if task == "add":
        return (m + n) % p
    if task == "sub":
        return (m - n) % p
    if task == "mul":
        return (m * n) % p
    inverse = {b: next(c for c in range(1, p) if b * c % p == 1) for b in range(1, p)}
    return np.array([a * inverse[b] % p if b else -1 for a, b in zip(m, n)])


def make_data(shuffle: np.ndarray, noise: np.ndarray, n_train: int, n_corrupt: int, task: str, p: int) -> dict:
    """The paper's data set from the random draws it is handed: ``shuffle``, a
    permutation of the p² pair indices; ``noise``, one random label per row.

    The usable pairs (division: n ≠ 0) in shuffled order; the first ``n_train`` are
    the training set, of which the first ``n_corrupt`` train on their noise label.
    """
    shuffle, noise = np.asarray(shuffle), np.asarray(noise)
    true = pair_labels(task, p)
    order = shuffle[np.argsort(true[shuffle] < 0, kind="stable")]  # unusable pairs last
    usable = int(np.sum(true >= 0))
    rows = np.arange(p * p)
    label = np.where(rows < n_corrupt, noise, true[order])
    m, n = np.divmod(order, p)
    return {"order": order, "m": m, "n": n, "label": label, "true_label": true[order], "pair_label": true,
            "usable": usable, "n_train": n_train, "n_corrupt": n_corrupt}


def init_params(normals: dict, width: int, batchnorm: bool = False) -> dict:
    """Initial weights from standard normal draws ``normals["U"|"V"|"W"]``."""
    std = (16.0 * width) ** STD_EXPONENT
    params = {k: std * np.asarray(normals[k], np.float64) for k in "UVW"}
    if batchnorm:
        params["bn_scale"], params["bn_shift"] = np.ones(width), np.zeros(width)
    return params


def _act(h: np.ndarray, activation: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (phi(h), phi'(h)) for activation 'quad' (h**2) or 'relu'."""
    if activation == "quad":
        return h * h, 2.0 * h
    if activation == "relu":
        return np.maximum(h, 0.0), (h > 0).astype(np.float64)
    raise ValueError(f"unknown activation {activation!r}")


def _features(params: dict, m, n, activation: str, rate: float = 0.0, noise=None):
    """(φ(dropout(U[m] + V[n])), dφ/d(pre)): inverted dropout where noise < rate."""
    U, V = (np.asarray(params[k], np.float64) for k in "UV")
    pre = U[np.asarray(m)] + V[np.asarray(n)]
    keep = np.ones_like(pre) if noise is None else (np.asarray(noise) >= rate) / (1.0 - rate)
    a, da = _act(pre * keep, activation)
    return a, da * keep


def _batchnorm(params: dict, a: np.ndarray, stats_rows: np.ndarray | None, stats: dict | None = None
               ) -> tuple[np.ndarray, tuple]:
    """BatchNorm of ``a`` with the mean and biased variance of ``stats_rows``, or with
    ``stats["mean"]`` and ``stats["var"]`` when given (running statistics)."""
    if stats is not None:
        mean, var = np.asarray(stats["mean"], np.float64), np.asarray(stats["var"], np.float64)
    else:
        mean, var = stats_rows.mean(axis=0), stats_rows.var(axis=0)
    xhat = (a - mean) / np.sqrt(var + BN_EPS)
    return xhat * params["bn_scale"] + params["bn_shift"], (xhat, var)


def feature_stats(params: dict, m: np.ndarray, n: np.ndarray, activation: str = "quad") -> dict:
    """The mean and the biased variance of the features φ(U[m] + V[n]) over these rows
    (BatchNorm's full-batch statistics over the training rows)."""
    a, _ = _features(params, m, n, activation)
    return {"mean": a.mean(axis=0), "var": a.var(axis=0)}


def forward(params: dict, m: np.ndarray, n: np.ndarray, activation: str, stats_rows: np.ndarray | None = None,
            stats: dict | None = None) -> np.ndarray:
    """Eval-mode logits phi(U[m] + V[n]) @ W; with BatchNorm (``bn_scale`` in
    params) normalized by the statistics of the features ``stats_rows``, or by the
    running statistics ``stats`` (``{"mean", "var"}``) when given."""
    a, _ = _features(params, m, n, activation)
    if "bn_scale" in params:
        a, _ = _batchnorm(params, a, stats_rows, stats)
    return a @ np.asarray(params["W"], np.float64)


def loss_and_grads(params: dict, m: np.ndarray, n: np.ndarray, y: np.ndarray, activation: str = "quad",
                   loss: str = "mse", rate: float = 0.0, noise: np.ndarray | None = None) -> tuple[float, dict]:
    """Full-batch loss and hand-written gradients of every parameter.

    'mse': mean over examples and the p outputs of (logits - onehot(y))**2.
    'ce': mean softmax cross-entropy. Dropout where ``noise`` < ``rate`` (train mode);
    BatchNorm (``bn_scale`` in params) with this batch's statistics, differentiated.
    """
    W = np.asarray(params["W"], dtype=np.float64)
    m, n, y = np.asarray(m), np.asarray(n), np.asarray(y)
    B, p = len(m), W.shape[1]
    a, da = _features(params, m, n, activation, rate, noise)   # (B, N)
    h = a
    if "bn_scale" in params:
        h, (xhat, var) = _batchnorm(params, a, a)
    z = h @ W                             # (B, p)
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
    grads = {"W": h.T @ gz}               # (N, p)
    gh = gz @ W.T                         # (B, N)
    if "bn_scale" in params:
        grads["bn_scale"], grads["bn_shift"] = np.sum(gh * xhat, axis=0), np.sum(gh, axis=0)
        gx = gh * params["bn_scale"]
        # d/da of xhat = (a - mean)/sqrt(var + eps) with the batch's mean and variance
        gh = (gx - gx.mean(axis=0) - xhat * np.mean(gx * xhat, axis=0)) / np.sqrt(var + BN_EPS)
    gpre = gh * da
    grads["U"], grads["V"] = np.zeros((p, W.shape[0])), np.zeros((p, W.shape[0]))
    np.add.at(grads["U"], m, gpre)
    np.add.at(grads["V"], n, gpre)
    return L, grads


def train_reference(params0: dict, m: np.ndarray, n: np.ndarray, y: np.ndarray,
                    steps: int, lr: float, wd: float, b1: float = 0.9, b2: float = 0.98,
                    eps: float = 1e-8, activation: str = "quad",
                    loss: str = "mse", history: list | None = None, rate: float = 0.0,
                    noise: Callable[[int], np.ndarray] | None = None,
                    batches: Callable[[int], np.ndarray] | None = None, running_history: list | None = None,
                    momentum: float = 0.1, train_counts: list | None = None) -> tuple[dict, list[float]]:
    """Training with torch.optim.AdamW semantics (decoupled decay first, every
    parameter decayed); step t's dropout draws are ``noise(t)``, one row of draws
    per row of ``m`` (all rows, whichever are in the step's batch).

    Full batch, or with ``batches`` mini-batches: step t's loss (a mean) and gradient
    are over the rows ``batches(t)`` (indices into ``m``, ``n``, ``y``; see
    :func:`batch_schedule`). BatchNorm normalizes with the step's batch statistics.

    Returns (final params, loss at the start of each step; length `steps`).
    params0 is copied, not mutated. If given, `history` receives a copy of the params
    at the start of every step and at the end (steps + 1 entries). If given (with
    BatchNorm), `running_history` receives BatchNorm's running statistics
    ``{"mean", "var"}`` likewise (PyTorch BatchNorm1d: mean 0 and variance 1 at
    first; after each step's forward ``(1 − momentum)·running + momentum·batch``,
    with the batch's unbiased variance). If given, `train_counts` receives each
    step's ``(correct, rows)`` on its rows (all of them, or its batch) in train mode
    (:func:`train_logits`, at the step's starting weights): the peak training
    accuracy of the run is the largest ``correct / rows``.
    """
    w = {k: np.array(v, dtype=np.float64, copy=True) for k, v in params0.items()}
    mom = {k: np.zeros_like(v) for k, v in w.items()}
    vel = {k: np.zeros_like(v) for k, v in w.items()}
    losses: list[float] = []
    m, n, y = np.asarray(m), np.asarray(n), np.asarray(y)
    running = None
    if running_history is not None and "bn_scale" in w:
        running = {"mean": np.zeros(len(w["bn_scale"])), "var": np.ones(len(w["bn_scale"]))}
    for t in range(1, steps + 1):
        if history is not None:
            history.append({k: v.copy() for k, v in w.items()})
        if running is not None:
            running_history.append({k: v.copy() for k, v in running.items()})
        rows = np.arange(len(m)) if batches is None else np.asarray(batches(t - 1))
        uniforms = noise(t - 1)[rows] if noise else None
        L, g = loss_and_grads(w, m[rows], n[rows], y[rows], activation, loss, rate, uniforms)
        if train_counts is not None:
            z = train_logits(w, m[rows], n[rows], activation, rate, uniforms)
            train_counts.append((int(np.sum(unique_max(z, y[rows]))), len(rows)))
        if running is not None:  # the batch's features in train mode, at the step's starting weights
            a, _ = _features(w, m[rows], n[rows], activation, rate, uniforms)
            unbiased = a.var(axis=0) * len(rows) / (len(rows) - 1)
            running = {"mean": (1 - momentum) * running["mean"] + momentum * a.mean(axis=0),
                       "var": (1 - momentum) * running["var"] + momentum * unbiased}
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
    if running is not None:
        running_history.append({k: v.copy() for k, v in running.items()})
    return w, losses


def train_logits(params: dict, m: np.ndarray, n: np.ndarray, activation: str = "quad", rate: float = 0.0,
                 noise: np.ndarray | None = None) -> np.ndarray:
    """Train-mode logits of a step's rows: dropout where ``noise`` < ``rate``;
    BatchNorm (``bn_scale`` in params) with these rows' statistics."""
    a, _ = _features(params, m, n, activation, rate, noise)
    if "bn_scale" in params:
        a, _ = _batchnorm(params, a, a)
    return a @ np.asarray(params["W"], np.float64)


def unique_max(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Whether each row's label ``y`` has the unique largest logit (a tie is wrong)."""
    top = z.max(axis=1)
    return (np.sum(z == top[:, None], axis=1) == 1) & (z[np.arange(len(y)), y] == top)


def epoch_order(bits: np.ndarray, n_train: int) -> np.ndarray:
    """The order of the ``n_train`` training rows in one epoch of mini-batches: by the
    top 31 bits of each row's random word (``bits[r] >> 1``; row r takes word r),
    ties in row order (a stable sort). Padding rows are never drawn."""
    return np.argsort(np.asarray(bits, np.uint32)[:n_train] >> np.uint32(1), kind="stable")


def batch_schedule(bits: Callable[[int], np.ndarray], n_train: int, batch_size: int
                   ) -> Callable[[int], np.ndarray]:
    """``batches(t)`` for :func:`train_reference`: the training rows of step t.

    Each epoch cuts its order (:func:`epoch_order` of ``bits(epoch)``) into
    ⌈n_train / batch_size⌉ batches of ``batch_size`` rows, the last one partial
    (PyTorch's DataLoader with drop_last=False); step t is batch t mod that count of
    epoch t div it.
    """
    per_epoch = -(-n_train // batch_size)
    orders: dict[int, np.ndarray] = {}

    def batches(t: int) -> np.ndarray:
        epoch, j = divmod(t, per_epoch)
        if epoch not in orders:
            orders[epoch] = epoch_order(bits(epoch), n_train)
        return orders[epoch][j * batch_size:(j + 1) * batch_size]

    return batches


def counts(params: dict, data: dict, activation: str = "quad", loss: str = "mse", bn_stats: dict | None = None
           ) -> dict:
    """Eval-mode loss sums and correct-prediction counts of every set, with its size.

    A prediction is correct when the label's logit is the unique maximum. BatchNorm
    normalizes with the training rows' statistics, or with the running statistics
    ``bn_stats`` (``{"mean", "var"}``) when given."""
    order, n_train, n_corrupt = data["order"][:data["usable"]], data["n_train"], data["n_corrupt"]
    m, n = np.divmod(order, len(params["W"][0]))
    a, _ = _features(params, m[:n_train], n[:n_train], activation)
    z = forward(params, m, n, activation, stats_rows=a, stats=bn_stats)
    p = z.shape[1]
    true = data["pair_label"][order]
    y = np.concatenate([data["label"][:n_train], true[n_train:]])
    if loss == "mse":
        terms = np.mean((z - np.eye(p)[y]) ** 2, axis=1)
    else:
        zs = z - z.max(axis=1, keepdims=True)
        terms = np.log(np.sum(np.exp(zs), axis=1)) - zs[np.arange(len(y)), y]
    top = z.max(axis=1)
    unique = np.sum(z == top[:, None], axis=1) == 1
    hit, hit_true = unique & (z[np.arange(len(y)), y] == top), unique & (z[np.arange(len(y)), true] == top)
    sets = {"train": slice(0, n_train), "test": slice(n_train, None), "corrupt": slice(0, n_corrupt),
            "clean": slice(n_corrupt, n_train)}
    out = {"train_loss": (terms[sets["train"]].sum(), n_train),
           "test_loss": (terms[sets["test"]].sum(), len(y) - n_train)}
    for name in ("train", "test", "corrupt"):
        out[f"{name}_acc"] = (int(hit[sets[name]].sum()), len(range(len(y))[sets[name]]))
    out["inversion_acc"] = (int(hit_true[sets["corrupt"]].sum()), n_corrupt)
    out["clean_acc"] = (int(hit_true[sets["clean"]].sum()), n_train - n_corrupt)
    return out


def metrics(params: dict, data: dict, activation: str = "quad", loss: str = "mse", bn_stats: dict | None = None
            ) -> dict:
    """The logged metrics of a state (eval mode) over every usable pair (NaN for an
    empty set); BatchNorm uses the training rows' statistics, or ``bn_stats``."""
    out = {name: total / size if size else np.nan
           for name, (total, size) in counts(params, data, activation, loss, bn_stats).items()}
    U, V, W = (np.asarray(params[k], np.float64) for k in "UVW")
    out.update({"norm_U": np.linalg.norm(U), "norm_V": np.linalg.norm(V), "norm_W": np.linalg.norm(W),
                "weight_norm": np.sqrt(np.sum(U**2) + np.sum(V**2) + np.sum(W**2)),
                "ipr": np.mean(neuron_ipr(U, V, W))})
    return out


def analytic_solution(p: int, N: int, rng: np.random.Generator) -> dict:
    """Paper Eq. 2 (modular addition) in our layout: U, V (p, N), W (N, p).

    sigma(k) ~ uniform{1..(p-1)//2}; phases phi_u, phi_v ~ uniform (-pi, pi].
    Amplitude (2/N)**(1/3): the correct-class logit then averages 1 (the paper prints
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


PHASES = ("Coexistence", "Partial Inversion", "Full Inversion", "Memorization", "Forgetting", "Confusion",
          "Diverged")


def phase(log: dict, xi: float) -> str:
    """The paper's Table 2 (arXiv:2310.13061, App. C) on a logged trajectory, written out: high
    means ≥ 90% (1e-6 of rounding allowed). Low train and test accuracy at the end
    is Forgetting if the test accuracy was high at some logged step (it generalized,
    then lost it: App. E), else Confusion, however small the weights became."""
    if not all(np.all(np.isfinite(log[k])) for k in ("train_loss", "test_loss", "weight_norm")):
        return "Diverged"
    high = lambda acc: acc >= 0.9 - 1e-6  # noqa: E731
    train, test = log["train_acc"][-1], log["test_acc"][-1]
    if high(test):
        if high(train):
            return "Coexistence"
        return "Partial Inversion" if train >= 1.05 - xi - 1e-6 else "Full Inversion"
    if high(train):
        return "Memorization"
    return "Forgetting" if high(np.max(log["test_acc"])) else "Confusion"
