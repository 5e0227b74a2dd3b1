"""Turn a run's ``metrics.json`` into ``report.md`` (with plots) and a self-contained ``report.html``.

The markdown is the one source of the report's words; the HTML is that markdown converted by
:mod:`kdistill.report_html` (markdown-it-py), with every plot inlined as a data URI so the file
opens in a browser on its own (and can be mailed or attached as one file).

A run directory is passed around, so every value in its ``metrics.json`` (names, descriptions,
class and model names, environment strings) is untrusted. Values enter the markdown only through
:func:`md_text` / :func:`md_code` (one line, markdown and HTML characters backslash-escaped, so a
value shows as exactly its text and can start no block, table cell or raw HTML); the converter
parses no raw HTML or links, escapes every text node and attribute, inlines only PNG files
inside the run directory, and the page carries a Content-Security-Policy that allows no script.
"""
from __future__ import annotations

import re
from pathlib import Path

from .errors import KdistillError
from .files import atomic_write_text
from .report_html import markdown_to_html, render_html  # noqa: F401 (markdown_to_html: kept here)
from .roles import LABELS, ROLES
from .runfiles import read_metrics, writer_alive

# What the seed spec (seed-README.md) published, to set beside our numbers.
SPEC = {
    "teacher_accuracy": 0.9853,
    "student_accuracy": 0.9634,
    "teacher_history": [0.9760, 0.9800, 0.9844, 0.9824, 0.9853],
    "student_history": [0.9353, 0.9467, 0.9630, 0.9629, 0.9634],
    "teacher_eval_seconds": 1.61,
    "student_eval_seconds": 1.09,
    # The spec's forward (ReLU then pool on the full 24x24 conv) computes 460,800 conv MACs; its
    # stride-5 pool never reads rows/columns 20-23, so 140,800 of them are wasted (see TeacherNet).
    "teacher_macs_as_written": 24 * 24 * 32 * 25 + 512 * 128 + 128 * 10,
}
CAPTIONS = {"accuracy": "Test accuracy per epoch",
            "tradeoff": "Test accuracy against batch-1 latency and multiply-adds per sample "
                        "(the control runs exactly like the student)",
            "confusion": "The student's confusion matrix and its difference from the teacher's"}


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# Characters that would make a value markup in markdown or raw HTML (`|` a table cell).
_MD_SPECIAL = re.compile(r"([\\`*\[\]<>|&~])")


def _one_line(value: object) -> str:
    """``value`` as text on one line: control characters and runs of white space become a space."""
    return " ".join(_CONTROL.sub(" ", str(value)).split())


def md_text(value: object) -> str:
    """An untrusted value as markdown text that shows exactly as itself: on one line (it cannot
    start a heading, image or table row), with every markdown or HTML character escaped, ``|``
    included, so it stays one table cell."""
    text = _MD_SPECIAL.sub(r"\\\1", _one_line(value))
    return re.sub(r"(?<!\w)_|_(?!\w)", r"\\_", text)  # intraword _ is never emphasis


def md_code(value: object, table: bool = False) -> str:
    """An untrusted value as a markdown code span (escaped text when it holds a backtick, which
    would end the span); ``table``: the span sits in a table cell, where ``|`` is escaped."""
    text = _one_line(value)
    if not text or "`" in text:
        return md_text(text)
    return "`" + (text.replace("|", r"\|") if table else text) + "`"


def _label(role: str) -> str:
    return LABELS.get(role) or md_text(role)


def pct(x: float | None) -> str:
    """A fraction as a percentage with two decimals ('–' when missing)."""
    return "–" if x is None else f"{100 * x:.2f} %"


def num(x: float | int | None, fmt: str = ",") -> str:
    """A number in ``fmt`` ('–' when missing)."""
    return "–" if x is None else format(x, fmt)


