"""Adaptive refinement: on synthetic phase functions with known boundaries (no
training), and on a real tiny grid against the full grid's run, killed and resumed."""

import os
import subprocess
import sys

import numpy as np
import pytest

from grok_jax import plotting, programs, refine, results
from grok_jax.config import load_config
from grok_jax.errors import ConfigError
from grok_jax.execution import run_sweep
from grok_jax.plan import Resources, make_plan
from grok_jax.refine import Cells, Refinement
from grok_jax.runner import Runner

FAULTS = os.path.join(os.path.dirname(__file__), "faults.py")
QUIET = dict(progress=False, log=lambda s: None, lanes_per_device=1)


def _refine_synthetic(phase: np.ndarray, accuracy: np.ndarray, rule: Refinement) -> tuple[np.ndarray, refine.Outcome]:
    """Rounds of :func:`refine.refine` with ``phase``/``accuracy`` (per cell) in place
    of a sweep's results, until nothing is left to run: the cells run, the last outcome."""
    ran = np.zeros(phase.shape, bool)
    for _ in range(50):
        cells = Cells(ran.copy(), np.where(ran, phase, -1), np.ones_like(ran),
                      np.where(ran[..., None], accuracy, np.nan))
        outcome = refine.refine(cells, tuple(range(phase.ndim)), rule)
        if not outcome.missing.any():
            return ran, outcome
        assert not (outcome.missing & ran).any()  # a cell runs once
        ran |= outcome.missing
    raise AssertionError("refinement did not end")


def _as_accuracy(phase: np.ndarray) -> np.ndarray:
    """Accuracies that follow the phase (train, test, corrupted), as real runs' do."""
    return np.stack([phase * 0.4, 1 - phase * 0.4, phase * 0.3], axis=-1).astype(float)


def test_a_boundary_is_found_exactly_with_the_cells_it_needs():
    """1-D, 17 values, coarse spacing 4, boundary between 9 and 10: the lattice
    (0, 4, 8, 12, 16), then 10 (box 8-12 differs), then 9 (box 8-10): 7 cells; in 2-D
    with a boundary across x only, the boxes halve along x only: 7 × 3 cells."""
    phase = (np.arange(17) >= 10).astype(int)
    ran, out = _refine_synthetic(phase, _as_accuracy(phase), Refinement(levels=2))
    assert np.flatnonzero(ran).tolist() == [0, 4, 8, 9, 10, 12, 16]
    assert np.array_equal(out.inferred, ~ran)
    np.testing.assert_array_equal(out.phase[~ran], phase[~ran])

    plane = np.broadcast_to(phase[:, None], (17, 9))
    ran, out = _refine_synthetic(plane, _as_accuracy(plane), Refinement(levels=2))
    assert np.argwhere(ran).tolist() == [[x, y] for x in (0, 4, 8, 9, 10, 12, 16) for y in (0, 4, 8)]
    np.testing.assert_array_equal(out.phase[~ran], plane[~ran])


def test_the_midpoint_of_an_agreeing_edge_is_guessed_and_run_only_if_its_half_differs():
    """5 × 5, coarse spacing 4, phase 1 where x ≥ 3 and y ≤ 2: the edges x = 4 and
    y = 0 differ, x = 0 and y = 4 agree. The box is halved along both axes: the
    centre and the midpoints of the differing edges run; (0, 2) and (2, 4) take
    their edge's phase. The half with (0, 2) is uniform, so it is never run; the half
    with (2, 4) holds the boundary, so it runs before that half is halved."""
    x, y = np.meshgrid(np.arange(5), np.arange(5), indexing="ij")
    phase = ((x >= 3) & (y <= 2)).astype(int)
    ran, out = _refine_synthetic(phase, _as_accuracy(phase), Refinement(levels=2))
    assert ran[2, 2] and ran[2, 0] and ran[4, 2]
    assert not ran[0, 2] and out.inferred[0, 2]
    assert ran[2, 4]
    assert np.array_equal(out.inferred, ~ran)
    np.testing.assert_array_equal(out.phase[~ran], phase[~ran])


