"""Which knob settings to capture, in which order, and how to tell a person to set them.

Knobs are the one knob spec (device/knobspec.py), in the pedal's own units or in clock positions:

    --knob drive=0..10                 a numbered knob, linear
    --knob time_ms=40..800,ms,log      a unit and a log taper
    --knob tone=clock                  a knob without numbers: 7 o'clock (fully left) to 5 o'clock
    --knob tone=9..3,clock             ... or only part of its travel: 9 o'clock to 3 o'clock

A clock knob is a ``KnobSpec`` with unit ``o'clock`` whose value is hours on a dial that keeps
counting past noon: 7 .. 12 .. 17 is 7 o'clock .. noon .. 5 o'clock (a pot's ~300 degrees). So
the dataset, the manifest and the box's pots see a plain linear knob, and only prompts print
"2:30".

The plan is a Latin hypercube (as Neural Amp Modeler's parametric planner): every knob's values
are spread evenly over its travel, each value used equally often, and among many such designs the
one whose closest two settings lie farthest apart (maximin) is kept. By default each knob takes
``levels = 5`` positions (0, 1/4, 1/2, 3/4, 1 of its travel: a person can set those by eye, and
published studies find about five values per knob enough); ``levels = 0`` gives a classic
hypercube with as many values per knob as settings. The settings are then ordered so that as few
knobs as possible move between passes (a shortest path over "knobs moved", then travel).
"""
from __future__ import annotations

import math
import tomllib
from pathlib import Path

import numpy as np

from ..knobspec import KnobSpec

CLOCK_UNIT = "o'clock"
CLOCK_MIN, CLOCK_MAX = 7.0, 17.0  # 7 o'clock .. 5 o'clock


# --- knobs ---------------------------------------------------------------------------------------
def parse_clock(text: str, where: str) -> float:
    """"9", "2:30", "12", "2.5" -> hours on the 7..17 dial (1..5 o'clock are 13..17)."""
    try:
        if ":" in text:
            h, m = text.split(":")
            hours = int(h) + int(m) / 60.0
        else:
            hours = float(text)
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not a clock position (like 9, 12 or 2:30)") from None
    if not 1 <= hours < 13:
        raise ValueError(f"{where}: clock position {text!r} must lie between 1 and 12:59")
    dial = hours + 12 if hours < CLOCK_MIN else hours
    if not CLOCK_MIN <= dial <= CLOCK_MAX:
        raise ValueError(f"{where}: clock position {text!r} lies in the pot's dead zone (5 to 7 o'clock)")
    return dial


def format_clock(dial: float) -> str:
    minutes = int(round(dial * 60))
    h, m = divmod(minutes, 60)
    return f"{(h - 1) % 12 + 1}:{m:02d}"


def parse_knob(arg: str) -> KnobSpec:
    """``NAME=MIN..MAX[,UNIT][,log]`` or ``NAME=clock`` / ``NAME=FROM..TO,clock`` -> KnobSpec."""
    where = f"--knob {arg!r}"
    if "=" not in arg:
        raise ValueError(f"{where}: expected NAME=MIN..MAX[,UNIT][,log] or NAME=clock")
    name, rest = (s.strip() for s in arg.split("=", 1))
    fields = [f.strip() for f in rest.split(",")]
    taper = "lin"
    if fields[-1] in ("log", "lin"):
        taper = fields.pop()
    if fields[0] == "clock":
        lo, hi, unit = CLOCK_MIN, CLOCK_MAX, CLOCK_UNIT
        fields = fields[1:]
    else:
        if ".." not in fields[0]:
            raise ValueError(f"{where}: range {fields[0]!r} must be MIN..MAX (e.g. 0..10) or 'clock'")
        a, b = fields[0].split("..", 1)
        unit = fields[1] if len(fields) > 1 else ""
        if unit == "clock":
            lo, hi, unit = parse_clock(a, where), parse_clock(b, where), CLOCK_UNIT
        else:
            try:
                lo, hi = float(a), float(b)
            except ValueError:
                raise ValueError(f"{where}: range {fields[0]!r} is not two numbers") from None
        fields = fields[2:]
    if fields:
        raise ValueError(f"{where}: unexpected {','.join(fields)!r}")
    if unit == CLOCK_UNIT and taper == "log":
        raise ValueError(f"{where}: a clock knob is linear in its travel; give no taper")
    if hi <= lo and unit == CLOCK_UNIT:
        how = "runs backwards" if hi < lo else "is no travel"
        raise ValueError(f"{where}: {format_clock(lo)} to {format_clock(hi)} o'clock {how}: give the "
                         "counter-clockwise end first (e.g. 9..3,clock)")
    if hi <= lo:
        raise ValueError(f"{where}: range {lo:g}..{hi:g} is empty (the first value must be the smaller)")
    mid = math.sqrt(lo * hi) if taper == "log" and lo > 0 else (lo + hi) / 2
    return KnobSpec(name=name, unit=unit, minimum=lo, maximum=hi, default=dial_value(
        KnobSpec(name, unit, lo, hi, lo, taper), mid), taper=taper)


def read_knobs_toml(path: Path) -> tuple[str | None, str | None, list[KnobSpec]]:
    """A knobs.toml as the dataset layout has it (``effect``, ``description``, ``[[knobs]]``) ->
    (effect, description, specs)."""
    path = Path(path)
    try:
        d = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"{path}: {e}") from None
    if not isinstance(d.get("knobs"), list) or not d["knobs"]:
        raise ValueError(f"{path}: needs [[knobs]] tables (name, unit, minimum, maximum, default[, taper])")
    return d.get("effect"), d.get("description"), [KnobSpec.from_dict(k, f"{path}: knobs[{i}]")
                                                    for i, k in enumerate(d["knobs"])]


def dial_step(spec: KnobSpec) -> float:
    """How finely a person sets this knob by eye: a quarter hour on a clock knob, else a round
    number near 1/40 of the range (0..10 -> 0.25, -50..0 -> 1)."""
    if spec.unit == CLOCK_UNIT:
        return 0.25
    raw = (spec.maximum - spec.minimum) / 40
    e = 10 ** math.floor(math.log10(raw))
    return min((m * e for m in (1, 2, 2.5, 5, 10)), key=lambda s: abs(math.log(s / raw)))


def dial_value(spec: KnobSpec, value: float) -> float:
    """``value`` as a person can set it: on the step for linear knobs, two significant digits for
    log ones; always inside the range."""
    if spec.taper == "log":
        v = float(f"{value:.2g}")
    else:
        s = dial_step(spec)
        v = round(round((value - spec.minimum) / s) * s + spec.minimum, 6)
    return min(max(v, spec.minimum), spec.maximum)


def format_value(spec: KnobSpec, value: float) -> str:
    if spec.unit == CLOCK_UNIT:
        return f"{format_clock(value)} o'clock"
    return f"{value:g} {spec.unit}".rstrip()


