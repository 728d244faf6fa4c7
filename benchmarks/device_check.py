"""The accelerator checks in one command: the paper's Figure 3 grid timed on the
accelerator, and a slice of it against the same lanes on the host's CPU cores.

    python benchmarks/device_check.py --out=DIR                 # on a GPU or TPU host
    python benchmarks/device_check.py --scale=quick --out=DIR   # the same steps, small (a CPU: minutes)

1. On the default backend: the figure ``fig3_wd`` (paper scale: 17 α × 19 ξ × 4 wd =
   1292 runs at p 97, N 500, 2000 steps) through the figures command's own path (its
   sweep, figure, claims), compilation cache off. Wall time from the start to the
   written figure, compilation included.
   The default memory budget per device is 0.8 of what JAX may allocate on the first
   device. A default backend that is the CPU is refused at paper scale (JAX without
   its CUDA or TPU plugin: hours, not minutes).
2. In a child process with ``JAX_PLATFORMS=cpu`` (every core a device): the grid's
   lanes at its second wd (paper scale: 5) and α 0.3, 0.5, 0.7, every ξ (57 lanes at
   paper scale: about 2 minutes on 16 cores, an estimate), into a store of their own.
3. Per lane of that slice: the phase on each backend, and the largest difference of
   the final train, test and corrupted accuracies.

Writes the figure (PNG, PDF, JSON) and ``device_check.json`` to ``DIR`` and prints a
summary; exit status 1 when a lane's phase differs. The stores go to a temporary
directory (``--work`` keeps them; the figure's store is then reused, the slice's
recomputed).
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
RUN = "alpha_wd"  # fig3_wd's run


def _figure(scale: str):
    from grok_jax import figures

    return figures.load_figure("fig3_wd", scale)


def _slice(config):
    """The config of the slice's lanes: the grid's, at its second wd (paper scale: 5) and
    the α of ``SLICE_ALPHA`` it has."""
    config = config.copy_and_resolve_references()
    config.sweep.wd = tuple(config.sweep.wd)[1:2]
    config.sweep.alpha = tuple(a for a in SLICE_ALPHA if a in tuple(config.sweep.alpha))
    return config


def _memory_gb() -> float:
    """0.8 of the memory JAX may allocate on the first device, GiB (4 where unknown: a CPU)."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return 0.8 * stats["bytes_limit"] / 2**30 if "bytes_limit" in stats else 4.0