def test_three_phases_with_curved_boundaries_from_a_fraction_of_the_cells():
    x, y = np.meshgrid(np.arange(17), np.arange(19), indexing="ij")
    phase = np.where(x + 0.05 * (y - 9) ** 2 > 11.5, 1, np.where(y > 14, 2, 0))
    ran, out = _refine_synthetic(phase, _as_accuracy(phase), Refinement(levels=2))
    assert np.array_equal(out.inferred, ~ran)  # every cell run or inferred
    np.testing.assert_array_equal(out.phase[~ran], phase[~ran])  # and inferred right
    assert ran.mean() < 0.25, ran.mean()  # 78 of 323 cells


def test_an_island_of_one_cell_is_caught_by_the_accuracy_criterion():
    """One cell of another phase (6, 6) inside a coarse box (4-8 × 4-8) whose corners
    all have the first phase: invisible to the phase labels, found because the test
    accuracy rises towards it, steeply from below, slowly from above, so the corners'
    accuracies differ by more than 0.2. Without the accuracy criterion it is inferred
    away, as docs/method.md says refinement can miss."""
    x, y = np.meshgrid(np.arange(17), np.arange(17), indexing="ij")
    fall = lambda d: np.where(d >= 0, 0.05 * d, -0.3 * d)  # noqa: E731
    test = np.clip(0.91 - fall(x - 6) - fall(y - 6), 0.3, 1.0)
    phase = (test >= 0.9).astype(int)
    assert np.argwhere(phase).tolist() == [[6, 6]]
    accuracy = np.stack([np.full_like(test, 0.95), test, np.zeros_like(test)], axis=-1)
    ran, out = _refine_synthetic(phase, accuracy, Refinement(levels=2, accuracy=0.2))
    assert ran[6, 6]
    np.testing.assert_array_equal(out.phase[~ran], phase[~ran])
    ran, out = _refine_synthetic(phase, accuracy, Refinement(levels=2, accuracy=1.0))
    assert not ran[6, 6] and out.inferred[6, 6] and out.phase[6, 6] == 0  # missed


def test_a_cell_whose_seeds_disagree_is_refined_around():
    """One phase everywhere, but at the lattice cell 8 of 17 the seeds disagree: the
    boxes on both sides of it are halved down to spacing 1, as at a boundary."""
    phase = np.zeros(17, int)
    certain = np.ones(17, bool)
    certain[8] = False
    ran = np.zeros(17, bool)
    for _ in range(10):
        accuracy = np.where(ran[:, None], np.full((17, 3), 0.5), np.nan)
        cells = Cells(ran.copy(), np.where(ran, phase, -1), certain, accuracy)
        out = refine.refine(cells, (0,), Refinement(levels=2))
        if not out.missing.any():
            break
        ran |= out.missing
    assert np.flatnonzero(ran).tolist() == [0, 4, 6, 7, 8, 9, 10, 12, 16]
    assert np.array_equal(out.inferred, ~ran)


def test_seeds_are_added_where_they_disagree_until_the_majority_is_clear():
    """3 seeds + 2 extra. Cell 0: A A A, clear: none added. Cell 1: A A B, then
    seed 3 is A: 3 to 1, clear. Cell 2: A B B, then B: 3 to 1. Cell 3: A B A, then
    B (2 to 2), then B: 3 to 2, not clear, but its extra seeds are spent."""
    seed_phase = np.array([[0, 0, 0, 0, 0], [0, 0, 1, 0, 0], [0, 1, 1, 1, 1], [0, 1, 0, 1, 1]])
    done = np.zeros_like(seed_phase, bool)
    scheduled = np.zeros_like(done)
    scheduled[:, :3] = done[:, :3] = True
    added = []
    for _ in range(5):
        more = refine.extra_seeds(np.where(done, seed_phase, -1), done, scheduled, n_extra=2)
        if not more.any():
            break
        added.append(np.argwhere(more).tolist())
        scheduled |= more
        done |= more
    assert added == [[[1, 3], [2, 3], [3, 3]], [[3, 4]]]


