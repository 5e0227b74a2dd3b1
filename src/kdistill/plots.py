"""Small PNG plots of a run, drawn from ``metrics.json`` alone, for ``report.md`` and ``report.html``.

Figures are built with matplotlib's object API (``Figure``, no pyplot), so drawing them picks no
global backend: it works headless and leaves a notebook's own plotting alone. Every plot is
skipped, not failed, when the metrics it needs are missing (a partial run, no control, no bench).
"""
from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter

from .files import atomic_write_bytes
from .roles import LABELS

COLORS = {"teacher": "#1f77b4", "student": "#d62728", "control": "#7f7f7f"}
# A model without its own inference measurements shares another's: the control is the student's
# architecture, so it runs exactly as fast and costs as many multiply-adds.
SHARES_INFERENCE = {"control": "student"}
# Deployed variants of a model (metrics["deployment"][role]["runtimes"]): same colour, own marker.
RUNTIMES = {"onnx": ("ONNX Runtime", "s"), "int8": ("int8", "^")}
DPI = 100
PLOT_DIR = "plots"


def _text(value: object) -> str:
    """A value from the metrics as literal matplotlib text: ``$`` escaped, so a class or model
    name like ``$\\foo$`` is not parsed as mathtext (and cannot fail the plot)."""
    return str(value).replace("$", r"\$")


def _label(role: str) -> str:
    return LABELS.get(role) or _text(role)


def _color(role: str) -> str | None:
    return COLORS.get(role)


