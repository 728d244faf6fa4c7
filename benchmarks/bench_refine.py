"""Adaptive refinement (``--refine``) against the full grid, on dense grids.

    python benchmarks/bench_refine.py              # about 15 minutes on a 2-core CPU
    python benchmarks/bench_refine.py --levels=3 --grids=wd_xi
    python benchmarks/bench_refine.py --side=29     # denser grids (about an hour)

For each grid: the full grid's run and the refined run, each into a store of its
own (the compilation cache off, so both compile), and per grid the fraction of
lanes run, the wall-time ratio (refined / full) and the share of cells whose
majority phase equals the full grid's. Target of the method: at least 97% of
cells equal at no more than 40% of the lanes.

Then each full grid's stored results are replayed through the refinement's rounds
at other settings (:func:`replay`: no training, the full run's numbers in place of
each round's runs): the lanes each setting would run and the cells it gets right.
``--replay=DIR`` replays the full stores under ``DIR/<grid>/full`` of an earlier
``--work=DIR`` run without running anything.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time

import numpy as np

import grok_jax
from grok_jax import phases, programs, refine, results
from grok_jax.config import load_config
from grok_jax.execution import run_sweep
from grok_jax.plotting import cell_phase
from grok_jax.refine import Refinement

QUIET = dict(progress=False, log=lambda s: None, parameters=False)


def _dense(name: str, side: int):
    """A grid of ``side`` values on each plotted axis (ξ 0 to 0.7; wd 0 to 21 or α
    0.2 to 0.9), at the small scale (p 41, N 128, 1000 steps)."""
    c = load_config("wd_xi" if name.startswith("wd_xi") else "alpha_xi")
    values = lambda lo, hi: tuple(float(v) for v in np.round(np.linspace(lo, hi, side), 4))  # noqa: E731
    if name.startswith("wd_xi"):
        c.sweep = {"wd": values(0, 21), "xi": values(0, 0.7)}
    else:
        c.sweep = {"alpha": values(0.2, 0.9), "xi": values(0, 0.7)}
        c.wd = 5.0
    if name.endswith("seeds"):
        c.sweep.seed = (0, 1, 2)
    c.plot.x, c.plot.y = "xi", "wd" if name.startswith("wd_xi") else "alpha"
    return c


GRIDS = ("wd_xi", "alpha_xi", "wd_xi_3seeds")


def _timed(config, out: str, rule: Refinement):
    programs._PROGRAMS.clear()  # each run compiles its own programs
    start = time.perf_counter()
    ds = run_sweep(config, out=out, refine=rule, **QUIET)
    return ds, time.perf_counter() - start


def _full(config, out: str):
    """The full grid's run, or the one an earlier run left in ``out`` (complete,
    with its wall time in ``out/seconds.json``): the refined runs can be remeasured."""
    record = os.path.join(out, "seconds.json")
    if os.path.exists(record):
        with open(record) as f:
            return grok_jax.load_results(out), json.load(f)["seconds"]
    ds, seconds = _timed(config, out, Refinement())
    with open(record, "w") as f:
        json.dump({"seconds": seconds}, f)
    return ds, seconds


def _final(path: str):
    """What :func:`replay` reads of the full store at ``path`` (no parameters)."""
    ds = results.open_store(results.store_path(path))
    return ds[["phase", *refine.ACCURACIES]].load()


def _rounds(ds, rule: Refinement):
    """Refinement by ``rule`` replayed on a full store (``ds``: :func:`_final`): its
    axes, the full grid's flat numbers, the lanes it runs and its last round."""
    axes = {k: tuple(v) for k, v in json.loads(ds.attrs["axes"]).items()}
    full = {k: ds[k][:, -1].values for k in refine.ACCURACIES} | {"phase": ds["phase"].values}
    done = np.zeros(len(full["phase"]), bool)
    while True:
        lanes = {k: np.where(done, v, np.nan) for k, v in full.items()}
        lanes |= {"phase": np.where(done, full["phase"], -1).astype(np.int8), "done": done, "scheduled": done}
        step = refine.next_round(axes, lanes, rule)
        if not step.run.any():
            return axes, full, done, step
        done = done | step.run


def _cells(axes: dict, lanes: np.ndarray, reduce) -> np.ndarray:
    """Flat per-lane values as cells: the grid's shape, its seed axis (one seed
    where there is none) reduced by ``reduce(values, axis)`` into a new array."""
    shaped = lanes.reshape(tuple(len(v) for v in axes.values()))
    return reduce(shaped, list(axes).index("seed")) if "seed" in axes else reduce(shaped[..., None], -1)


def replay(ds, rule: Refinement) -> tuple[float, float]:
    """The fraction of lanes refinement by ``rule`` runs on a full store (``ds``:
    :func:`_final`) and the fraction of cells whose majority phase it gets right."""
    axes, full, done, step = _rounds(ds, rule)
    majority = lambda v, axis: phases.majority(v, axis)[0]  # noqa: E731
    got = _cells(axes, np.where(done, full["phase"], step.phase), majority)
    want = _cells(axes, full["phase"], majority)
    return float(done.mean()), float((got == want).mean())


def where(ds, rule: Refinement) -> dict[str, float]:
    """Where the cells that refinement by ``rule`` runs lie, as shares of all cells:
    on the coarse lattice; at a boundary (a neighbour along a refined axis of another
    majority phase, or seeds that disagree); elsewhere (the accuracy criterion,
    guesses that failed). Also the boundary cells it infers."""
    axes, full, done, _ = _rounds(ds, rule)
    top = _cells(axes, full["phase"], lambda v, axis: phases.majority(v, axis)[0])
    boundary = _cells(axes, full["phase"], lambda v, axis: phases.majority(v, axis)[1] < 1)
    ran = _cells(axes, done, np.any)
    lattice = np.ones(top.shape, bool)
    for d, name in enumerate(a for a in axes if a != "seed"):
        if name not in refine.refined_axes(axes):
            continue
        change = np.moveaxis(np.diff(top, axis=d) != 0, d, 0)
        edge = np.moveaxis(boundary, d, 0)  # a view: marks both cells of each change
        edge[:-1] |= change
        edge[1:] |= change
        on = np.zeros(top.shape[d], bool)
        on[::2**rule.levels] = on[-1] = True
        lattice &= np.expand_dims(on, [k for k in range(top.ndim) if k != d])
    return {"run": ran.mean(), "lattice": (ran & lattice).mean(), "boundary": (ran & ~lattice & boundary).mean(),
            "other": (ran & ~lattice & ~boundary).mean(), "boundary inferred": (~ran & boundary).mean()}


def _replays(root: str, names: list[str], levels: int) -> None:
    print("\nreplayed: lanes run / cells equal")
    settings = [(lv, accuracy) for lv in (1, 2, 3) for accuracy in (0.1, 0.2, 0.3, 1.0)]
    print("| grid | " + " | ".join(f"L={lv}, acc {a:g}" for lv, a in settings) + " |")
    print("|---|" + "---|" * len(settings))
    stores = {name: _final(os.path.join(root, name, "full")) for name in names}
    for name, ds in stores.items():
        cells = [replay(ds, Refinement(lv, accuracy=a)) for lv, a in settings]
        print(f"| {name} | " + " | ".join(f"{f:.0%} / {e:.1%}" for f, e in cells) + " |", flush=True)
    print(f"\nreplayed at L={levels}: where the cells run lie (shares of all cells)")
    print("| grid | accuracy | run | lattice | boundary | other | boundary cells inferred |")
    print("|---|---|---|---|---|---|---|")
    for name, ds in stores.items():
        for accuracy in (0.2, 0.3, 1.0):
            shares = where(ds, Refinement(levels, accuracy=accuracy)).values()
            print(f"| {name} | {accuracy:g} | " + " | ".join(f"{v:.0%}" for v in shares) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", default=",".join(GRIDS), help=f"comma-separated, of {', '.join(GRIDS)}")
    parser.add_argument("--side", type=int, default=15, help="values on each plotted axis")
    parser.add_argument("--levels", type=int, default=2, help="--refine: coarse spacing 2**levels")
    parser.add_argument("--accuracy", type=float, default=Refinement().accuracy, help="--refine_accuracy")
    parser.add_argument("--replay", default=None, help="only replay the full stores of an earlier --work=DIR")
    parser.add_argument("--work", default=None, help="directory of the stores (default: a temporary one); "
                        "complete full grids left there by an earlier run are reused, refined ones must not be there")
    args = parser.parse_args()
    names = args.grids.split(",")
    if args.replay:
        return _replays(args.replay, names, args.levels)
    grok_jax.use_cpu_cores()
    print(f"refine={args.levels}, refine_accuracy={args.accuracy}")
    print("| grid | cells | lanes run | wall time (refined / full) | cells equal | cells differing | full run |")
    print("|---|---|---|---|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory() if args.work is None else contextlib.nullcontext(args.work) as tmp:
        for name in names:
            config = _dense(name, args.side)
            full, t_full = _full(config, os.path.join(tmp, name, "full"))
            rule = Refinement(args.levels, accuracy=args.accuracy)
            refined, t_ref = _timed(config, os.path.join(tmp, name, f"refined_L{rule.levels}_a{rule.accuracy:g}"), rule)
            a, b = cell_phase(full)[0].values, cell_phase(refined)[0].values
            shape = "×".join(str(v) for v in a.shape)
            print(f"| {name} | {shape} | {float(refined.ran.mean()):.0%} | {t_ref / t_full:.2f} | "
                  f"{float((a == b).mean()):.1%} | {int((a != b).sum())} | {t_full:.0f} s |", flush=True)
        _replays(tmp, names, args.levels)


if __name__ == "__main__":
    main()
