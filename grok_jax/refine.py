"""Adaptive refinement: a phase diagram from a fraction of its cells (``--refine``).

A *cell* is a point of the grid without its seed axis; running it runs its seeds.
The *refined axes* are the swept traced axes other than the seed with at least
three values (ξ, wd, α, dropout, lr: the heatmap and panel axes whose values do not
change shapes); every combination of the other axes (static axes, seeds aside) is
refined on its own.

The first round runs the coarse lattice: every ``2**levels``-th value of each
refined axis, both ends always kept. Its boxes (the hyper-rectangles between
neighbouring lattice values) are then refined, one halving per round:

- Two corners of a box that are neighbours along an axis *differ* when their
  majority phases differ, when either one's seeds disagree or it is Diverged, or
  when its final train, test or corrupted accuracy (mean over its seeds) changes by
  more than ``accuracy`` between them.
- A box is *uniform* when no two neighbouring corners differ and every cell run
  inside it (or on its faces: run for a neighbouring box) has the corners' phase,
  agreeing seeds and accuracies within ``accuracy`` of the corners' range.
- A box that is not uniform is halved along every axis along which corners differ
  (along all its axes when only a cell inside it disagrees), and the corners of
  the halves that were not run are the next round's cells, except the midpoint of
  an edge whose two ends agree: it is *guessed* (their phase and mean accuracies)
  and runs only if a half it is a corner of is not uniform with the guess. Halving
  stops at spacing 1: a box whose corners differ along an axis where they are
  neighbours already is taken face by face (each face a box of one dimension less).
- A cell never run inside a uniform box is *inferred*: it takes the box's phase.

Where the method can miss: a region of another phase that lies strictly inside a
coarse box and changes none of the corners' accuracies by more than ``accuracy`` (an
island narrower than the coarse spacing, whose effect fades before the nearest
lattice cells) is inferred away; so is one that touches a guessed edge's midpoint
only, between two ends that agree, in a half whose run corners agree too. A larger
``accuracy`` misses more; ``levels`` bounds the size of what can hide (at most
``2**levels − 1`` cells along an axis).

Every decision is a function of the runs stored: a resumed sweep makes the same
rounds. The first round is the walk over a grid with no cell run: the lattice's
corners. Each round's lanes are marked ``scheduled`` in the store before they run.

Example:
  >>> cells = Cells(np.zeros(9, bool), np.full(9, -1), np.ones(9, bool), np.zeros((9, 3)))
  >>> refine(cells, (0,), Refinement(levels=2)).missing.nonzero()[0].tolist()  # the first round
  [0, 4, 8]
"""

from __future__ import annotations

import functools
import itertools
import warnings
from typing import NamedTuple

import numpy as np

from grok_jax import phases
from grok_jax.config import TRACED_AXES
from grok_jax.errors import ConfigError

ACCURACIES = ("train_acc", "test_acc", "corrupt_acc")  # what the accuracy criterion compares


class Refinement(NamedTuple):
    """How a sweep refines (``--refine``, ``--refine_seeds``, ``--refine_accuracy``)."""

    levels: int = 0  # coarse spacing 2**levels on each refined axis; 0: every cell runs
    seeds: int = 0  # the last `seeds` values of the seed axis run only where the others disagree
    accuracy: float = 0.3  # refine where an accuracy changes by more than this between neighbours

    @property
    def active(self) -> bool:
        """Whether the sweep runs round by round (else every lane, at once)."""
        return bool(self.levels or self.seeds)


class Cells(NamedTuple):
    """What refinement reads of the results, one entry per cell (the grid's shape
    without the seed axis)."""

    ran: np.ndarray  # bool: every seed scheduled for it is done
    phase: np.ndarray  # majority phase over its seeds run (-1: none)
    certain: np.ndarray  # bool: its seeds run agree and it is not Diverged
    accuracy: np.ndarray  # (*shape, len(ACCURACIES)): final accuracies, mean over its seeds run


def refined_axes(axes: dict[str, tuple]) -> tuple[str, ...]:
    """The swept axes that refinement halves (see the module doc)."""
    return tuple(a for a in axes if a in TRACED_AXES and a != "seed" and len(axes[a]) >= 3)


class Outcome(NamedTuple):
    """One pass over the boxes: the cells to run next, and the inferred ones."""

    missing: np.ndarray  # bool per cell: a corner of a halved box, not run
    inferred: np.ndarray  # bool per cell: not run, inside a uniform box
    phase: np.ndarray  # the inferred cells' phase (-1 elsewhere)