def test_the_seed_axis_anywhere_gives_the_same_rounds():
    """:func:`refine.next_round` on flat lanes of a 3-seed (+1 extra) × 9 wd × 7 ξ
    grid with its seed axis first and last: the same lanes run, inferred, and phases
    (a synthetic phase per lane; seeds disagree at one lattice cell)."""
    wd, xi = np.meshgrid(np.arange(9), np.arange(7), indexing="ij")
    cell = np.where(wd + xi > 8, 3, 0)
    per_seed = np.repeat(cell[..., None], 4, axis=-1)
    per_seed[4, 2, 1] = 5  # seed 1 of the cell wd 4, ξ 2 disagrees
    rule = Refinement(levels=2, seeds=1)
    outcomes = []
    for order in (("seed", "wd", "xi"), ("wd", "xi", "seed")):
        axes = {"seed": (0, 1, 2, 3), "wd": tuple(range(9)), "xi": tuple(np.arange(7) / 10)}
        axes = {k: axes[k] for k in order}
        truth = np.moveaxis(per_seed, -1, 0) if order[0] == "seed" else per_seed
        flat = truth.reshape(-1)
        done = np.zeros(flat.shape, bool)
        for _ in range(20):
            lanes = dict(phase=np.where(done, flat, -1).astype(np.int8), done=done.copy(), scheduled=done.copy(),
                         **{k: np.where(done, flat / 10.0, np.nan) for k in refine.ACCURACIES})
            step = refine.next_round(axes, lanes, rule)
            if not step.run.any():
                break
            done |= step.run
        shaped = [v.reshape(truth.shape) for v in (done, step.inferred, step.phase)]
        outcomes.append([np.moveaxis(v, 0, -1) if order[0] == "seed" else v for v in shaped])
    for a, b in zip(*outcomes):
        np.testing.assert_array_equal(a, b)
    ran, inferred, phase = outcomes[0]
    assert ran[4, 2].tolist() == [True, True, True, True]  # its extra seed ran
    assert ran[..., 3].sum() == 1  # and no other cell's
    np.testing.assert_array_equal(phase[..., 0][inferred[..., 0]], cell[inferred[..., 0]])


