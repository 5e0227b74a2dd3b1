"""Studies of several runs: ``compare`` objectives over seeds, ``sweep`` a grid of settings.

Both call :func:`kdistill.pipeline.run` once per point, then write a results table
(CSV, markdown, JSON) and a plot into their directory, every file atomically.

Waste is avoided by sharing what a point cannot change: runs whose settings differ only in
``distill.*`` keys (the same *recipe*: teacher, student, data, seed) train the teacher and the
from-scratch control once; the other runs of that recipe load that teacher's weights
(``teacher.weights``), skip the control (``control=false``) and are paired with the shared one.
A point whose run directory already holds a complete run is read back, not trained again.
"""
from __future__ import annotations

import csv
import io
import itertools
import json
import math
import re
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .config import RunConfig, parse_value
from .errors import KdistillError
from .files import atomic_write_bytes, atomic_write_json, atomic_write_text
from .report import num, pct

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

    metrics = _on_main(earlier)
    if metrics is not None:
        if metrics.get("status") == "complete":
            return metrics
        return run(resume=out_dir, quiet=not verbose, trust_code=trust_code).metrics
    return run(config, out_dir, overrides=overrides, quiet=not verbose).metrics


def _on_main(fn: Callable[[], object]) -> object:
    """``fn()`` on rank 0, its result (or its user error) on every rank (torchrun); just
    ``fn()`` in a single process."""
    from . import distributed

    outcome: object = None
    if distributed.is_main():
        try:
            outcome = fn()
        except KdistillError as exc:
            outcome = exc
    outcome = distributed.broadcast(outcome)
    if isinstance(outcome, KdistillError):
        raise outcome
    return outcome


def _is_main() -> bool:
    """Whether this process writes the study's files (always, unless under torchrun)."""
    from . import distributed

    return distributed.is_main()


def _accuracy(metrics: dict, role: str) -> float | None:
    return metrics.get("models", {}).get(role, {}).get("test_accuracy")


def _run_group(config: Config, base: list[str], points: list[tuple[list[tuple[str, str]], Path]],
               control: bool, verbose: bool, say: Progress, label: str,
               trust_code: bool = False) -> list[dict]:
    """Run points in order; the first of each recipe trains the teacher (and the control);
    the rest reuse that teacher's weights and are paired with that control."""
    shared: dict[tuple, dict] = {}
    results = []
    for i, (pairs, out_dir) in enumerate(points, 1):
        overrides = [*base, *(f"{k}={v}" for k, v in pairs)]
        first = shared.get(_recipe(pairs))
        if first is None:
            overrides.append(f"control={'true' if control else 'false'}")
        else:
            overrides += ["control=false", f"teacher.weights={first['teacher_weights']}"]
        t = time.perf_counter()
        metrics = _run_point(config, out_dir, overrides, verbose, trust_code)
        if first is None:  # the teacher's copy in the run, never a path read from metrics.json
            first = shared[_recipe(pairs)] = {
                "teacher_weights": str((out_dir / "teacher.safetensors").resolve()),
                "control": _accuracy(metrics, "control"), "control_run": str(out_dir)}
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


# ---------------------------------------------------------------- statistics

def _mean(xs: list[float]) -> float | None:
    return float(np.mean(xs)) if xs else None


def _std(xs: list[float]) -> float | None:
    """Sample standard deviation (n − 1); None for fewer than two values."""
    return float(np.std(xs, ddof=1)) if len(xs) > 1 else None


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def paired_test(a: list[float], b: list[float]) -> tuple[float | None, float | None]:
    """Paired t statistic and two-sided p-value of ``a − b``; None where undefined."""
    if len(a) < 2:
        return None, None
    diffs = np.asarray(a) - np.asarray(b)
    if np.allclose(diffs, diffs[0]):  # zero spread: t is ±inf or undefined
        return None, (1.0 if np.allclose(diffs, 0) else None)
    from scipy.stats import ttest_rel

    result = ttest_rel(a, b)
    return _finite(result.statistic), _finite(result.pvalue)


# ---------------------------------------------------------------- compare

