"""Studies of several runs: ``compare`` objectives over seeds, ``sweep`` a grid of settings.

Both call :func:`kdistill.pipeline.run` once per point, then write a results table
(CSV, markdown, JSON) and a plot into their directory (:mod:`kdistill.study_report`).

Waste is avoided by sharing what a point cannot change: runs whose settings differ only in
``distill.*`` keys (the same *recipe*: teacher, student, data, seed) train the teacher and the
from-scratch control once; the other runs of that recipe load that teacher's weights
(``teacher.weights``), skip the control (``control=false``) and are paired with the shared one.
A point whose run directory already holds a complete run is read back, not trained again.
"""
from __future__ import annotations

import itertools
import re
import time
from pathlib import Path
from typing import Callable, Sequence

from . import distributed
from .config import RunConfig, parse_value
from .errors import KdistillError
from .report import pct
from .study_report import summarise, write_compare, write_sweep

# Public here too, as before the statistics, tables and figures moved out:
from .stats import paired_test  # noqa: F401
from .study_report import compare_figure, compare_markdown, sweep_figure, sweep_markdown, swept_keys  # noqa: F401

Config = RunConfig | str | Path | dict | None
Progress = Callable[[str], None] | None


# ---------------------------------------------------------------- parsing

def parse_pairs(text: str) -> list[tuple[str, str]]:
    """``"distill.loss=hinton distill.alpha=0.9"`` → ``[("distill.loss", "hinton"), ...]``."""
    pairs = []
    for item in text.split():
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise KdistillError(f"{text!r} is not a list of key=value settings",
                                'write e.g. "distill.loss=hinton distill.temperature=4"')
        pairs.append((key, value))
    if not pairs:
        raise KdistillError("an objective is empty", 'write e.g. "distill.loss=kl"')
    return pairs