# --- the plan ------------------------------------------------------------------------------------
def hypercube(n: int, k: int, levels: int, rng: np.random.Generator, candidates: int = 300) -> np.ndarray:
    """(n, k) knob positions in 0..1: each column spreads evenly over the travel (``levels`` values
    used equally often, or n strata when ``levels`` is 0); the most spread-out of ``candidates``."""
    if levels:
        grid = np.linspace(0.0, 1.0, levels)
        column = grid[np.arange(n) * levels // n]  # each level n/levels times (the rest spread)
    else:
        column = None
    best, best_d = None, -1.0
    for _ in range(candidates):
        if levels:
            pts = np.stack([rng.permutation(column) for _ in range(k)], axis=1)
        else:
            pts = np.stack([(rng.permutation(n) + rng.uniform(0.2, 0.8, n)) / n for _ in range(k)], axis=1)
        d = min_distance(pts)
        if d > best_d:
            best, best_d = pts, d
    return best


def min_distance(pts: np.ndarray) -> float:
    if len(pts) < 2:
        return 0.0
    d = np.sqrt(((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1))
    return float(d[np.triu_indices(len(pts), 1)].min())


def random_plan(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform random positions (the benchmark's comparison)."""
    return rng.uniform(0.0, 1.0, (n, k))


def _move_cost(a: np.ndarray, b: np.ndarray) -> float:
    """Knobs moved (what a person minds), then travel as the tie-break."""
    return float(np.count_nonzero(np.abs(a - b) > 1e-9)) + 0.01 * float(np.abs(a - b).sum())


def order_for_few_moves(pts: np.ndarray) -> np.ndarray:
    """An order of the rows that moves few knobs between neighbours: nearest neighbour from the
    setting closest to every knob at its minimum, then 2-opt on the open path."""
    n = len(pts)
    if n < 3:
        return np.arange(n)
    cost = np.array([[_move_cost(pts[i], pts[j]) for j in range(n)] for i in range(n)])
    start = int(np.argmin(pts.sum(1)))
    order, left = [start], set(range(n)) - {start}
    while left:
        last = order[-1]
        nxt = min(left, key=lambda j: (cost[last, j], j))
        order.append(nxt)
        left.remove(nxt)
    improved = True
    while improved:
        improved = False
        for i in range(1, n - 1):
            for j in range(i + 1, n):
                # reverse order[i..j]: edges (i-1, i) and (j, j+1) become (i-1, j) and (i, j+1)
                before = cost[order[i - 1], order[i]] + (cost[order[j], order[j + 1]] if j + 1 < n else 0)
                after = cost[order[i - 1], order[j]] + (cost[order[i], order[j + 1]] if j + 1 < n else 0)
                if after < before - 1e-9:
                    order[i:j + 1] = order[i:j + 1][::-1]
                    improved = True
    return np.array(order)


def make_plan(specs: list[KnobSpec], n: int, levels: int = 5, seed: int = 0, kind: str = "lhs") -> list[list[float]]:
    """``n`` settings (physical, dialable values), ordered for few moves. ``kind``: "lhs" or "random"."""
    if n < 1:
        raise ValueError(f"plan: {n} settings; need at least 1")
    if levels == 1 or levels < 0:
        raise ValueError(f"plan: levels = {levels}; use 0 (a value per setting) or 2 and more")
    rng = np.random.default_rng(seed)
    pts = hypercube(n, len(specs), levels, rng) if kind == "lhs" else random_plan(n, len(specs), rng)
    values = np.array([[dial_value(s, s.from_normalized(p)) for s, p in zip(specs, row)] for row in pts])
    positions = np.array([[s.to_normalized(v) for s, v in zip(specs, row)] for row in values])
    return [list(map(float, values[i])) for i in order_for_few_moves(positions)]


def moves(plan: list[list[float]]) -> list[int]:
    """Knobs that change between consecutive settings."""
    return [sum(1 for a, b in zip(p, q) if a != b) for p, q in zip(plan, plan[1:])]


def extend_plan(specs: list[KnobSpec], plan: list[list[float]], settings, where: str) -> list[list[float]]:
    """Settings to add to ``plan`` (physical values in the knobs' order, e.g. proposed by
    ``python -m training.propose`` where models disagree most) -> the new ones, as a person can set
    them, without those the plan has, ordered for few knob moves on from the plan's last setting."""
    new: list[list[float]] = []
    have = {tuple(row) for row in plan}
    for j, row in enumerate(settings):
        if not isinstance(row, (list, tuple)) or len(row) != len(specs):
            raise ValueError(f"{where}: setting {j + 1} is {row!r}; expected {len(specs)} values "
                             f"({', '.join(k.name for k in specs)})")
        for k, v in zip(specs, row):
            if not isinstance(v, (int, float)) or not k.minimum <= v <= k.maximum:
                raise ValueError(f"{where}: setting {j + 1}: {k.name} = {v!r} lies outside "
                                 f"{k.minimum:g}..{k.maximum:g}")
        dialled = [float(dial_value(k, float(v))) for k, v in zip(specs, row)]
        if tuple(dialled) not in have:
            have.add(tuple(dialled))
            new.append(dialled)
    if len(new) < 2:
        return new
    pts = np.array([[k.to_normalized(v) for k, v in zip(specs, row)] for row in ([plan[-1]] if plan else []) + new])
    if plan:  # start where the person left off: the order's first point is the plan's last setting
        order = _order_from(pts, 0)
        return [new[i - 1] for i in order[1:]]
    return [new[i] for i in order_for_few_moves(pts)]


def _order_from(pts: np.ndarray, start: int) -> list[int]:
    """Nearest neighbour over "knobs moved" from ``start``."""
    order, left = [start], set(range(len(pts))) - {start}
    while left:
        last = order[-1]
        nxt = min(left, key=lambda j: (_move_cost(pts[last], pts[j]), j))
        order.append(nxt)
        left.remove(nxt)
    return order
