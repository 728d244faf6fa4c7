"""Mutation check: does the test suite catch small, planted bugs?

Usage (with the project's virtualenv active, from anywhere):

    python tests/mutate.py                  # every mutant
    python tests/mutate.py --only eps_1e7 bn_no_mean_subtraction
    python tests/mutate.py --list           # the mutants, their tests, and whether each still applies

For each mutant the repository's tracked and untracked-not-ignored files
(``git ls-files --cached --others --exclude-standard``) are copied into a fresh
temporary directory, ONE exact text replacement is made in one source file of
the copy (its ``old`` text must occur exactly once, so a stale mutant fails
loudly instead of silently testing nothing), and

    python -m pytest -n 0 -x -q -p no:cacheprovider <tests>

runs in the copy with ``PYTHONPATH`` = the copy first, so that ``grok_jax`` is
imported from the copy and not from the editable install (checked before each
run). A mutant is *caught* when pytest reports failures (exit 1), or when it
runs past ``--timeout`` (reported as such); *MISSED* when the tests pass; an
ERROR is any other pytest exit (no tests collected, a selection that does not
exist, a collection error). Exit status 1 if any mutant was missed or errored.

Selections name the test files (and ``-k`` expressions) meant to catch each class;
a selected path missing from the copy is skipped, and a selection with none left is
an ERROR.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]


class Mutant(NamedTuple):
    name: str
    cls: str  # the class of bug it stands for
    file: str  # source file, relative to the repository
    old: str  # exact text, occurring once in ``file``
    new: str
    tests: tuple[str, ...]  # pytest arguments: files, node ids, -k


# Targeted selections (pytest -x stops at the first failure; a missed mutant runs all).
ORACLE = ("tests/test_train.py", "-kevery_logged_metric")  # the NumPy trajectories
DATA = ("tests/test_data.py",)
ADAMW = ("tests/test_train.py", "-kadamw or every_logged_metric")
LANES = ("tests/test_lanes.py",)
PHASES = ("tests/test_phases.py", "tests/test_reference.py")
MINIBATCH = ("tests/test_minibatch.py",)
STATIC = ("tests/test_static_axes.py",)

MUTANTS: list[Mutant] = [
    Mutant("data_no_corruption", "data", "grok_jax/data.py",
           "label = jnp.where(corrupt, noise, true_label)", "label = true_label", DATA),
    Mutant("data_noise_below_p_minus_1", "data", "grok_jax/data.py",
           "randint(corrupt_key, (p * p,), 0, p,", "randint(corrupt_key, (p * p,), 0, p - 1,", DATA),
    Mutant("data_corrupt_mask_off_by_one", "data", "grok_jax/data.py",
           "corrupt = rows < n_corrupt", "corrupt = rows <= n_corrupt", DATA),
    Mutant("data_no_corruption_vs_oracle", "data", "grok_jax/data.py",
           "label = jnp.where(corrupt, noise, true_label)", "label = true_label", ORACLE),
    Mutant("data_train_mask_off_by_one", "masks", "grok_jax/data.py",
           "train = rows < n_train", "train = rows <= n_train", ORACLE),
    Mutant("clean_acc_over_all_train_rows", "masks/metrics", "grok_jax/metrics.py",
           "total(hit_true, rows.train & ~rows.corrupt)", "total(hit_true, rows.train)", ORACLE),
    Mutant("eps_1e7", "optimizer", "grok_jax/config.py", "c.eps = 1e-8", "c.eps = 1e-7", ADAMW),
    Mutant("b2_099", "optimizer", "grok_jax/config.py", "c.b2 = 0.98", "c.b2 = 0.99", ADAMW),
    Mutant("init_std_8N", "init", "grok_jax/models/mlp2.py", "(16.0 * width) ** (-1.0 / 3.0)",
           "(8.0 * width) ** (-1.0 / 3.0)", ORACLE),
    Mutant("lanes_outputs_reversed_in_chunk", "lane order", "grok_jax/runner.py",
           "jax.tree.map(lambda v: np.asarray(v)[new], outputs)",
           "jax.tree.map(lambda v: np.asarray(v)[new[::-1]], outputs)", LANES),
    Mutant("lanes_inputs_permuted_across_devices", "lane order", "grok_jax/runner.py",
           "jax.device_put(a[c.lanes], sharding)", "jax.device_put(a[c.lanes[::-1]], sharding)", LANES),
    Mutant("lanes_classified_with_another_xi", "lane order", "grok_jax/runner.py",
           "phases.summarize(out_log, self.plan.xi[lanes], steps)",
           "phases.summarize(out_log, self.plan.xi[lanes[::-1]], steps)", LANES),
    Mutant("dropout_gradient_unscaled", "dropout", "grok_jax/models/mlp2.py",
           "(dpre,) = vjp(dh)", "(dpre,) = vjp(dh / (1.0 - rate))",
           ("tests/test_train.py", "-kdropout_and_batchnorm or every_logged_metric")),
    Mutant("lanes_stored_reversed", "lane order", "grok_jax/results.py",
           'arrays[name].oindex[_region(lanes, values)] = values',
           'arrays[name].oindex[_region(lanes[::-1], values)] = values',
           LANES),
    Mutant("bn_no_mean_subtraction", "BatchNorm", "grok_jax/models/mlp2.py",
           "h = (h - stats.mean) * jax.lax.rsqrt(stats.var + BN_EPS)",
           "h = h * jax.lax.rsqrt(stats.var + BN_EPS)", ORACLE),
    Mutant("bn_stats_over_padding_too", "BatchNorm", "grok_jax/models/mlp2.py",
           "w = weight[:, None] / jnp.sum(weight)", "w = jnp.ones_like(weight)[:, None] / weight.shape[0]", ORACLE),
    Mutant("dropout_not_inverted", "dropout", "grok_jax/models/mlp2.py",
           "pre = jnp.where(keep, pre / (1.0 - rate), 0.0)", "pre = jnp.where(keep, pre, 0.0)", ORACLE),
    Mutant("dropout_keeps_the_dropped", "dropout", "grok_jax/models/mlp2.py",
           "keep = noise >= rate", "keep = noise < 1.0 - rate", ORACLE),
    Mutant("bn_running_var_biased", "BatchNorm", "grok_jax/models/mlp2.py",
           "var = batch.var * count / (count - 1)", "var = batch.var", MINIBATCH),
    Mutant("bn_momentum_09", "BatchNorm", "grok_jax/models/mlp2.py",
           "BN_MOMENTUM = 0.1  #", "BN_MOMENTUM = 0.9  #", MINIBATCH),
    Mutant("minibatch_padding_drawn", "mini-batch", "grok_jax/data.py",
           "jnp.where(jnp.arange(n_max) < n_train, bits,", "jnp.where(jnp.arange(n_max) <= n_train, bits,",
           MINIBATCH),
    Mutant("minibatch_drop_last", "mini-batch", "grok_jax/data.py",
           "return (n_train + batch_size - 1) // batch_size", "return n_train // batch_size", MINIBATCH),
    Mutant("minibatch_loss_over_batch_size", "mini-batch", "grok_jax/train.py",
           "return rows_t, jnp.sum(rows_t.train)", "return rows_t, jnp.float32(batch)",
           MINIBATCH),
    Mutant("minibatch_same_order_every_epoch", "mini-batch", "grok_jax/train.py",
           "epoch_order(jax.random.fold_in(batch_key, e),", "epoch_order(batch_key,", MINIBATCH),
    Mutant("static_group_of_the_first_value", "static axes", "grok_jax/plan.py",
           "g = keys.index(tuple(values[name] for name in static_names))", "g = 0", STATIC),
    Mutant("phase_threshold_085", "phases", "grok_jax/phases.py",
           "THRESHOLD = 0.9  #", "THRESHOLD = 0.85  #", PHASES),
    Mutant("phase_inversion_boundary_1", "phases", "grok_jax/phases.py",
           "1.05 - np.asarray(xi)", "1.0 - np.asarray(xi)", PHASES),
    Mutant("phase_forgetting_by_collapse", "phases", "grok_jax/phases.py",  # the weight-norm clause back
           'peak = peak_test_acc(log["test_acc"])',
           'peak = np.where(log["weight_norm"][..., -1] < 0.5 * log["weight_norm"][..., 0], 1.0, '
           'peak_test_acc(log["test_acc"]))', PHASES),
    Mutant("phase_forgetting_by_train_peak", "phases", "grok_jax/phases.py",  # memorized-then-lost as Forgetting
           'peak = peak_test_acc(log["test_acc"])', 'peak = peak_test_acc(np.fmax(log["train_acc"], log["test_acc"]))',
           PHASES),
    Mutant("peak_train_acc_over_all_rows", "mini-batch", "grok_jax/train.py",  # not the step's batch
           'accuracy = sums["train_acc"] / count.astype(', 'accuracy = sums["train_acc"] / n_train.astype(',
           MINIBATCH),
    Mutant("peak_train_acc_not_carried", "checkpoints", "grok_jax/train.py",  # each segment starts afresh
           "carry = (state.variables, state.opt_state, state.peak_train_acc)",
           "carry = (state.variables, state.opt_state, jnp.float32(jnp.nan))",
           ("tests/test_train.py", "-kcut_into_segments")),
]


def copy_repo(repo: Path, dest: Path) -> None:
    """Copies the tracked and untracked-not-ignored files of ``repo`` to ``dest``."""
    listing = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], check=True, capture_output=True).stdout
    for rel in filter(None, listing.decode().split("\0")):
        src = repo / rel
        if src.is_file():  # a tracked file deleted in the work tree is skipped
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def plant(root: Path, mutant: Mutant) -> None:
    """Replaces ``mutant.old`` by ``mutant.new`` in the copy; the old text must occur once."""
    path = root / mutant.file
    text = path.read_text()
    count = text.count(mutant.old)
    if count != 1:
        raise RuntimeError(f"mutant {mutant.name}: {mutant.old!r} occurs {count} times in {mutant.file}, not once")
    path.write_text(text.replace(mutant.old, mutant.new))


def environment(root: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def check_imported_from(root: Path, env: dict[str, str]) -> None:
    """Fails unless a subprocess like pytest's imports ``grok_jax`` from ``root``."""
    out = subprocess.run([sys.executable, "-c", "import grok_jax; print(grok_jax.__file__)"], cwd=root, env=env,
                         check=True, capture_output=True, text=True).stdout.strip()
    if Path(out).resolve() != (root / "grok_jax" / "__init__.py").resolve():
        raise RuntimeError(f"grok_jax is imported from {out}, not from the copy {root}")


