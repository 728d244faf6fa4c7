"""The command line: ``python -m grok_jax.sweep --grid=wd_xi [--scale=paper]
[--config.steps=500] [--out=DIR] [--memory_gb=4]`` (see README).

A thin layer: flags and the config file, then :func:`grok_jax.execution.run_sweep`,
the phase table and the figures; every error is one line and an exit status.
"""

from __future__ import annotations

import os
import sys

import jax
import ml_collections

from grok_jax import config as cfg
from grok_jax import refine, results
from grok_jax.cli import Hosts, check_hosts, start
from grok_jax.cli import fail as _fail
from grok_jax.errors import ConfigError, RunError
from grok_jax.execution import Options, check_checkpointing, run_sweep, sweep
from grok_jax.plan import check_fits, check_resources
from grok_jax.programs import default_cache_dir
from grok_jax.refine import Refinement
from grok_jax.runner import CHECKPOINT_MINUTES

__all__ = ["main", "run_sweep"]


def main(argv: list[str] | None = None) -> None:
    """``python -m grok_jax.sweep [flags]`` (``argv`` without the program name;
    default ``sys.argv[1:]``). Exits with status 2 on bad input, 1 when the store
    or the figures cannot be written (or another process failed), 75 when stopped by
    SIGTERM, of this process or another (checkpointed: run it again), 130 on Ctrl-C. Flags live in a ``FlagValues``
    of their own, so that ``main`` can be called more than once in a process."""
    from absl import flags
    from ml_collections import config_flags

    argv = [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
    fv = flags.FlagValues()
    grid = flags.DEFINE_string("grid", "wd_xi", f"grid: a name in grok_jax/grids/ ({', '.join(cfg.available_grids())}) "
                               "or a path to a config file with get_config(scale)", flag_values=fv)
    scale = flags.DEFINE_enum("scale", "small", cfg.SCALES, "small: minutes on a laptop CPU; paper: the "
                              "paper's p, N, steps", flag_values=fv)
    out = flags.DEFINE_string("out", None, "output directory (default: results/<grid>[_paper])", flag_values=fv)
    memory = flags.DEFINE_float("memory_gb", 4.0, "memory budget per device for a chunk of lanes, GiB",
                                flag_values=fv)
    per_device = flags.DEFINE_integer("lanes_per_device", 0, "most lanes per device in a chunk (0: the "
                                      "platform's default, 1 on CPU (4 for tiny problems), else as many as fit "
                                      "in memory)", flag_values=fv)
    cache = flags.DEFINE_string("compilation_cache", default_cache_dir(), "directory of the persistent "
                                "compilation cache (a second run of the same shapes compiles nothing); '' "
                                "disables it", flag_values=fv)
    every = flags.DEFINE_integer("checkpoint_steps", 0, "checkpoint a long chunk's training state every this "
                                 "many steps (a multiple of log_every); 0: every --checkpoint_minutes", flag_values=fv)
    minutes = flags.DEFINE_float("checkpoint_minutes", CHECKPOINT_MINUTES, "checkpoint a long chunk's training "
                                 "state at most this often (minutes)", flag_values=fv)
    overwrite = flags.DEFINE_bool("overwrite", False, "replace the store in --out, whatever it holds, instead of "
                                  "resuming it", flag_values=fv)
    keep_state = flags.DEFINE_bool("keep_state", True, "store each lane's final optimizer state (twice the size "
                                   "of its parameters) so that a later run with more --config.steps continues it; "
                                   "--nokeep_state saves that space", flag_values=fv)
    repair = flags.DEFINE_bool("repair", False, "recompute the lanes of the store's damaged chunks (named by the "
                               "error that a damaged store gives) and resume", flag_values=fv)
    levels = flags.DEFINE_integer("refine", 0, "adaptive refinement: run every 2^L-th value of each traced axis "
                                  "(ξ, wd, α, ...) first, then, round by round, only the cells between neighbours "
                                  "whose phases or accuracies differ; the others are inferred (docs/method.md). "
                                  "0: every cell (on a refined store: the cells not run yet)", flag_values=fv)
    extra_seeds = flags.DEFINE_integer("refine_seeds", 0, "add up to this many seeds, one per round, to the cells "
                                       "whose seeds disagree (the seed axis grows by as many values)", flag_values=fv)
    jump = flags.DEFINE_float("refine_accuracy", Refinement().accuracy, "with --refine: also refine where a final "
                              "train, test or corrupted accuracy changes by more than this between neighbouring "
                              "cells (catches regions smaller than the coarse spacing)", flag_values=fv)
    accelerator = flags.DEFINE_bool("accelerator_layout", False, "follow the GPU/TPU layout rules (no row "
                                    "blocks, lanes batched per device, no readout padding) on any platform, "
                                    "e.g. to test that path on a CPU", flag_values=fv)
    coordinator = flags.DEFINE_string("coordinator_address", None, "multi-host: host:port of process 0's "
                                      "coordinator (jax.distributed.initialize); with --num_processes and "
                                      "--process_id", flag_values=fv)
    n_processes = flags.DEFINE_integer("num_processes", None, "multi-host: number of processes", flag_values=fv)
    process_id = flags.DEFINE_integer("process_id", None, "multi-host: this process's index", flag_values=fv)
    distributed = flags.DEFINE_bool("distributed", False, "multi-host with the cluster's own settings, as "
                                    "jax.distributed.initialize() detects them (TPU VMs, SLURM, Open MPI)",
                                    flag_values=fv)
    report = flags.DEFINE_bool("report", True, "write report.html beside the figures: the interactive report "
                               "of the store (docs/report.md); --noreport skips it", flag_values=fv)
    show_help = flags.DEFINE_bool("help", False, "show this help", short_name="h", flag_values=fv)
    try:
        fv(argv, known_only=True)  # --grid and --scale pick the config file
        if show_help.value:
            print(f"python -m grok_jax.sweep [flags]\n{fv.get_help()}\n  --config.FIELD=VALUE: override a field "
                  "of the grid's config (see grok_jax/config.py)")
            sys.exit(0)
        # New attributes allowed so that an axis can be added from the command line
        # (--config.sweep.seed="(0,1,2)"); check_config rejects unknown fields.
        grid_config = cfg.load_config(grid.value, scale.value)  # kept as it is, for _check_overrides
        config = config_flags.DEFINE_config_dict("config", grid_config.copy_and_resolve_references(),
                                                 "the grid's config", flag_values=fv, lock_config=False,
                                                 accept_new_attributes=True, sys_argv=argv)
        rest = fv(argv)[1:]
    except (ConfigError, flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        _fail(e)
    if rest:
        _fail(ConfigError(f"unexpected arguments {rest}; use --flag=value"))
    _check_overrides(config.value, grid_config)
    changed = {}
    if config.value.model != grid_config.model:  # the grid's settings, for another model
        try:
            changed = cfg.switch_model(config.value, grid_config, scale.value, given_fields(argv))
        except ConfigError as e:
            _fail(e)
    name = os.path.splitext(os.path.basename(grid.value))[0]
    target = out.value or os.path.join("results", name + ("_paper" if scale.value == "paper" else ""))
    if target.rstrip("/").endswith(".zarr"):
        _fail(ConfigError(f"--out={target} ends in .zarr: it names the output directory, which holds the "
                          f"store {results.STORE} and the figures; e.g. --out={target.rstrip('/')[:-5]}"))
    hosts = Hosts(distributed.value, coordinator.value, n_processes.value, process_id.value)
    try:  # all input checked once, here, before the cache directory is made
        cfg.check_config(config.value)
        check_resources(memory.value, per_device.value or None)
        check_fits(config.value, memory.value)
        check_checkpointing(config.value, every.value, minutes.value)
        check_hosts(hosts)
        rule = Refinement(levels.value, extra_seeds.value, jump.value)
        refine.check(rule, config.value, 2 if hosts.auto or (hosts.count or 1) > 1 else 1, target)
    except ConfigError as e:
        _fail(e)
    if changed:
        print(f"model={config.value.model}: its own settings {', '.join(f'{k}={v}' for k, v in changed.items())} "
              "(set them with --config.FIELD=VALUE)")
    start(cache.value, cache.present, hosts)
    store = results.store_path(target)
    options = Options(memory.value, per_device.value or None, every.value, minutes.value, overwrite.value,
                      repair.value, accelerator.value, keep_state.value, rule,
                      parameters=False)  # the figures need no parameters
    try:
        ds = sweep(refine.with_extra_seeds(config.value, rule), target, options)
        if jax.process_index():  # process 0 shows and draws the results
            return
        from grok_jax import plotting  # matplotlib: imported only to draw (a second less to start)

        print(plotting.phase_table(ds))
        fallback = plotting.plot_fallback(ds)
        if fallback:
            print(f"plot: {fallback}")
        for path in plotting.save_figures(ds, target):
            print(f"wrote {path}")
        if report.value:
            from grok_jax.report import write_report

            print(f"wrote {write_report(ds, target)}")
    except ConfigError as e:
        _fail(e)
    except RunError as e:
        _fail(e, status=e.status)
    except OSError as e:  # the figures (the store's own errors are StoreWriteErrors)
        _fail(f"cannot write the figures to {target}: {e.strerror or e}; the results are complete in {store}",
              status=1)
    except KeyboardInterrupt:
        kept = f"the lanes committed to {store} are kept" if os.path.exists(store) else "no results were written"
        _fail(f"interrupted; {kept}: run the same command again to resume", status=130)
    print(f"results: {store}  (grok_jax.load_results({target!r}))")


def given_fields(argv: list[str]) -> set[str]:
    """The config fields a command line sets (``--config.lr=0.1``, ``-config.lr 0.1``)."""
    flags_ = (arg.lstrip("-").split("=")[0] for arg in argv if arg.startswith("-"))
    return {name[len("config."):] for name in flags_ if name.startswith("config.")}


def _check_overrides(config: ml_collections.ConfigDict, grid_config: ml_collections.ConfigDict) -> None:
    """A fixed field changed on the command line while a sweep axis gives every lane
    its own value would be silently unused: refused."""
    for name in config.sweep:
        if name in grid_config and config[name] != grid_config[name]:
            _fail(ConfigError(f"--config.{name}={config[name]!r} is shadowed by the sweep axis "
                              f"{name}={tuple(config.sweep[name])}; set --config.sweep.{name}=(...) instead"))


if __name__ == "__main__":
    main()
