"""What a study writes: each objective's statistics over seeds, the tables (markdown, CSV,
JSON) and the figures of ``compare`` and ``sweep``, every file written atomically. Each table
states, as every published benchmark table does, its command (when the caller gives it), the
machine and torch its runs recorded, and the date it was written."""
from __future__ import annotations

import csv
import io
from datetime import date
from pathlib import Path

import numpy as np

from .files import atomic_write_json, atomic_write_text
from .report import num, pct
from .runfiles import RunDirError, read_metrics
from .stats import mean_std, paired_test

# ---------------------------------------------------------------- statistics

def summarise(objective: str, slug_: str, runs: list[dict]) -> dict:
    """One compare row: mean and sample std over seeds of each role's accuracy, and the mean
    paired gain over the control with its paired t-test."""
    def values(role: str) -> list[float]:
        return [r[role] for r in runs if r[role] is not None]

    paired = [r for r in runs if r["student"] is not None and r["control"] is not None]
    t, p = paired_test([r["student"] for r in paired], [r["control"] for r in paired])
    gain_mean, gain_std = mean_std([r["gain"] for r in paired])
    return {"objective": " ".join(objective.split()), "slug": slug_, "seeds": len(runs),
            **{f"{role}_{stat}": value for role in ("teacher", "student", "control")
               for stat, value in zip(("mean", "std"), mean_std(values(role)))},
            "gain_mean": gain_mean, "gain_std": gain_std, "t": t, "p": p}


# ---------------------------------------------------------------- tables

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


def swept_keys(rows: list[dict]) -> list[str]:
    """The swept keys of :func:`kdistill.study.sweep`'s rows (the columns before ``slug``)."""
    columns = list(rows[0]) if rows else []
    return columns[:columns.index("slug")] if "slug" in columns else []


def sweep_markdown(rows: list[dict], keys: list[str] | None = None) -> str:
    """The sweep table: every swept key, then the accuracies and the gain in points."""
    keys = swept_keys(rows) if keys is None else keys
    return _markdown(
        [*keys, "teacher", "student", "control", "gain (pts)"],
        [[*(str(r[k]) for k in keys), pct(r["teacher"]), pct(r["student"]), pct(r["control"]),
          num(None if r["gain"] is None else 100 * r["gain"], "+.2f")] for r in rows])


def machine(env: dict) -> str:
    """Where runs ran, as a benchmark table states it: the GPU, or the CPU and its threads;
    and the torch version (``env`` as :func:`kdistill.pipeline.environment` records it)."""
    where = env["device"] if env["device"] != "cpu" else f"{env['cpu']}, {env['threads']} threads"
    return f"{where}, torch {env['torch']}"


def provenance(run_dir: str | Path, command: str | None) -> dict:
    """What a study's table states about itself: ``command``, the environment its first run
    (``run_dir``) recorded (None when that run's ``metrics.json`` cannot be read: a table never
    guesses a machine) and today's date."""
    try:
        env = read_metrics(run_dir)["env"]
    except RunDirError:
        env = None
    return {"command": command, "env": env, "date": date.today().isoformat()}


def _stated(about: dict) -> str:
    """The line under a study table's title: `command` (machine, torch, date)."""
    where = ", ".join([*([machine(about["env"])] if about["env"] else []), about["date"]])
    return (f"`{about['command']}` ({where}).\n\n" if about["command"]
            else f"Ran on {where}.\n\n")


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _write_png(path: Path, fig) -> None:
    from .plots import write_png  # matplotlib only when a study is written

    write_png(path, fig)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def write_compare(out_dir: Path, summary: list[dict], runs: list[list[dict]], base_seed: int,
                  seeds: int, command: str | None = None) -> None:
    """``compare.{csv,md,json,png}`` into ``out_dir``; ``command`` is the one that ran it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    about = provenance(runs[0][0]["run_dir"], command)
    atomic_write_text(out_dir / "compare.csv", _csv(summary))
    atomic_write_text(out_dir / "compare.md",
                      f"# Compare: {_count(len(summary), 'objective')} × {_count(seeds, 'seed')} "
                      + (f"(seeds {base_seed}–{base_seed + seeds - 1})" if seeds > 1
                         else f"(seed {base_seed})") + "\n\n" + _stated(about) +
                      "Accuracies are mean ± sample std over seeds; gain is the mean paired "
                      "difference student − control (same seed), with a paired t-test.\n\n"
                      + compare_markdown(summary))
    atomic_write_json(out_dir / "compare.json",
                      {**about, "base_seed": base_seed, "seeds": seeds, "summary": summary,
                       "runs": {s["slug"]: r for s, r in zip(summary, runs)}})
    _write_png(out_dir / "compare.png", compare_figure(summary))


def write_sweep(out_dir: Path, rows: list[dict], keys: list[str],
                command: str | None = None) -> None:
    """``sweep.{csv,md,json,png}`` into ``out_dir``; ``command`` is the one that ran it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    about = provenance(rows[0]["run_dir"], command)
    columns = [*keys, "teacher", "student", "control", "gain", "slug"]
    atomic_write_text(out_dir / "sweep.csv", _csv([{c: r[c] for c in columns} for r in rows]))
    atomic_write_text(out_dir / "sweep.md", f"# Sweep: {len(rows)} runs\n\n" + _stated(about)
                      + sweep_markdown(rows, keys))
    atomic_write_json(out_dir / "sweep.json", {**about, "keys": keys, "rows": rows})
    _write_png(out_dir / "sweep.png", sweep_figure(rows, keys))


# ---------------------------------------------------------------- figures

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