def accuracy_figure(metrics: dict) -> Figure | None:
    """Test accuracy after each epoch, one line per model; None without any history."""
    models = metrics.get("models", {})
    curves = {role: [(h["epoch"], 100 * h["test_accuracy"]) for h in m.get("history", [])
                     if h.get("test_accuracy") is not None]
              for role, m in models.items()}
    curves = {role: points for role, points in curves.items() if points}
    if not curves:
        return None
    fig = Figure(figsize=(6, 3.4), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    for role, points in curves.items():
        epochs, accuracy = zip(*points)
        ax.plot(epochs, accuracy, marker="o", label=_label(role), color=_color(role))
    ax.set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy per epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def tradeoff_points(metrics: dict) -> list[dict]:
    """Each model, and each deployed variant a run measured (ONNX Runtime, int8), with its label,
    role, marker, accuracy (%), batch-1 latency (ms) and MACs per sample; unmeasured values are None.

    Variants carry no MACs: they do the multiply-adds of the model they export, and on that
    panel would only hide it.
    """
    inference = metrics.get("inference", {})
    points = []
    for role, m in metrics.get("models", {}).items():
        if m.get("test_accuracy") is None:
            continue
        timing = inference.get(role) or inference.get(SHARES_INFERENCE.get(role, ""), {})
        points.append({"label": _label(role), "role": role, "marker": "o",
                       "accuracy": 100 * m["test_accuracy"],
                       "latency_ms": timing.get("latency_batch1_ms"),
                       "macs": m.get("macs_per_sample")})
    for role, entry in metrics.get("deployment", {}).items():
        for runtime, (name, marker) in RUNTIMES.items():
            measured = entry.get("runtimes", {}).get(runtime, {})
            if measured.get("test_accuracy") is not None and measured.get("latency_batch1_ms"):
                points.append({"label": f"{_label(role)}, {name}", "role": role, "marker": marker,
                               "accuracy": 100 * measured["test_accuracy"],
                               "latency_ms": measured["latency_batch1_ms"], "macs": None})
    return points


def _scatter(ax, points: list[dict], key: str) -> None:
    for p in points:
        # The control sits on the student's x: a hollow marker keeps both visible.
        hollow = p["role"] in SHARES_INFERENCE
        ax.scatter(p[key], p["accuracy"], s=60, label=p["label"], marker=p["marker"],
                   color="none" if hollow else _color(p["role"]),
                   edgecolors=_color(p["role"]) or "black", linewidths=1.5, zorder=3)
    # A linear axis from zero: with a handful of models, ratios read straight off the plot.
    ax.set_xlim(0, 1.15 * max(p[key] for p in points))
    ax.grid(alpha=0.3)


def tradeoff_figure(metrics: dict) -> Figure | None:
    """Accuracy against batch-1 latency and against MACs per sample; None with nothing to plot."""
    points = tradeoff_points(metrics)
    panels = [(key, label) for key, label in (("latency_ms", "batch-1 latency (ms)"),
                                              ("macs", "multiply-adds per sample"))
              if any(p[key] for p in points)]
    if not panels:
        return None
    fig = Figure(figsize=(3.2 * len(panels) + 2.4, 3.4), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, (key, label) in zip(axes, panels):
        _scatter(ax, [p for p in points if p[key]], key)
        ax.set_xlabel(label)
        if key == "macs":
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 100k, 1.5M
    axes[0].set_ylabel("test accuracy (%)")
    # The first panel holds every point (the MACs panel leaves out deployed variants).
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", fontsize="small")
    fig.suptitle("Accuracy against cost")
    return fig


def _matrix(ax, matrix: np.ndarray, classes: list[str], title: str, cmap: str,
            limit: float | None = None) -> None:
    """Draw ``matrix`` (rows = true class) with its non-zero counts written in the cells."""
    vmin = None if limit is None else -limit
    image = ax.imshow(matrix, cmap=cmap, vmin=vmin, vmax=limit)
    ticks = range(len(classes))
    ax.set(xticks=ticks, yticks=ticks, xticklabels=classes, yticklabels=classes,
           xlabel="predicted", ylabel="true", title=title)
    ax.tick_params(labelsize=7)
    ax.tick_params(axis="x", labelrotation=90 if max(map(len, classes)) > 2 else 0)
    if len(classes) <= 12:
        top = np.abs(matrix).max() or 1
        for (i, j), v in np.ndenumerate(matrix):
            if v:
                ax.text(j, i, f"{v:+d}" if limit else str(v), ha="center", va="center",
                        fontsize=6, color="white" if abs(v) > 0.6 * top else "black")
    ax.figure.colorbar(image, ax=ax, shrink=0.8)


def confusion_figure(metrics: dict) -> Figure | None:
    """The student's confusion matrix and student minus teacher; None without the student's."""
    models = metrics.get("models", {})
    student = models.get("student", {}).get("confusion")
    if student is None:
        return None
    student = np.asarray(student, dtype=int)
    classes = [_text(c) for c in metrics.get("dataset", {}).get("classes", [])]
    if len(classes) != len(student):
        classes = [str(i) for i in range(len(student))]
    teacher = models.get("teacher", {}).get("confusion")
    panels = 2 if teacher is not None else 1
    fig = Figure(figsize=(4.4 * panels, 4.2), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    _matrix(axes[0], student, classes, "distilled student", "Blues")
    if teacher is not None:
        diff = student - np.asarray(teacher, dtype=int)
        # Off the diagonal red means the student makes that mistake more often than the teacher;
        # on the diagonal blue means it gets that class right less often.
        _matrix(axes[1], diff, classes, "student − teacher", "RdBu_r",
                limit=max(1, int(np.abs(diff).max())))
    return fig


def temperature_figure(series: dict[str, dict[float, tuple[float, float]]],
                       references: dict[str, float] | None = None,
                       title: str = "Distilled student: test errors against temperature") -> Figure | None:
    """Test errors against the distillation temperature, one panel per student.

    ``series`` maps a student's label to ``{T: (mean errors, std)}``; ``references`` maps the
    same label to the errors of that student trained on labels alone (a dashed line). Each
    student has its own panel: a 30-unit net makes several times the errors of an 800-unit one,
    and one shared axis would flatten the smaller differences. None with nothing to plot.
    """
    series = {label: points for label, points in series.items() if points}
    if not series:
        return None
    references = references or {}
    fig = Figure(figsize=(3.6 * len(series) + 0.4, 3.4), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(series), squeeze=False)[0]
    for ax, (label, points) in zip(axes, series.items()):
        temps = sorted(points)
        means = [points[t][0] for t in temps]
        stds = [points[t][1] for t in temps]
        ax.errorbar(temps, means, yerr=stds if any(stds) else None, marker="o", capsize=3,
                    color=COLORS["student"], label="distilled")
        if references.get(label) is not None:
            ax.axhline(references[label], color=COLORS["control"], linestyle="--",
                       label="labels only")
        ax.set_xscale("log")
        ax.set_xticks(temps, [f"{t:g}" for t in temps])
        ax.minorticks_off()
        ax.set(xlabel="temperature T", ylabel="test errors", title=label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    return fig


def write_png(path: Path, fig: Figure) -> None:
    """``fig`` written to ``path`` as a PNG, atomically and reproducibly: no timestamp or
    version inside, so the same metrics give the same bytes."""
    buffer = BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    atomic_write_bytes(path, buffer.getvalue())


FIGURES = {"accuracy": accuracy_figure, "tradeoff": tradeoff_figure, "confusion": confusion_figure}


def write_plots(run_dir: str | Path, metrics: dict) -> dict[str, str]:
    """Draw every plot the metrics allow into ``run_dir/plots/``; name → path relative to run_dir.

    Plots of an earlier rendering that the metrics no longer support are removed, so the
    directory always matches ``metrics.json``.
    """
    plot_dir = Path(run_dir) / PLOT_DIR
    plot_dir.mkdir(exist_ok=True)
    written = {}
    for name, draw in FIGURES.items():
        path = plot_dir / f"{name}.png"
        fig = draw(metrics)
        if fig is None:
            path.unlink(missing_ok=True)
            continue
        write_png(path, fig)
        written[name] = f"{PLOT_DIR}/{name}.png"
    return written