def refine(cells: Cells, refined: tuple[int, ...], rule: Refinement) -> Outcome:
    """Walks the boxes of the coarse lattice of ``rule.levels`` over ``cells``,
    halving the ones that are not uniform where their corners were run (see the
    module doc). ``refined``: the dims of the cells' shape that are refined."""
    shape = cells.ran.shape
    out = Outcome(np.zeros(shape, bool), np.zeros(shape, bool), np.full(shape, -1, np.int8))
    other = [d for d in range(len(shape)) if d not in refined]
    for fixed in itertools.product(*(range(shape[d]) for d in other)):
        index = dict(zip(other, fixed))
        start = []
        for d in refined:
            step = 2**rule.levels
            start.append([(lo, step) for lo in range(0, max(shape[d] - 1, 1), step)])
        for box in itertools.product(*start):
            _walk(cells, out, rule, index, refined, box)
    return out


def _walk(cells: Cells, out: Outcome, rule: Refinement, index: dict, refined: tuple[int, ...],
          box: tuple[tuple[int, int], ...], guessed: dict | None = None) -> None:
    """One box ``((lo, size), ...)`` along the refined dims (``index``: the other
    dims' fixed values): its missing corners, its inferred cells, or its halves.
    ``guessed``: corners not run that take the phase and mean accuracies of the
    two ends of the parent's edge they halve (those ends agree)."""
    guessed = guessed or {}
    ndim = cells.ran.ndim
    spans = [(lo, min(lo + size, cells.ran.shape[d] - 1)) for (lo, size), d in zip(box, refined)]
    at = functools.partial(_cell, index, refined, ndim)
    corners = [at(p) for p in itertools.product(*({lo, hi} for lo, hi in spans))]
    absent = [c for c in corners if not cells.ran[c] and c not in guessed]
    for c in absent:
        out.missing[c] = True
    if absent:
        return
    view = _with_guesses(cells, {c: guessed[c] for c in corners if c in guessed})
    differ = [k for k, (lo, hi) in enumerate(spans) if hi > lo and _differs_along(view, rule, at, spans, k)]
    region = tuple(index[d] if d in index else slice(spans[refined.index(d)][0], spans[refined.index(d)][1] + 1)
                   for d in range(ndim))
    if not differ and _inside_agrees(view, rule, corners, region):
        unrun = ~cells.ran[region]
        out.inferred[region] |= unrun
        out.phase[region] = np.where(unrun, view.phase[corners[0]], out.phase[region])
        return
    if view is not cells:  # a guess in a box that is not uniform: run it before halving the box
        for c in corners:
            out.missing[c] |= c in guessed
        return
    splittable = [k for k, (lo, hi) in enumerate(spans) if hi - lo > 1]
    halve = [k for k in differ if k in splittable] if differ else splittable
    faces = [k for k in differ if k not in splittable]  # neighbours already: each face a box of its own
    parts = []
    for k, (lo, hi) in enumerate(spans):
        if k in halve:
            parts.append(_halves(box[k], hi))
        elif k in faces:
            parts.append([(lo, 0), (hi, 0)])
        else:
            parts.append([box[k]])
    guesses = _guesses(cells, rule, at, spans, {k: parts[k][1][0] for k in halve})
    if halve or faces:  # else every cell of the box is a corner, run
        for child in itertools.product(*parts):
            _walk(cells, out, rule, index, refined, child, guesses)


def _with_guesses(cells: Cells, guesses: dict) -> Cells:
    """``cells`` with the guessed cells' phase and accuracies filled in."""
    if not guesses:
        return cells
    phase, certain, accuracy = cells.phase.copy(), cells.certain.copy(), cells.accuracy.copy()
    for c, (p, acc) in guesses.items():
        phase[c], certain[c], accuracy[c] = p, True, acc
    return Cells(cells.ran, phase, certain, accuracy)


def _guesses(cells: Cells, rule: Refinement, at, spans: list, middles: dict[int, int]) -> dict:
    """The midpoints (``middles``: axis -> index) of the box's edges along the
    halved axes whose two ends agree, each with the ends' phase and mean accuracies."""
    out = {}
    for k, middle in middles.items():
        for a, b, point in _edges(at, spans, k):
            m = at(point[:k] + (middle,) + point[k + 1:])
            if not cells.ran[m] and not _differ(cells, rule, a, b):
                out[m] = (cells.phase[a], (cells.accuracy[a] + cells.accuracy[b]) / 2)
    return out


def _edges(at, spans: list, k: int):
    """The box's edges along refined axis ``k``: their low and high end cells and
    the low end's point."""
    for point in itertools.product(*({lo, hi} for lo, hi in spans)):
        if point[k] == spans[k][0]:
            yield at(point), at(point[:k] + (spans[k][1],) + point[k + 1:]), point


def _cell(index: dict, refined: tuple[int, ...], ndim: int, point: tuple[int, ...]) -> tuple[int, ...]:
    """The cell at ``point`` (indices along the refined dims) of the slice ``index``."""
    return tuple(index[d] if d in index else point[refined.index(d)] for d in range(ndim))


def _halves(interval: tuple[int, int], hi: int) -> list[tuple[int, int]]:
    """The halves of a lattice interval ``(lo, size)`` ending at ``hi`` (the last
    interval of an axis can be shorter than its size)."""
    lo, size = interval
    while lo + size // 2 >= hi:  # the short last interval: a finer lattice's interval already
        size //= 2
    return [(lo, size // 2), (lo + size // 2, size // 2)]


def _differs_along(cells: Cells, rule: Refinement, at, spans: list, k: int) -> bool:
    """Whether two corners that are neighbours along refined axis ``k`` differ."""
    return any(_differ(cells, rule, a, b) for a, b, _ in _edges(at, spans, k))


def _differ(cells: Cells, rule: Refinement, a: tuple, b: tuple) -> bool:
    if cells.phase[a] != cells.phase[b] or not (cells.certain[a] and cells.certain[b]):
        return True
    with np.errstate(invalid="ignore"):
        return bool(np.any(np.abs(cells.accuracy[a] - cells.accuracy[b]) > rule.accuracy))


def _inside_agrees(cells: Cells, rule: Refinement, corners: list, region: tuple) -> bool:
    """Whether every cell run in the closed box has the corners' phase, agreeing
    seeds and accuracies within ``rule.accuracy`` of the corners' range."""
    ran = cells.ran[region]
    phase, certain, acc = cells.phase[region][ran], cells.certain[region][ran], cells.accuracy[region][ran]
    corner_acc = np.stack([cells.accuracy[c] for c in corners])
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # no corrupted examples (ξ 0): NaN
        low = np.nanmin(corner_acc, axis=0) - rule.accuracy
        high = np.nanmax(corner_acc, axis=0) + rule.accuracy
        outside = (acc < low) | (acc > high)  # NaN (no corrupted examples) compares False
    return bool(np.all(phase == cells.phase[corners[0]]) and certain.all() and not outside.any())


def extra_seeds(phase: np.ndarray, done: np.ndarray, scheduled: np.ndarray, n_extra: int) -> np.ndarray:
    """The extra seed lanes to run next (arrays ``(cells..., seeds)``, the last
    ``n_extra`` seeds the extra ones): the next extra seed of every cell whose seeds
    run disagree and whose majority is not yet clear (the most common phase ahead
    of the next by fewer than two seeds), while its extra seeds last."""
    if not n_extra:
        return np.zeros_like(done)
    counts = phases.phase_counts(np.where(done, phase, -1), axis=-1)
    top2 = np.sort(counts, axis=-1)[..., -2:]
    unclear = (top2[..., 0] > 0) & (top2[..., 1] - top2[..., 0] < 2)
    waiting = (scheduled & ~done).any(axis=-1)  # a seed of the cell is still to run
    extra = np.zeros_like(done)
    extra[..., -n_extra:] = ~scheduled[..., -n_extra:]
    first = np.argmax(extra, axis=-1)  # the next unscheduled extra seed
    want = unclear & ~waiting & extra.any(axis=-1)
    out = np.zeros_like(done)
    np.put_along_axis(out, first[..., None], want[..., None], axis=-1)
    return out


class Round(NamedTuple):
    """The lanes to run next and the lanes inferred so far (flat, grid order)."""

    run: np.ndarray  # bool per lane
    inferred: np.ndarray  # bool per lane: a seed of an inferred cell (the base seeds)
    phase: np.ndarray  # the inferred lanes' phase (-1 elsewhere)


def next_round(axes: dict[str, tuple], lanes: dict[str, np.ndarray], rule: Refinement) -> Round:
    """The next round of a refined sweep from its stored lanes (``lanes``: flat
    arrays ``phase``, ``done``, ``scheduled`` and the final :data:`ACCURACIES`, in
    the grid's C order): the corners of the boxes to halve and the extra seeds to
    add. Nothing to run: the refinement is complete and ``inferred`` says which
    cells took the phase of their box."""
    shape = tuple(len(v) for v in axes.values())
    seed = list(axes).index("seed") if "seed" in axes else None
    grid = {k: np.moveaxis(v.reshape(shape + v.shape[1:]), seed, len(shape) - 1) if seed is not None
            else v.reshape(shape + (1,) + v.shape[1:]) for k, v in lanes.items()}
    base = grid["done"].shape[-1] - rule.seeds
    done = grid["done"]
    top, fraction = phases.majority(np.where(done, grid["phase"], -1), axis=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a cell with no seed run: NaN
        accuracy = np.stack([np.nanmean(np.where(done, grid[k], np.nan), axis=-1) for k in ACCURACIES], axis=-1)
    ran = done[..., :base].all(axis=-1)
    cells = Cells(ran, top, (fraction == 1) & (top != phases.DIVERGED), accuracy)
    refined = tuple(i for i, a in enumerate(a for a in axes if a != "seed") if a in refined_axes(axes))
    outcome = refine(cells, refined, rule)
    run = np.zeros_like(done)
    partly = done[..., :base].any(axis=-1) & ~ran  # e.g. a grown seed axis: completed, not inferred
    run[..., :base] = (outcome.missing | partly)[..., None] & ~done[..., :base]
    run |= extra_seeds(grid["phase"], done, grid["scheduled"], rule.seeds) & cells.ran[..., None]
    complete = not run.any()
    inferred = np.zeros_like(done)
    inferred[..., :base] = (outcome.inferred & complete)[..., None]
    phase = np.where(inferred, outcome.phase[..., None], -1).astype(np.int8)
    flat = lambda v: (np.moveaxis(v, -1, seed) if seed is not None else v[..., 0]).reshape(-1)  # noqa: E731
    return Round(flat(run), flat(inferred), flat(phase))


def check(rule: Refinement, config, processes: int, out: str | None) -> None:
    """``ConfigError`` for a refinement no sweep of the checked ``config`` can make."""
    for name, value, low in (("refine", rule.levels, 0), ("refine_seeds", rule.seeds, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= 16:
            raise ConfigError(f"--{name}={value!r} must be an integer from {low} to 16")
    if not (isinstance(rule.accuracy, (int, float)) and 0 < rule.accuracy <= 1):
        raise ConfigError(f"--refine_accuracy={rule.accuracy!r} must be a change of accuracy in (0, 1]")
    if not rule.active:
        return
    if out is None:
        raise ConfigError("refinement runs round by round on a results store: give an output directory")
    if processes > 1:
        raise ConfigError("--refine and --refine_seeds run in one process (its devices sharded as usual); "
                          "run without them on several hosts, or on one")
    axes = {name: tuple(config.sweep[name]) for name in config.sweep}
    if rule.levels and not refined_axes(axes):
        raise ConfigError(f"--refine={rule.levels}: no swept axis to refine (a traced axis other than seed with "
                          f"3 or more values; swept: {', '.join(f'{k}[{len(v)}]' for k, v in axes.items()) or 'none'})")
    if rule.seeds and len(axes.get("seed", ())) < 2:
        raise ConfigError(f"--refine_seeds={rule.seeds} adds seeds where a cell's seeds disagree: sweep at least "
                          "2 seeds (--config.sweep.seed=\"(0,1)\")")


def with_extra_seeds(config, rule: Refinement):
    """``config`` with ``rule.seeds`` more values on its seed axis (the next
    integers after its largest): the seeds a refined sweep adds where needed."""
    if not rule.seeds:
        return config
    config = config.copy_and_resolve_references()
    seeds = tuple(config.sweep.seed)
    config.sweep.seed = seeds + tuple(range(max(seeds) + 1, max(seeds) + 1 + rule.seeds))
    return config


def base_lanes(axes: dict[str, tuple], rule: Refinement) -> np.ndarray:
    """The lanes of the grid's own seeds (all but the extra seeds of ``rule``), flat."""
    shape = tuple(len(v) for v in axes.values())
    if not (rule.seeds and "seed" in axes):
        return np.ones(int(np.prod(shape)), bool)
    seed = np.indices(shape)[list(axes).index("seed")].reshape(-1)
    return seed < len(axes["seed"]) - rule.seeds
