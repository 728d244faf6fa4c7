"""The reference grid: 12 lanes in three phases, their numbers from the NumPy reference.

    python tests/reference.py            # recompute; print what differs from the stored file
    python tests/reference.py --update   # the same, then store the new numbers

The stored numbers (``tests/reference_grid.json``) come from
:mod:`numpy_reference` run on the random draws of :mod:`draws`, never from grok_jax.
``tests/test_reference.py`` checks grok_jax's sweep against them, and that they still
are what the NumPy reference computes. A deliberate change of the numerics (init, data
order, random streams, optimizer) changes them: rerun with ``--update`` and say why in
the commit message.
"""

from __future__ import annotations

import itertools
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import draws  # noqa: E402
import numpy_reference as ref  # noqa: E402

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference_grid.json")
# The tiny grid's p, width and α with these axes: lr 1e-5 learns nothing (Confusion), lr
# 0.01 with wd 50 collapses the weights to ~1e-42 without ever learning (Confusion: not
# Forgetting, which needs a network that generalized first), wd 2 at ξ 0 groks
# (Coexistence), the rest memorize (Memorization). No Forgetting lane: at p 11 and lr
# 0.01 no weight decay both groks and collapses within 1000 steps (wd 2-3.5 groks and
# keeps it, wd 4-9 memorizes, wd ≥ 10 loses what it fit without generalizing).
SETTINGS = dict(p=11, width=32, alpha=0.6, steps=1000, log_every=100)
AXES = {"lr": (1e-5, 0.01), "wd": (0.0, 2.0, 50.0), "xi": (0.0, 0.3)}
FIELDS = ("train_loss", "test_loss", "train_acc", "test_acc", "corrupt_acc", "inversion_acc", "clean_acc",
          "weight_norm", "ipr")


def config():
    """The grid as a grok_jax config (imported here only, for the sweep's test)."""
    from grok_jax.config import base_config

    c = base_config()
    c.update(SETTINGS)
    for name, values in AXES.items():
        c.sweep[name] = values
    return c


def lane(lr: float, wd: float, xi: float, seed: int = 0) -> dict:
    """One lane's final metrics, logged trajectory and phase, by the NumPy reference."""
    p, width, steps, every = (SETTINGS[k] for k in ("p", "width", "steps", "log_every"))
    n_train = int(SETTINGS["alpha"] * p * p + 1e-9)
    data = ref.make_data(*draws.data(seed, p), n_train, int(xi * n_train + 1e-9), "add", p)
    history = []
    ref.train_reference(ref.init_params(draws.normals(seed, p, width), width), data["m"][:n_train],
                        data["n"][:n_train], data["label"][:n_train], steps, lr, wd, history=history)
    logged = [ref.metrics(params, data) for params in history[::every]]
    log = {name: np.array([m[name] for m in logged]) for name in logged[0]}
    return {"final": {name: float(log[name][-1]) for name in FIELDS}, "phase": ref.phase(log, xi),
            "train_acc": log["train_acc"].tolist(), "test_acc": log["test_acc"].tolist()}


def compute() -> list[dict]:
    """Every lane of the grid, in C order of ``AXES``."""
    return [dict(zip(AXES, combo), **lane(*combo)) for combo in itertools.product(*AXES.values())]


def differences(old: list[dict], new: list[dict], rtol: float = 1e-9) -> list[str]:
    """One line per lane and number that differs (NaN equals NaN)."""
    lines = []
    for a, b in zip(old, new):
        where = ", ".join(f"{k}={b[k]}" for k in AXES)
        if a["phase"] != b["phase"]:
            lines.append(f"{where}: phase {a['phase']} -> {b['phase']}")
        for name in FIELDS:
            x, y = a["final"][name], b["final"][name]
            if not (np.isnan(x) and np.isnan(y)) and not np.isclose(x, y, rtol=rtol, atol=0):
                lines.append(f"{where}: {name} {x:.9g} -> {y:.9g}")
    if len(old) != len(new):
        lines.append(f"{len(old)} lanes -> {len(new)}")
    return lines


def load() -> list[dict]:
    with open(PATH) as f:
        return json.load(f)


def main() -> None:
    new = compute()
    old = load() if os.path.exists(PATH) else []
    lines = differences(old, new) if old else ["no stored reference"]
    print("\n".join(lines) or "the stored reference is what the NumPy reference computes")
    if "--update" in sys.argv[1:]:
        with open(PATH, "w") as f:
            json.dump(new, f, indent=1)
        print(f"wrote {PATH}")


if __name__ == "__main__":
    main()