def results_table(metrics: dict) -> str:
    """The headline table: accuracy, gain over control, size, MACs and speed for each model."""
    models, inference = metrics["models"], metrics.get("inference", {})
    control = models.get("control", {}).get("test_accuracy")
    rows = ["| model | architecture | test accuracy | Δ vs control | params | MACs / sample "
            "| bytes on disk | batch-1 latency | throughput |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for role in ROLES:
        if role not in models:
            continue
        m, inf = models[role], inference.get(role, {})
        delta = ("–" if control is None or role != "student"
                 else f"{100 * (m['test_accuracy'] - control):+.2f} pts")
        latency = f"{inf['latency_batch1_ms']:.3f} ms" if inf else "–"
        throughput = (f"{inf['throughput_per_s']:,.0f} /s @ {md_text(inf['throughput_batch'])}"
                      if inf else "–")
        rows.append(
            f"| {LABELS[role]} | {md_code(m['model'], table=True)} | {pct(m['test_accuracy'])} | {delta} | "
            f"{num(m['params'])} | {num(m['macs_per_sample'])} | {num(m['size_bytes'])} | "
            f"{latency} | {throughput} |")
    return "\n".join(rows)


def _history_table(metrics: dict) -> str:
    models = metrics["models"]
    roles = [r for r in ROLES if r in models]
    epochs = max(len(models[r]["history"]) for r in roles)
    head = "| epoch | " + " | ".join(LABELS[r] for r in roles) + " |"
    rows = [head, "|---" * (len(roles) + 1) + "|"]
    for e in range(epochs):
        cells = [pct(models[r]["history"][e].get("test_accuracy"))
                 if e < len(models[r]["history"]) else "" for r in roles]
        rows.append(f"| {e + 1} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _honesty(metrics: dict) -> list[str]:
    """Plain statements about size and cost, derived from the measured numbers."""
    t, s = metrics["models"]["teacher"], metrics["models"]["student"]
    lines = []
    if s["params"] > t["params"]:
        lines.append(f"- The student has **more** parameters than the teacher "
                     f"({s['params']:,} vs {t['params']:,}, {s['params'] / t['params']:.2f}x) "
                     f"and a larger file ({s['size_bytes']:,} vs {t['size_bytes']:,} bytes).")
    else:
        lines.append(f"- The student has {t['params'] / s['params']:.1f}x fewer parameters "
                     f"({s['params']:,} vs {t['params']:,}).")
    lines.append(f"- It needs {t['macs_per_sample'] / s['macs_per_sample']:.1f}x fewer "
                 f"multiply-adds per image ({s['macs_per_sample']:,} vs {t['macs_per_sample']:,}).")
    speed = speed_ratios(metrics)
    if speed:
        lines.append(f"- Measured here it is {speed}.")
    return lines


def speed_ratios(metrics: dict) -> str | None:
    """'Nx faster at batch 1 and has Mx the throughput at batch B' (eager, student against
    teacher), or None when the run has no timings."""
    inf = metrics.get("inference", {})
    if "teacher" not in inf or "student" not in inf:
        return None
    ti, si = inf["teacher"], inf["student"]
    return (f"{ti['latency_batch1_ms'] / si['latency_batch1_ms']:.1f}x faster at batch 1 and has "
            f"{si['throughput_per_s'] / ti['throughput_per_s']:.1f}x the throughput at batch "
            f"{md_text(si['throughput_batch'])}")


def _against_spec(models: dict) -> list[str]:
    """Our numbers beside the spec's published ones, and what the spec got wrong."""
    return ["## Against the spec", "",
            "| | spec (published) | this run |", "|---|---:|---:|",
            f"| teacher test accuracy | {pct(SPEC['teacher_accuracy'])} | "
            f"{pct(models['teacher']['test_accuracy'])} |",
            f"| student test accuracy | {pct(SPEC['student_accuracy'])} | "
            f"{pct(models['student']['test_accuracy'])} |",
            f"| teacher / student params | \"significant reduction\" | "
            f"{models['teacher']['params']:,} / {models['student']['params']:,} |", "",
            "The spec claims the student reduces parameters; for these two networks it does not. "
            "The student's real savings are multiply-adds and latency, measured above. The spec's "
            "timings (1.61 s vs 1.09 s per evaluation) timed a DataLoader pass, not the models. "
            f"The teacher as the spec wrote it computes {SPEC['teacher_macs_as_written']:,} "
            f"multiply-adds per image ({SPEC['teacher_macs_as_written'] / models['student']['macs_per_sample']:.1f}x "
            "the student's), but its stride-5 pool never reads the last 4 rows and columns of the "
            "conv output; kdistill skips that work, with identical outputs, and counts what it runs.", ""]


def _image(plots: dict[str, str], name: str) -> list[str]:
    """A markdown image line for plot ``name`` (path relative to the run directory), if drawn."""
    return [f"![{CAPTIONS[name]}]({plots[name]})", ""] if name in plots else []


def deployment_table(metrics: dict) -> list[str]:
    """Each model in each runtime: latency, throughput per batch size, accuracy, bytes."""
    deployment = metrics.get("deployment")
    if not deployment:
        return []
    batches = sorted({int(b) for d in deployment.values() for r in d["runtimes"].values()
                      for b in r.get("throughput_per_s", {})})
    rows = ["## Deployment", "",
            "| model | runtime | batch-1 latency p50 / p90 | "
            + " | ".join(f"throughput @ {b}" for b in batches) + " | test accuracy | bytes |",
            "|---|---|---:|" + "---:|" * len(batches) + "---:|---:|"]
    for role, d in deployment.items():
        for runtime, r in d["runtimes"].items():
            through = {int(b): v for b, v in r.get("throughput_per_s", {}).items()}
            delta = (f" ({100 * r['accuracy_delta']:+.2f} pts)" if "accuracy_delta" in r else "")
            size = r.get("bytes") or metrics["models"][role]["size_bytes"]
            rows.append(f"| {_label(role)} | {md_text(runtime)} | {r['latency_batch1_ms']:.3f} / "
                        f"{r['latency_batch1_p90_ms']:.3f} ms | "
                        + " | ".join(f"{through[b]:,.0f} /s" for b in batches)
                        + f" | {pct(r['test_accuracy'])}{delta} | {size:,} |")
    parity = [f"{_label(r)} max |Δlogit| {d['onnx_parity']['max_abs_logit_diff']:.1e}"
              for r, d in deployment.items() if "onnx_parity" in d]
    memory = [f"{_label(r)} {d['peak_memory_bytes'] / 2**20:.1f} MiB" for r, d in deployment.items()]
    rows += ["", "ONNX Runtime runs the exported model (parity checked on the whole test set: "
             + ", ".join(parity) + ", identical predictions); int8 is ONNX Runtime's dynamic "
             "quantization of the linear layers (int8 weights, activations quantized on the fly; "
             "convolutions stay fp32), its accuracy change against eager in brackets. Batch-1 "
             "latency runs single-threaded in every runtime. Peak tensor memory of one eager forward at the largest "
             "batch: " + ", ".join(memory) + "." if parity else
             "Peak tensor memory of one eager forward at the largest batch: " + ", ".join(memory) + ".", ""]
    return rows


def _provenance_lines(models: dict) -> list[str]:
    """Say when the teacher was not trained here, and the best test-epoch accuracies beside
    the headline (papers in the RepDistiller line report those; kdistill chooses nothing by them)."""
    out = []
    teacher = models.get("teacher", {})
    if teacher.get("trained_here") is False:
        source = (f"the weights in {md_code(teacher['weights'])}" if teacher.get("weights")
                  else "its factory")
        out += [f"The teacher was not trained here: it is {source}, as it was given; its "
                "accuracy above is measured by this run.", ""]
    best = [f"{_label(r)} {pct(m['best_test_accuracy'])} (epoch {md_text(m['best_test_epoch'])})"
            for r, m in models.items() if "best_test_accuracy" in m]
    if best:
        out += ["Best test-epoch accuracy, selected on the test set as RepDistiller reports, "
                "for comparison with papers only: " + ", ".join(best) + ".", ""]
    return out


def _teacher_source(plan: object) -> list[str]:
    """How the distilled student got its teacher's logits, and why (``teacher_logits``)."""
    if not isinstance(plan, dict) or not plan.get("why"):
        return []
    how = ("from a table computed once" if plan.get("precomputed") is True
           else "from the teacher run live on each batch")
    return [f"The student read its teacher's logits {how}: {md_text(plan['why'])}.", ""]


def render(metrics: dict, plots: dict[str, str] | None = None) -> str:
    """The whole ``report.md`` as text; ``plots`` maps plot names to paths relative to the run."""
    plots = plots or {}
    cfg, env = metrics["config"], metrics["env"]
    models = metrics["models"]
    out = [f"# kdistill report: {md_text(metrics.get('name', 'run'))}, objective "
           f"{md_text(cfg['distill']['loss'])}", ""]  # the preset and what it distilled with
    if md_text(cfg.get("description") or ""):
        out += [f"_{md_text(cfg['description'])}_", ""]
    status = metrics.get("status", "complete")
    if status != "complete":
        out += [f"**Status: {md_text(status)}.** The numbers below are partial.", ""]
    d = cfg["distill"]
    out += [
        f"Dataset **{md_text(metrics['dataset']['name'])}** ({metrics['dataset']['train_size']:,} "
        f"train / {metrics['dataset']['test_size']:,} test, "
        f"source: {md_text(metrics['dataset'].get('source', '?'))}). "
        f"Objective **{md_text(d['loss'])}** (T = {md_text(d['temperature'])}, "
        f"α = {md_text(d['alpha'])}), seed {md_text(cfg['seed'])}. "
        "Accuracy is on the test set after the last epoch (nothing was selected on it).",
        "", "## Results", "", results_table(metrics), "",
    ]
    out += _provenance_lines(models)
    if "control" in models:
        gain = models["student"]["test_accuracy"] - models["control"]["test_accuracy"]
        out += [f"Distillation {'gained' if gain >= 0 else 'lost'} **{100 * abs(gain):.2f} points** "
                "against the same student trained from scratch on labels with the same seed and "
                "schedule (one seed: differences below a few tenths of a point can be noise).", ""]
    out += _image(plots, "tradeoff")
    out += ["## Size and cost, stated plainly", "", *_honesty(metrics), ""]
    inf = metrics.get("inference", {})
    if inf:
        out += ["Timings: median of repeated calls after warm-up, in blocks of consecutive "
                "calls of one model over distinct test batches, the blocks in rotation, freed "
                f"memory kept for reuse, {md_text(env.get('threads'))} threads (batch-1 latency: 1) "
                f"on {md_text(env.get('cpu') or env.get('device'))}.", ""]
    out += ["## Accuracy per epoch", "", _history_table(metrics), "", *_image(plots, "accuracy")]
    out += deployment_table(metrics)
    if "confusion" in plots:
        out += ["## Where the student errs", "",
                "Left: the distilled student's confusion matrix (rows = true class). Right: the "
                "student's minus the teacher's; red off the diagonal marks a mistake the student "
                "makes more often than the teacher, blue on the diagonal a class it gets right "
                "less often.", "", *_image(plots, "confusion")]
    if (cfg["data"]["name"], cfg["teacher"]["model"], cfg["student"]["model"]) == (
            "mnist", "spec-teacher", "spec-student"):  # the spec's experiment, on its data
        out += _against_spec(models)
    out += _teacher_source(metrics.get("teacher_logits"))
    t = metrics.get("timings", {})
    if t:
        out += ["## Time", "", "| phase | seconds |", "|---|---:|",
                *[f"| {md_text(k.removesuffix('_seconds'))} | {v:.2f} |" for k, v in t.items()], ""]
    out += [f"Environment: torch {md_text(env.get('torch'))}, Python {md_text(env.get('python'))}, "
            f"{md_text(env.get('threads'))} threads, device {md_text(env.get('device'))}, "
            f"kdistill {md_text(metrics.get('kdistill_version'))} "
            f"(commit {md_text(env.get('git_commit') or 'n/a')}).", ""]
    return "\n".join(out)


# ------------------------------------------------------------------------- run listing
def run_summary(run_dir: Path) -> dict:
    """Status and key numbers of one run directory, read from its ``metrics.json``."""
    try:
        metrics = read_metrics(run_dir)
    except KdistillError:
        return {"run": str(run_dir), "status": "unreadable"}
    models = metrics.get("models", {})
    accuracy = {role: models.get(role, {}).get("test_accuracy") for role in ROLES}
    status = metrics.get("status", "?")
    if status == "running" and not writer_alive(run_dir):
        status = "stopped"  # no process is writing it: resume with kdistill run --resume
    return {"run": str(run_dir), "status": status, **accuracy,
            "gain": metrics.get("distill", {}).get("gain_over_control"),
            "seconds": metrics.get("timings", {}).get("total_seconds")}


def list_runs(directory: str | Path) -> list[dict]:
    """Summaries of the runs in ``directory`` (its subdirectories holding a ``metrics.json``,
    by name), or of ``directory`` itself when it is a run."""
    directory = Path(directory)
    if (directory / "metrics.json").is_file():
        return [run_summary(directory)]
    return [run_summary(d) for d in sorted(directory.iterdir())
            if (d / "metrics.json").is_file()]


def runs_table(summaries: list[dict]) -> str:
    """Summaries as an aligned plain-text table, one run a line."""
    head = ("run", "status", "teacher", "student", "control", "gain (pts)", "seconds")
    rows = [head] + [(_CONTROL.sub("?", s["run"]), _CONTROL.sub("?", str(s["status"])), *(pct(s.get(r)).replace(" %", "%") for r in ROLES),
                      "–" if s.get("gain") is None else f"{100 * s['gain']:+.2f}",
                      "–" if s.get("seconds") is None else f"{s['seconds']:.1f}")
                     for s in summaries]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
                     for row in rows)


def write_report(run_dir: str | Path) -> Path:
    """Re-render the plots, ``report.md`` and ``report.html`` from ``run_dir/metrics.json``
    (read through the run schema: a handed run may hold anything); return ``report.md``'s path."""
    return write_report_files(run_dir, read_metrics(run_dir))


def write_report_files(run_dir: str | Path, metrics: dict) -> Path:
    """Render ``metrics`` into ``run_dir``; every value is escaped here whatever the schema let
    through."""
    # matplotlib takes a while to import: only rendering a report pays for it.
    from .plots import write_plots

    run_dir = Path(run_dir)
    markdown = render(metrics, write_plots(run_dir, metrics))
    path = run_dir / "report.md"
    atomic_write_text(path, markdown)
    atomic_write_text(run_dir / "report.html", render_html(markdown, run_dir))
    return path