def parse_sweep(args: Sequence[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Split ``KEY=V1,V2`` (swept) from single-valued ``key=value`` (plain overrides).

    A value written as a YAML list or mapping (``[1,64]``, ``{...}``) is one value, not a sweep.
    """
    swept: dict[str, list[str]] = {}
    plain: list[str] = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or not key or not value.strip():
            raise KdistillError(f"sweep argument {arg!r} has no values",
                                "write KEY=V1,V2,... e.g. distill.temperature=1,4,16")
        if "," in value and not value.lstrip().startswith(("[", "{")):
            values = [v.strip() for v in value.split(",")]
            if not all(values):
                raise KdistillError(f"sweep argument {arg!r} has an empty value",
                                    "separate values by single commas")
            if key in swept:
                raise KdistillError(f"{key} is swept twice", "give each key once")
            swept[key] = values
        else:
            plain.append(arg)
    if not swept:
        raise KdistillError("nothing to sweep", "give at least one KEY=V1,V2,... with two or more values")
    return swept, plain


def slug(pairs: Sequence[tuple[str, str]]) -> str:
    """A directory name for settings: ``loss-hinton_temperature-4`` (``distill.`` dropped)."""
    parts = [f"{k.removeprefix('distill.')}-{v}" for k, v in pairs]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join(parts)).strip("-") or "run"


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out


def _recipe(pairs: Sequence[tuple[str, str]]) -> tuple:
    """What decides the teacher and the control: every setting outside ``distill.*``."""
    return tuple(sorted((k, v) for k, v in pairs if not k.startswith("distill.")))


# ---------------------------------------------------------------- running

def _run_point(config: Config, out_dir: Path, overrides: list[str], verbose: bool,
               trust_code: bool = False) -> dict:
    """One run's metrics: read back (through the run schema) when ``out_dir`` holds a complete
    run, resumed from its checkpoints when it holds a stopped one, else trained. Under torchrun
    rank 0 looks and every rank follows, so all of them train the same run."""
    from .pipeline import run
    from .runfiles import read_metrics

    def earlier() -> dict | None:
        return read_metrics(out_dir) if (out_dir / "metrics.json").exists() else None

    metrics = distributed.on_main(earlier)
    if metrics is not None:
        if metrics.get("status") == "complete":
            return metrics
        return run(resume=out_dir, quiet=not verbose, trust_code=trust_code).metrics
    return run(config, out_dir, overrides=overrides, quiet=not verbose).metrics


def _accuracy(metrics: dict, role: str) -> float | None:
    return metrics.get("models", {}).get(role, {}).get("test_accuracy")


def _run_group(config: Config, base: list[str], points: list[tuple[list[tuple[str, str]], Path]],
               control: bool, verbose: bool, say: Progress, label: str,
               trust_code: bool = False) -> list[dict]:
    """Run points in order; the first of each recipe trains the teacher (and the control);
    the rest are paired with that control, and find that teacher in the teacher cache (the same
    recipe gives the same cache key), the one way kdistill reuses a trained model."""
    shared: dict[tuple, dict] = {}
    results = []
    for i, (pairs, out_dir) in enumerate(points, 1):
        overrides = [*base, *(f"{k}={v}" for k, v in pairs)]
        first = shared.get(_recipe(pairs))
        overrides.append(f"control={'true' if control and first is None else 'false'}")
        t = time.perf_counter()
        metrics = _run_point(config, out_dir, overrides, verbose, trust_code)
        if first is None:
            first = shared[_recipe(pairs)] = {"control": _accuracy(metrics, "control"),
                                              "control_run": str(out_dir)}
        row = {"run_dir": str(out_dir), "teacher": _accuracy(metrics, "teacher"),
               "student": _accuracy(metrics, "student"), "control": first["control"],
               "control_run": first["control_run"] if first["control"] is not None else None,
               "trained_control": _accuracy(metrics, "control") is not None}
        row["gain"] = (None if row["control"] is None or row["student"] is None
                       else row["student"] - row["control"])
        results.append(row)
        if say:
            say(f"{label} [{i}/{len(points)}] {out_dir}: student {pct(row['student'])}, "
                f"control {pct(row['control'])} ({time.perf_counter() - t:.1f}s)")
    return results


def _check_config(config: Config, overrides: list[str]) -> RunConfig:
    """Validate a point's config before anything is trained (typos fail at once)."""
    from .pipeline import resolve_config

    return resolve_config(config, overrides)[0]


def _default_out(kind: str) -> Path:
    return Path("runs") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


# ---------------------------------------------------------------- compare

def compare(objectives: Sequence[str], config: Config = None, out: str | Path | None = None, *,
            seeds: int = 3, overrides: Sequence[str] = (), verbose: bool = False,
            progress: Progress = None, trust_code: bool = False,
            command: str | None = None) -> list[dict]:
    """Train each objective (a string of ``key=value`` settings) with ``seeds`` seeds
    (``seed`` = the config's seed + i) and pair every student with its seed's control.

    Returns one row per objective: mean and sample std over seeds of the teacher's, student's
    and control's test accuracy (fractions), the mean paired gain over the control with its
    paired t statistic and two-sided p-value. Writes ``compare.{csv,md,json,png}`` into ``out``
    and each run into ``out/<objective-slug>/seed<k>/``; ``command`` (the command line that
    ran it) heads the table.
    """
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise KdistillError(f"--seeds must be a whole number ≥ 1, got {seeds!r}", "e.g. --seeds 3")
    if not objectives:
        raise KdistillError("no objectives to compare", 'give e.g. --objectives "distill.loss=kl"')
    parsed = [parse_pairs(o) for o in objectives]
    if any(k == "seed" for pairs in parsed for k, _ in pairs):
        raise KdistillError("an objective sets seed", "compare sets the seeds; use --seeds")
    base = list(overrides)
    base_seed = _check_config(config, base).seed
    for pairs in parsed:
        _check_config(config, [*base, *(f"{k}={v}" for k, v in pairs)])
    out_dir = Path(out) if out else distributed.on_main(lambda: _default_out("compare"))  # one for all ranks
    slugs = _unique([slug(p) for p in parsed])
    per_objective: list[list[dict]] = [[] for _ in parsed]
    for i in range(seeds):
        seed = base_seed + i
        points = [(pairs, out_dir / s / f"seed{seed}") for pairs, s in zip(parsed, slugs)]
        rows = _run_group(config, [*base, f"seed={seed}"], points, True, verbose, progress,
                          f"compare seed {seed}", trust_code)
        for j, row in enumerate(rows):
            per_objective[j].append({"seed": seed, **row})
    summary = [summarise(text, s, runs) for text, s, runs in zip(objectives, slugs, per_objective)]
    if distributed.is_main():
        write_compare(out_dir, summary, per_objective, base_seed, seeds, command)
    return summary


# ---------------------------------------------------------------- sweep

def sweep(swept: dict[str, Sequence] | Sequence[str], config: Config = None,
          out: str | Path | None = None, *, overrides: Sequence[str] = (), verbose: bool = False,
          progress: Progress = None, trust_code: bool = False,
          command: str | None = None) -> list[dict]:
    """Run every combination of the swept values, one run each into ``out/<slug>/``.

    ``swept`` is ``{"distill.temperature": [1, 4], ...}`` or CLI-style strings
    (``["distill.temperature=1,4", "student.epochs=3"]``; single values become overrides).
    Returns one row per point: the swept values, teacher/student/control test accuracy
    (fractions) and the gain; writes ``sweep.{csv,md,json,png}`` into ``out``, headed by
    ``command``.
    """
    base = list(overrides)
    if isinstance(swept, dict):
        grid = {str(k): [str(v) for v in vs] for k, vs in swept.items()}
        if not grid or not all(grid.values()):
            raise KdistillError("nothing to sweep", "give each swept key at least one value")
    else:
        grid, plain = parse_sweep(swept)
        base += plain
    control = _check_config(config, base).control
    keys = list(grid)
    combos = [list(zip(keys, values)) for values in itertools.product(*grid.values())]
    for pairs in combos:
        _check_config(config, [*base, *(f"{k}={v}" for k, v in pairs)])
    out_dir = Path(out) if out else distributed.on_main(lambda: _default_out("sweep"))  # one for all ranks
    slugs = _unique([slug(p) for p in combos])
    results = _run_group(config, base, [(p, out_dir / s) for p, s in zip(combos, slugs)],
                         control, verbose, progress, "sweep", trust_code)
    rows = [{**{k: parse_value(v) for k, v in pairs}, "slug": s, **r}
            for pairs, s, r in zip(combos, slugs, results)]
    if distributed.is_main():
        write_sweep(out_dir, rows, keys, command)
    return rows