def accelerator(args, work: str) -> dict:
    """Step 1: the figure on the default backend, timed."""
    import jax

    from grok_jax import figures
    from grok_jax.execution import Options

    if jax.default_backend() == "cpu" and args.scale == "paper":
        sys.stderr.write("device_check: JAX's default backend is the CPU (jax without its CUDA or TPU plugin?); "
                         "--scale=quick runs the same steps on a CPU\n")
        sys.exit(2)
    lines, memory = [], args.memory_gb or _memory_gb()

    def log(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    start = time.perf_counter()
    paths = figures.run_figure("fig3_wd", _figure(args.scale), args.scale, args.out, os.path.join(work, "results"),
                               Options(memory, log=log))
    seconds = time.perf_counter() - start
    with open(paths[-1]) as f:
        record = json.load(f)
    ds = _store(work, args.scale)
    plan = json.loads(ds.attrs["plan"])
    compiling = [float(m.group(1)) for m in map(re.compile(r"^compiled\b.*?\bin ([\d.]+) s").match, lines) if m]
    return {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
            "device_kind": jax.devices()[0].device_kind, "memory_gb": round(memory, 1), "seconds": round(seconds, 1),
            "compile_seconds": round(sum(compiling), 1), "store_existed": record["stores_existed"][RUN],
            "lanes": int(ds.phase.size), "groups": len(plan["groups"]), "chunks": len(plan["chunks"]),
            "claims": [f"{c['holds']} {c['text']}: {c['measured']}" for c in record["claims"]]}


def cpu(args, work: str) -> None:
    """Step 2 (in the child process): the slice's lanes on the CPU cores."""
    import jax

    import grok_jax
    from grok_jax.execution import run_sweep

    grok_jax.use_cpu_cores()
    start = time.perf_counter()
    run_sweep(_slice(_figure(args.scale).runs[RUN]), out=os.path.join(work, "cpu"), overwrite=True, progress=False,
              parameters=False, log=lambda s: None)
    with open(os.path.join(work, "cpu", "seconds.json"), "w") as f:
        json.dump({"seconds": time.perf_counter() - start, "devices": len(jax.devices())}, f)


def _store(work: str, scale: str):
    import grok_jax

    return grok_jax.load_results(os.path.join(work, "results", scale, RUN), parameters=False)


def compare(work: str, scale: str) -> dict:
    """Step 3: the slice's phases and final accuracies, accelerator against CPU."""
    import numpy as np

    import grok_jax

    host = grok_jax.load_results(os.path.join(work, "cpu"), parameters=False)
    device = _store(work, scale).sel({d: host[d] for d in ("wd", "alpha", "xi")}).transpose(*host.phase.dims, ...)
    differ = (device.phase != host.phase).values
    diff = {k: float(np.nanmax(np.abs(device[k].isel(step=-1) - host[k].isel(step=-1)).values)) for k in FINALS}
    with open(os.path.join(work, "cpu", "seconds.json")) as f:
        run = json.load(f)
    return {"lanes": int(differ.size), "phases_equal": int(differ.size - differ.sum()), "max_abs_diff": diff,
            "differing": [_lane(device, host, index) for index in zip(*np.nonzero(differ))],
            "cpu_seconds": round(run["seconds"], 1), "cpu_devices": run["devices"]}


def _lane(device, host, index: tuple) -> dict:
    """A lane whose phase differs: where it is, and its phase and final accuracies on each backend."""
    from grok_jax import phases

    record = {d: float(host[d].values[i]) for d, i in zip(host.phase.dims, index)}
    for name, ds in (("accelerator", device), ("cpu", host)):
        record[name] = {"phase": phases.PHASES[int(ds.phase.values[index])],
                        **{k: float(ds[k].isel(step=-1).values[index]) for k in FINALS}}
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="directory of the figure and device_check.json")
    parser.add_argument("--scale", default="paper", choices=("tiny", "quick", "paper"))
    parser.add_argument("--memory_gb", type=float, default=0.0,
                        help="memory budget per device for a chunk, GiB (0: 0.8 of what JAX may allocate)")
    parser.add_argument("--work", default=None, help="directory of the stores (default: a temporary one)")
    parser.add_argument("--part", default="all", choices=("all", "cpu"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part == "all" and args.out is None:
        parser.error("--out is required")
    with tempfile.TemporaryDirectory() if args.work is None else contextlib.nullcontext(args.work) as work:
        if args.part == "cpu":
            return cpu(args, work)
        import grok_jax

        grok_jax.use_cpu_cores()  # where the default backend is a CPU (--scale=quick): every core a device
        os.makedirs(args.out, exist_ok=True)
        report = {"accelerator": accelerator(args, work)}
        print(json.dumps(report["accelerator"], indent=1), flush=True)
        subprocess.run([sys.executable, __file__, "--part=cpu", f"--scale={args.scale}", f"--work={work}"],
                       env=dict(os.environ, JAX_PLATFORMS="cpu"), check=True)
        report["cpu_slice"] = compare(work, args.scale)
        with open(os.path.join(args.out, "device_check.json"), "w") as f:
            json.dump(report, f, indent=1)
        a, c = report["accelerator"], report["cpu_slice"]
        print(json.dumps(c, indent=1))
        print(f"fig3_wd ({args.scale}): {a['lanes']} lanes in {a['seconds']} s on {a['device_kind']} "
              f"({a['compile_seconds']} s compiling); the slice on {c['cpu_devices']} CPU devices: "
              f"{c['phases_equal']} of {c['lanes']} phases equal, final accuracies within "
              f"{max(c['max_abs_diff'].values()):.2g}")
        if c["phases_equal"] < c["lanes"]:
            sys.exit(1)


if __name__ == "__main__":
    main()