def _grid():
    """A real grid where refinement infers cells: 5 wd × 5 ξ at p 11, 400 steps
    (Memorization below wd 16, Confusion at 16)."""
    config = load_config("tiny")
    config.steps, config.log_every = 400, 100
    config.sweep = {"wd": (0.0, 2.0, 4.0, 8.0, 16.0), "xi": (0.0, 0.1, 0.2, 0.3, 0.4)}
    return config


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The full grid of :func:`_grid`, one lane per device."""
    return run_sweep(_grid(), out=str(tmp_path_factory.mktemp("full")), **QUIET)


def test_a_refined_tiny_grid_against_the_full_one(full, tmp_path, monkeypatch):
    """The lanes run equal the full grid's bit for bit, inferred cells have the full
    grid's phases (and parentheses in the table), and the same grid without
    --refine on the refined store runs only the lanes it lacks, to the full grid."""
    config = _grid()
    refined = run_sweep(config, out=str(tmp_path / "refined"), refine=Refinement(levels=1), **QUIET)
    ran, inferred = refined.ran.values, refined.inferred.values
    assert 0 < inferred.sum() and ran.sum() < ran.size and (ran ^ inferred).all()
    for name in ("train_loss", "test_acc", "weight_norm", "ipr"):
        np.testing.assert_array_equal(refined[name].values[ran], full[name].values[ran], err_msg=name)
    np.testing.assert_array_equal(refined.phase.values, full.phase.values)  # run or inferred
    assert np.isnan(refined.test_acc.values[inferred]).all()
    assert plotting.phase_table(refined).count("(") == inferred.sum() + 1  # + the legend's "(X)"
    longer = _grid()
    longer.steps = 800
    with pytest.raises(ConfigError, match="holds a refined grid .* fill it in"):
        run_sweep(longer, out=str(tmp_path / "refined"), **QUIET)

    written = []
    write = results.write
    monkeypatch.setattr(results, "write", lambda path, lanes, *a: (written.extend(lanes), write(path, lanes, *a)))
    filled = run_sweep(config, out=str(tmp_path / "refined"), **QUIET)
    assert sorted(written) == np.flatnonzero(~ran.ravel()).tolist()
    assert not results.open_store(results.store_path(tmp_path / "refined"))["inferred"].values.any()
    for name in ("train_loss", "test_acc", "phase"):
        np.testing.assert_array_equal(filled[name].values, full[name].values, err_msg=name)


def _trained_lanes(monkeypatch) -> list:
    """The lanes of every chunk the sweeps train from now on (done lanes of a chunk
    trained whole included), filled in as they run."""
    trained, run = [], Runner.run
    monkeypatch.setattr(Runner, "run", lambda self, chunks, done: (
        trained.extend(lane for c in chunks for lane in c.real), run(self, chunks, done))[1])
    return trained


class _Stop(Exception):
    """A sweep stopped from a test hook."""


def test_a_refined_sweep_stopped_early_is_filled_in_training_each_lane_once(full, tmp_path, monkeypatch):
    """A refined sweep stopped after its first round (no cell inferred yet), then
    filled in without --refine: only the lanes not run train, each once (the chunks
    of its plan are not trained whole), and the store ends as the full grid."""
    out, schedule, rounds = str(tmp_path / "r"), results.schedule, []

    def second_round_stops(*args):
        rounds.append(args)
        if len(rounds) == 2:
            raise _Stop
        schedule(*args)

    monkeypatch.setattr(results, "schedule", second_round_stops)
    with pytest.raises(_Stop):
        run_sweep(_grid(), out=out, refine=Refinement(levels=1), **QUIET)
    monkeypatch.setattr(results, "schedule", schedule)
    ran = results.committed(results.open_store(results.store_path(out)))
    assert 0 < ran.sum() < ran.size
    trained = _trained_lanes(monkeypatch)
    filled = run_sweep(_grid(), out=out, **QUIET)
    assert sorted(trained) == np.flatnonzero(~ran).tolist()
    for name in ("train_loss", "phase"):
        np.testing.assert_array_equal(filled[name].values, full[name].values, err_msg=name)


def test_a_refined_store_resumed_with_another_setting_says_so(tmp_path):
    """Resumed with the --refine flags it was refined with: nothing said; with
    others (here the default accuracy): one line naming both."""
    out, said = str(tmp_path / "r"), []
    run_sweep(_grid(), out=out, refine=Refinement(levels=1, accuracy=0.2), **QUIET)
    run_sweep(_grid(), out=out, refine=Refinement(levels=1, accuracy=0.2), **(QUIET | {"log": said.append}))
    assert not [line for line in said if "this store was refined with" in line]
    run_sweep(_grid(), out=out, refine=Refinement(levels=1), **(QUIET | {"log": said.append}))
    assert ("refining with --refine=1 --refine_seeds=0 --refine_accuracy=0.3; this store was refined with "
            "--refine=1 --refine_seeds=0 --refine_accuracy=0.2: the rounds from here follow the new setting") in said


def test_a_refined_store_grows_and_is_refined_again(tmp_path):
    """A refined store grown by a ξ value and refined again: its lanes run are kept
    bit for bit and not run again, and every cell, run or inferred, has the phase
    of a full run of the grown grid."""
    out = str(tmp_path / "r")
    first = run_sweep(_grid(), out=out, refine=Refinement(levels=1), **QUIET)
    grown = _grid()
    grown.sweep.xi = (*grown.sweep.xi, 0.5)
    refined = run_sweep(grown, out=out, refine=Refinement(levels=1), **QUIET)
    kept = refined.sel(xi=list(first.xi.values))
    ran = first.ran.values
    np.testing.assert_array_equal(kept.train_loss.values[ran], first.train_loss.values[ran])
    full = run_sweep(grown, out=str(tmp_path / "full"), **QUIET)
    np.testing.assert_array_equal(refined.phase.values, full.phase.values)
    assert refined.inferred.any() and (refined.ran ^ refined.inferred).all()


def test_rounds_compile_nothing_new_and_seeds_are_added_where_they_disagree(full, tmp_path, monkeypatch):
    """Two lanes per device (chunks of four lanes), so that a round's lanes are
    packed into chunks of the full grid's shape: every round after the first compiles nothing, and no lane
    trains twice (a chunk of the plan whose lanes ran in different rounds is not
    trained whole again). With seeds 0, 1 and one extra seed, the extra seed runs
    exactly where seeds 0 and 1 disagree."""
    config = _grid()
    config.sweep = {"seed": (0, 1), **config.sweep}
    monkeypatch.setattr(programs, "_PROGRAMS", {})  # count this run's compilations
    compiled, trained = [], _trained_lanes(monkeypatch)
    schedule = results.schedule
    monkeypatch.setattr(results, "schedule", lambda *a: (compiled.append(len(programs._PROGRAMS)), schedule(*a)))
    ds = run_sweep(config, out=str(tmp_path / "r"), refine=Refinement(levels=1, seeds=1), lanes_per_device=2,
                   progress=False, log=lambda s: None)
    assert len(compiled) >= 2 and compiled[1] == len(programs._PROGRAMS) == 1, compiled
    assert sorted(trained) == np.flatnonzero(ds.ran.transpose("seed", ...).values.ravel()).tolist()
    assert ds.seed.values.tolist() == [0, 1, 2]
    base, extra = ds.phase.sel(seed=[0, 1]), ds.ran.sel(seed=2)
    both = ds.ran.sel(seed=[0, 1]).all("seed")
    np.testing.assert_array_equal(extra.values, (both & (base.isel(seed=0) != base.isel(seed=1))).values)
    np.testing.assert_array_equal(ds.phase.sel(seed=0).values[ds.ran.sel(seed=0).values],
                                  full.phase.values[ds.ran.sel(seed=0).values])  # seed 0 as in the full grid


def test_a_chunk_cut_short_runs_whole_unless_its_grid_is_refined(tiny):
    """Outside a refined grid a chunk with pending lanes runs whole, so each lane
    keeps the neighbours the plan gives it on its device; in a refined grid only the
    pending lanes run, re-cut into chunks of the same shape."""
    plan = make_plan(tiny, Resources(lanes_per_device=2, n_devices=2))  # 8 lanes: chunks of 4
    pending = np.ones(plan.n_lanes, bool)
    pending[[0, 5]] = False  # a lane of each chunk done
    whole = plan.share(0, 1, pending)
    assert [c.real.tolist() for c in whole] == [c.real.tolist() for c in plan.chunks]
    recut = plan.share(0, 1, pending, recut=True)
    assert sorted(lane for c in recut for lane in c.real) == np.flatnonzero(pending).tolist()
    assert {(len(c.lanes), c.layout) for c in recut} == {(len(c.lanes), c.layout) for c in plan.chunks}


def _cli(args, *fault):
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=1"
    command = [FAULTS, *map(str, fault), "--"] if fault else ["-m", "grok_jax.sweep"]
    return subprocess.run([sys.executable, *command, *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, XLA_FLAGS=flags))


@pytest.mark.parametrize("fault", [("kill_after_commit", 12), ("kill_before_schedule", 2)],
                         ids=["inside_a_round", "between_rounds"])
def test_a_refined_sweep_killed_resumes_to_the_same_store(fault, tmp_path):
    """Killed after a commit inside round 2, or after round 1 before round 2 is
    stored: the same command resumes it to what an uninterrupted run stores."""
    args = ["--grid=tiny", "--config.steps=400", "--config.log_every=100", "--config.sweep.wd=(0,2,4,8,16)",
            "--config.sweep.xi=(0,0.1,0.2,0.3,0.4)", "--config.sweep.seed=(0,)", "--refine=1", "--lanes_per_device=1",
            "--noreport"]
    whole = _cli([*args, f"--out={tmp_path / 'whole'}"])
    killed = _cli([*args, f"--out={tmp_path / 'cut'}"], *fault)
    assert whole.returncode == 0 and killed.returncode == -9, whole.stderr + killed.stderr
    assert "refined:" not in killed.stdout
    again = _cli([*args, f"--out={tmp_path / 'cut'}"])
    assert again.returncode == 0, again.stderr
    a, b = (results.load_results(tmp_path / d, parameters=False) for d in ("whole", "cut"))
    for name in ("scheduled", "inferred", "phase", "done"):
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    np.testing.assert_array_equal(a.train_loss.values, b.train_loss.values)  # NaN where not run