def compare(objectives: Sequence[str], config: Config = None, out: str | Path | None = None, *,
            seeds: int = 3, overrides: Sequence[str] = (), verbose: bool = False,
            progress: Progress = None, trust_code: bool = False) -> list[dict]:
    """Train each objective (a string of ``key=value`` settings) with ``seeds`` seeds
    (``seed`` = the config's seed + i) and pair every student with its seed's control.

    Returns one row per objective: mean and sample std over seeds of the teacher's, student's
    and control's test accuracy (fractions), the mean paired gain over the control with its
    paired t statistic and two-sided p-value. Writes ``compare.{csv,md,json,png}`` into ``out``
    and each run into ``out/<objective-slug>/seed<k>/``.
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
    out_dir = Path(out) if out else _on_main(lambda: _default_out("compare"))  # one for all ranks
    slugs = _unique([slug(p) for p in parsed])
    per_objective: list[list[dict]] = [[] for _ in parsed]
    for i in range(seeds):
        seed = base_seed + i
        points = [(pairs, out_dir / s / f"seed{seed}") for pairs, s in zip(parsed, slugs)]
        rows = _run_group(config, [*base, f"seed={seed}"], points, True, verbose, progress,
                          f"compare seed {seed}", trust_code)
        for j, row in enumerate(rows):
            per_objective[j].append({"seed": seed, **row})
    summary = [_summarise(text, s, runs) for text, s, runs in zip(objectives, slugs, per_objective)]
    if _is_main():
        _write_compare(out_dir, summary, per_objective, base_seed, seeds)
    return summary


def _summarise(objective: str, slug_: str, runs: list[dict]) -> dict:
    def values(role: str) -> list[float]:
        return [r[role] for r in runs if r[role] is not None]

    paired = [r for r in runs if r["student"] is not None and r["control"] is not None]
    t, p = paired_test([r["student"] for r in paired], [r["control"] for r in paired])
    gains = [r["gain"] for r in paired]
    return {"objective": " ".join(objective.split()), "slug": slug_, "seeds": len(runs),
            **{f"{role}_{stat}": fn(values(role)) for role in ("teacher", "student", "control")
               for stat, fn in (("mean", _mean), ("std", _std))},
            "gain_mean": _mean(gains), "gain_std": _std(gains), "t": t, "p": p}


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "–"
    return f"{100 * mean:.2f} ± {100 * std:.2f} %" if std is not None else pct(mean)


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def compare_markdown(summary: list[dict]) -> str:
    """The compare table: accuracies as mean ± sample std over seeds, gain in points."""
    return _markdown(
        ["objective", "seeds", "teacher", "student", "control", "gain (pts)", "t", "p"],
        [[f"`{r['objective']}`", str(r["seeds"]), _pm(r["teacher_mean"], r["teacher_std"]),
          _pm(r["student_mean"], r["student_std"]), _pm(r["control_mean"], r["control_std"]),
          num(None if r["gain_mean"] is None else 100 * r["gain_mean"], "+.2f"),
          num(r["t"], ".2f"), num(r["p"], ".3g")] for r in summary])


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _write_compare(out_dir: Path, summary: list[dict], runs: list[list[dict]], base_seed: int,
                   seeds: int) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "compare.csv", _csv(summary))
    atomic_write_text(out_dir / "compare.md",
                      f"# Compare: {len(summary)} objectives × {seeds} seeds "
                      f"(seeds {base_seed}–{base_seed + seeds - 1})\n\n"
                      "Accuracies are mean ± sample std over seeds; gain is the mean paired "
                      "difference student − control (same seed), with a paired t-test.\n\n"
                      + compare_markdown(summary))
    atomic_write_json(out_dir / "compare.json",
                      {"base_seed": base_seed, "seeds": seeds, "summary": summary,
                       "runs": {s["slug"]: r for s, r in zip(summary, runs)}})
    _save_figure(out_dir / "compare.png", compare_figure(summary))


# ---------------------------------------------------------------- sweep

def sweep(swept: dict[str, Sequence] | Sequence[str], config: Config = None,
          out: str | Path | None = None, *, overrides: Sequence[str] = (), verbose: bool = False,
          progress: Progress = None, trust_code: bool = False) -> list[dict]:
    """Run every combination of the swept values, one run each into ``out/<slug>/``.

    ``swept`` is ``{"distill.temperature": [1, 4], ...}`` or CLI-style strings
    (``["distill.temperature=1,4", "student.epochs=3"]``; single values become overrides).
    Returns one row per point: the swept values, teacher/student/control test accuracy
    (fractions) and the gain; writes ``sweep.{csv,md,json,png}`` into ``out``.
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
    out_dir = Path(out) if out else _on_main(lambda: _default_out("sweep"))  # one for all ranks
    slugs = _unique([slug(p) for p in combos])
    results = _run_group(config, base, [(p, out_dir / s) for p, s in zip(combos, slugs)],
                         control, verbose, progress, "sweep", trust_code)
    rows = [{**{k: parse_value(v) for k, v in pairs}, "slug": s, **r}
            for pairs, s, r in zip(combos, slugs, results)]
    if not _is_main():
        return rows
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = [*keys, "teacher", "student", "control", "gain", "slug"]
    atomic_write_text(out_dir / "sweep.csv", _csv([{c: r[c] for c in columns} for r in rows]))
    atomic_write_text(out_dir / "sweep.md", f"# Sweep: {len(rows)} runs\n\n" + sweep_markdown(rows, keys))
    atomic_write_json(out_dir / "sweep.json", {"keys": keys, "rows": rows})
    _save_figure(out_dir / "sweep.png", sweep_figure(rows, keys))
    return rows


