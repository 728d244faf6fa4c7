"""The accelerator checks in one command: the paper's Figure 3 grid timed on the
accelerator, and a slice of it against the same lanes on the host's CPU cores.

    python benchmarks/device_check.py --out=DIR                 # on a GPU or TPU host
    python benchmarks/device_check.py --scale=quick --out=DIR   # the same steps, small (a CPU: minutes)

1. On the default backend: the figure ``fig3_wd`` (paper scale: 17 α × 19 ξ × 4 wd =
   1292 runs at p 97, N 500, 2000 steps) through the figures command's own path (its
   sweep, figure, claims), compilation cache off. Wall time from the start to the
   written figure, compilation included.
2. In a child process with ``JAX_PLATFORMS=cpu`` (every core a device): the grid's
   lanes at its second wd (paper scale: 5) and α 0.3, 0.5, 0.7, every ξ (57 lanes at
   paper scale), into a store of their own.
3. Per lane of that slice: the phase on each backend, and the largest difference of
   the final train, test and corrupted accuracies.

Writes the figure (PNG, PDF, JSON) and ``device_check.json`` to ``DIR`` and prints a
summary. The stores go to a temporary directory (``--work`` keeps them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time

SLICE_ALPHA = (0.3, 0.5, 0.7)  # the lanes run on both backends: these α at the grid's second wd, every ξ
FINALS = ("train_acc", "test_acc", "corrupt_acc")


def _slice(config):
    """The config of the slice's lanes: the grid's, at its second wd (paper scale: 5) and
    the α of ``SLICE_ALPHA`` it has."""
    config = config.copy_and_resolve_references()
    config.sweep.wd = tuple(config.sweep.wd)[1:2]
    config.sweep.alpha = tuple(a for a in SLICE_ALPHA if a in tuple(config.sweep.alpha))
    return config


def _grid(scale: str):
    from grok_jax import figures

    figure = figures.load_figure("fig3_wd", scale)
    return figure, figure.runs.alpha_wd


def accelerator(args, work: str) -> dict:
    """Step 1: the figure on the default backend, timed."""
    import jax

    from grok_jax import figures

    figure, _ = _grid(args.scale)
    lines = []

    def log(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    start = time.perf_counter()
    paths = figures.run_figure("fig3_wd", figure, args.scale, args.out, os.path.join(work, "results"),
                               memory_gb=args.memory_gb, log=log)
    seconds = time.perf_counter() - start
    with open(paths[-1]) as f:
        record = json.load(f)
    ds = _store(work, args.scale)
    plan = json.loads(ds.attrs["plan"])
    compiling = [float(m.group(1)) for m in map(re.compile(r"^compiled\b.*?\bin ([\d.]+) s").match, lines) if m]
    return {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
            "device_kind": jax.devices()[0].device_kind, "seconds": round(seconds, 1),
            "compile_seconds": round(sum(compiling), 1), "store_existed": record["stores_existed"]["alpha_wd"],
            "lanes": int(ds.phase.size), "groups": len(plan["groups"]), "chunks": len(plan["chunks"]),
            "claims": [f"{c['holds']} {c['text']}: {c['measured']}" for c in record["claims"]]}


def cpu(args, work: str) -> None:
    """Step 2 (in the child process): the slice's lanes on the CPU cores."""
    import grok_jax
    from grok_jax.execution import run_sweep

    grok_jax.use_cpu_cores()
    _, config = _grid(args.scale)
    start = time.perf_counter()
    run_sweep(_slice(config), out=os.path.join(work, "cpu"), progress=False, parameters=False, log=lambda s: None)
    with open(os.path.join(work, "cpu", "seconds.json"), "w") as f:
        json.dump({"seconds": time.perf_counter() - start}, f)


def _store(work: str, scale: str):
    import grok_jax

    return grok_jax.load_results(os.path.join(work, "results", scale, "alpha_wd"))


def compare(work: str, scale: str) -> dict:
    """Step 3: the slice's phases and final accuracies, accelerator against CPU."""
    import numpy as np

    import grok_jax
    from grok_jax import phases

    host = grok_jax.load_results(os.path.join(work, "cpu"))
    device = _store(work, scale).sel({d: host[d] for d in ("wd", "alpha", "xi")})
    differ = (device.phase != host.phase).values
    diff = {k: float(np.nanmax(np.abs(device[k].isel(step=-1) - host[k].isel(step=-1)).values)) for k in FINALS}
    lanes = []
    for index in zip(*np.nonzero(differ)):
        at = {d: float(host[d].values[i]) for d, i in zip(host.phase.dims, index)}
        lanes.append({**at, **{name: phases.PHASES[int(ds.phase.values[index])] for name, ds in
                               (("accelerator", device), ("cpu", host))},
                      **{f"{k} (accelerator, cpu)": [float(ds[k].isel(step=-1).values[index]) for ds in (device, host)]
                         for k in ("train_acc", "test_acc")}})
    with open(os.path.join(work, "cpu", "seconds.json")) as f:
        seconds = json.load(f)["seconds"]
    return {"lanes": int(differ.size), "phases_equal": int(differ.size - differ.sum()), "max_abs_diff": diff,
            "differing": lanes, "cpu_seconds": round(seconds, 1), "cpu_devices": os.cpu_count()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory of the figure and device_check.json")
    parser.add_argument("--scale", default="paper", choices=("tiny", "quick", "paper"))
    parser.add_argument("--memory_gb", type=float, default=60.0, help="memory budget per device for a chunk, GiB")
    parser.add_argument("--work", default=None, help="directory of the stores (default: a temporary one)")
    parser.add_argument("--part", default="all", choices=("all", "cpu"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() if args.work is None else contextlib.nullcontext(args.work) as work:
        if args.part == "cpu":
            return cpu(args, work)
        os.makedirs(args.out, exist_ok=True)
        report = {"accelerator": accelerator(args, work)}
        print(json.dumps(report["accelerator"], indent=1), flush=True)
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        subprocess.run([sys.executable, __file__, "--part=cpu", f"--scale={args.scale}", f"--work={work}",
                        f"--out={args.out}"], env=env, check=True)
        report["cpu_slice"] = compare(work, args.scale)
        with open(os.path.join(args.out, "device_check.json"), "w") as f:
            json.dump(report, f, indent=1)
        a, c = report["accelerator"], report["cpu_slice"]
        print(json.dumps(c, indent=1))
        print(f"fig3_wd ({args.scale}): {a['lanes']} lanes in {a['seconds']} s on {a['device_kind']} "
              f"({a['compile_seconds']} s compiling); the slice on {c['cpu_devices']} CPU cores: "
              f"{c['phases_equal']} of {c['lanes']} phases equal, final accuracies within "
              f"{max(c['max_abs_diff'].values()):.2g}")


if __name__ == "__main__":
    main()