def selection(root: Path, tests: tuple[str, ...]) -> list[str]:
    """The pytest arguments, without test paths that do not exist in the copy."""
    keep = [t for t in tests if t.startswith("-") or (root / t.split("::")[0]).exists()]
    if not any(not t.startswith("-") for t in keep):
        raise RuntimeError(f"none of the test paths {tests} exists")
    return keep


def run_mutant(mutant: Mutant, timeout: float) -> tuple[str, float, str]:
    """``(verdict, seconds, pytest's output tail)``; verdict caught, caught (timeout), MISSED or ERROR."""
    root = Path(tempfile.mkdtemp(prefix=f"mutate_{mutant.name}_"))
    start = time.perf_counter()
    try:
        copy_repo(REPO, root)
        plant(root, mutant)
        env = environment(root)
        check_imported_from(root, env)
        # In one process (-n 0): with -x, pytest-xdist ends a failing run with status 2, not 1.
        cmd = [sys.executable, "-m", "pytest", "-n", "0", "-x", "-q", "-p", "no:cacheprovider",
               *selection(root, mutant.tests)]
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # pytest and whatever its tests started
            proc.communicate()
            return "caught (timeout)", time.perf_counter() - start, ""
        verdict = {0: "MISSED", 1: "caught"}.get(proc.returncode, f"ERROR (pytest exit {proc.returncode})")
        return verdict, time.perf_counter() - start, "\n".join(output.strip().splitlines()[-5:])
    except (RuntimeError, subprocess.CalledProcessError) as e:
        return f"ERROR ({e})", time.perf_counter() - start, ""
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutants")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per mutant (default 600)")
    args = parser.parse_args(argv)
    names = [m.name for m in MUTANTS]
    unknown = sorted(set(args.only or ()) - set(names))
    if unknown:
        parser.error(f"unknown mutant(s) {', '.join(unknown)}; known: {', '.join(names)}")
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    if args.list:
        for m in chosen:
            count = (REPO / m.file).read_text().count(m.old)
            state = "" if count == 1 else f"  STALE: old text occurs {count} times"
            print(f"{m.name:38} {m.cls:14} {m.file:20} {' '.join(m.tests)}{state}")
        return 0
    missed, errors = [], []
    for m in chosen:
        verdict, seconds, tail = run_mutant(m, args.timeout)
        print(f"{verdict:16} {m.name:38} {seconds:6.1f} s  [{' '.join(m.tests)}]", flush=True)
        if verdict == "MISSED":
            missed.append(m.name)
        elif verdict.startswith("ERROR"):
            errors.append(m.name)
            if tail:
                print("    " + tail.replace("\n", "\n    "))
    caught = len(chosen) - len(missed) - len(errors)
    print(f"summary: {caught}/{len(chosen)} caught, {len(missed)} missed"
          + (f" ({', '.join(missed)})" if missed else "") + f", {len(errors)} errors"
          + (f" ({', '.join(errors)})" if errors else ""))
    return 1 if missed or errors else 0


if __name__ == "__main__":
    sys.exit(main())