def swept_keys(rows: list[dict]) -> list[str]:
    """The swept keys of :func:`sweep`'s rows (the columns before ``slug``)."""
    columns = list(rows[0]) if rows else []
    return columns[:columns.index("slug")] if "slug" in columns else []


def sweep_markdown(rows: list[dict], keys: list[str] | None = None) -> str:
    """The sweep table: every swept key, then the accuracies and the gain in points."""
    keys = swept_keys(rows) if keys is None else keys
    return _markdown(
        [*keys, "teacher", "student", "control", "gain (pts)"],
        [[*(str(r[k]) for k in keys), pct(r["teacher"]), pct(r["student"]), pct(r["control"]),
          num(None if r["gain"] is None else 100 * r["gain"], "+.2f")] for r in rows])


# ---------------------------------------------------------------- plots

def _save_figure(path: Path, fig) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())


def compare_figure(summary: list[dict]):
    """Student accuracy (mean ± std) per objective, its paired control beside it, and the first
    objective's control as a band."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(5.0, 1.3 * len(summary) + 2), 3.6), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(summary))

    def pct(r: dict, role: str, stat: str) -> float:
        v = r[f"{role}_{stat}"]
        return np.nan if v is None else 100 * v

    ref = summary[0]
    if ref["control_mean"] is not None:
        spread = pct(ref, "control", "std") if ref["control_std"] is not None else 0.0
        mid = pct(ref, "control", "mean")
        ax.axhspan(mid - spread, mid + spread, color="#7f7f7f", alpha=0.2, lw=0)
        ax.axhline(mid, color="#7f7f7f", lw=1, ls="--", label="control (mean ± std)")
    for role, shift, color, marker in (("control", 0.12, "#7f7f7f", "s"),
                                       ("student", -0.12, "#d62728", "o")):
        ax.errorbar(x + shift, [pct(r, role, "mean") for r in summary],
                    yerr=[0 if r[f"{role}_std"] is None else pct(r, role, "std") for r in summary],
                    fmt=marker, color=color, capsize=4,
                    label="distilled student" if role == "student" else "paired control")
    ax.set_xticks(x, [r["slug"] for r in summary], rotation=20, ha="right", fontsize="small")
    ax.set(ylabel="test accuracy (%)", title=f"Students against controls ({summary[0]['seeds']} seeds)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize="small")
    return fig


def sweep_figure(rows: list[dict], keys: list[str]):
    """Student accuracy against the first swept key, one line per value of the other keys,
    and the control's accuracy as a reference line."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.6), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    first, rest = keys[0], keys[1:]
    xs = list(dict.fromkeys(r[first] for r in rows))
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in xs)
    position = {v: (v if numeric else i) for i, v in enumerate(xs)}
    lines: dict[tuple, list[dict]] = {}
    for r in rows:
        lines.setdefault(tuple(r[k] for k in rest), []).append(r)
    for values, members in lines.items():
        label = ", ".join(f"{k}={v}" for k, v in zip(rest, values)) or "distilled student"
        points = sorted((position[r[first]], 100 * r["student"]) for r in members
                        if r["student"] is not None)
        if points:
            ax.plot(*zip(*points), marker="o", label=label)
    controls = sorted({r["control"] for r in rows if r["control"] is not None})
    if controls:
        ax.axhline(100 * float(np.mean(controls)), color="#7f7f7f", ls="--", lw=1,
                   label="control" if len(controls) == 1 else "control (mean)")
    if numeric and min(xs) > 0 and max(xs) / min(xs) >= 20:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(range(len(xs)), [str(v) for v in xs])
    ax.set(xlabel=first, ylabel="student test accuracy (%)", title="Sweep")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig
