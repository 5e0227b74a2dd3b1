"""The recipe: data → teacher → distilled student → control student → measurements → report.

Every artefact goes into one run directory, written atomically; ``metrics.json`` says whether
the run is ``running``, ``complete`` or ``failed``.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from . import __version__
from .bench import describe_model, time_models
from .checkpoint import save_weights
from .config import RunConfig, from_dict, load_config, to_yaml
from .data import Dataset, load_dataset
from .engine import Distiller, Images, evaluate, fit, predict_logits
from .errors import ConfigError, KdistillError
from .files import atomic_write_json, atomic_write_text
from .models import create_model
from .report import write_report


@dataclass
class Run:
    """A finished run: where its files are, its metrics, and the trained models."""

    out_dir: Path
    metrics: dict
    models: dict[str, nn.Module] = field(default_factory=dict)


def resolve_config(config: RunConfig | str | Path | dict | None,
                   overrides: Sequence[str] = ()) -> tuple[RunConfig, str]:
    """A config from a preset name, a YAML path, a dict or a RunConfig; plus a name for the run."""
    if isinstance(config, (RunConfig, dict)):
        data = config.model_dump() if isinstance(config, RunConfig) else config
        return from_dict(data, overrides), "custom"
    if config is None or (isinstance(config, str) and not str(config).endswith((".yaml", ".yml"))):
        name = config or "seed"
        return load_config(preset=name, overrides=overrides), name
    return load_config(path=config, overrides=overrides), Path(config).stem


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def environment() -> dict:
    return {"torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "device": "cpu", "cpu": _cpu_name(),
            "platform": platform.platform(), "git_commit": _git_commit()}


def prepare_out_dir(out: str | Path | None, name: str) -> Path:
    """Create the run directory; refuse one that already holds a run."""
    out_dir = Path(out) if out else Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if (out_dir / "metrics.json").exists():
        raise KdistillError(f"{out_dir} already holds a run", "choose another --out or delete it")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise KdistillError(f"cannot write to output directory {out_dir}: {exc.strerror}",
                            "choose a writable --out") from None
    return out_dir


def _build(role: str, spec, seed: int, dataset: Dataset) -> nn.Module:
    """Build a model reproducibly from ``seed`` and check it maps images to the dataset's classes."""
    torch.manual_seed(seed)
    try:
        model = create_model(spec.model, **spec.kwargs)
    except ConfigError as exc:
        raise ConfigError(f"config key '{role}.model': {exc.message}", exc.hint) from None
    probe = dataset.test_images[:2]
    try:
        with torch.no_grad():
            out = model.eval()(probe.unsqueeze(1).float())
    except Exception as exc:  # a user model may fail in any way on our input shape
        raise ConfigError(f"{role} model {spec.model!r} fails on {list(probe.shape[1:])} images: "
                          f"{exc}", "check the model's input size") from None
    if out.dim() != 2 or out.shape[1] != dataset.num_classes:
        raise ConfigError(f"{role} model {spec.model!r} outputs {list(out.shape[1:])} values per "
                          f"image but {dataset.name} has {dataset.num_classes} classes",
                          f"set {role}.kwargs.num_classes or change the model")
    return model.train()


class _Reporter:
    """Epoch lines on stdout (errors alone go to stderr) and ``log.jsonl`` in the run directory."""

    def __init__(self, out_dir: Path, quiet: bool) -> None:
        self.path, self.quiet, self.lines = out_dir / "log.jsonl", quiet, []

    def epoch(self, phase: str, total: int) -> Callable[[dict], None]:
        def on_epoch_end(record: dict) -> None:
            self.lines.append(json.dumps({"phase": phase, **record}))
            atomic_write_text(self.path, "\n".join(self.lines) + "\n")
            acc = record.get("test_accuracy")
            self.say(f"{phase:8s} epoch {record['epoch']}/{total}  loss {record['train_loss']:.4f}"
                     + (f"  test acc {100 * acc:.2f}%" if acc is not None else "")
                     + f"  {record['seconds']:.1f}s")
        return on_epoch_end

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, flush=True)


def run(config: RunConfig | str | Path | dict | None = None, out: str | Path | None = None, *,
        overrides: Sequence[str] = (), quiet: bool = False, progress: bool | None = None) -> Run:
    """Run the whole experiment; ``config`` is a preset name (default ``seed``), YAML path,
    dict or :class:`RunConfig`, and ``overrides`` are ``key=value`` strings."""
    started = time.perf_counter()
    cfg, name = resolve_config(config, overrides)
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    out_dir = prepare_out_dir(out, name)
    atomic_write_text(out_dir / "config.yaml", to_yaml(cfg))
    log = _Reporter(out_dir, quiet)
    show = (not quiet) and (sys.stderr.isatty() if progress is None else progress)
    timings: dict[str, float] = {}
    metrics: dict = {"status": "running", "name": name, "kdistill_version": __version__,
                     "config": cfg.model_dump(mode="json"), "env": environment()}
    atomic_write_json(out_dir / "metrics.json", metrics)

    def phase(key: str, begin: float) -> None:
        timings[f"{key}_seconds"] = time.perf_counter() - begin

    try:
        t = time.perf_counter()
        dataset = load_dataset(cfg.data.name, cfg.data.root).subset(cfg.data.train_subset)
        n_val = cfg.data.val_size
        if n_val >= len(dataset.train_labels):
            raise ConfigError(f"config key 'data.val_size': {n_val} leaves no training data",
                              "use a smaller validation split")
        n_train = len(dataset.train_labels) - n_val
        norm = dict(mean=cfg.data.mean, std=cfg.data.std)
        train = Images(dataset.train_images[:n_train], dataset.train_labels[:n_train], **norm)
        val = Images(dataset.train_images[n_train:], dataset.train_labels[n_train:], **norm)
        test = Images(dataset.test_images, dataset.test_labels, **norm)
        metrics["dataset"] = {"name": dataset.name, "classes": list(dataset.classes),
                              "train_size": n_train, "val_size": n_val, "test_size": len(test),
                              "source": dataset.source.get("source"),
                              "origin": dataset.source.get("origin"),
                              "sha256": dataset.source.get("files")}
        phase("data", t)
        log.say(f"data     {dataset.name}: {n_train:,} train / {n_val:,} val / {len(test):,} test "
                f"({dataset.source.get('source', '?')})")

        # Build every model first, so a bad model is reported before any training; the student
        # and its control get the same initial weights from the same seed.
        roles = {"teacher": cfg.teacher, "student": cfg.student}
        if cfg.control:
            roles["control"] = cfg.student
        models = {role: _build(role.replace("control", "student"), spec, cfg.seed, dataset)
                  for role, spec in roles.items()}

        def train_model(role: str, spec, teacher=None) -> tuple[nn.Module, dict]:
            model = models[role]
            distiller = Distiller(model, teacher, cfg.distill.loss,
                                  temperature=cfg.distill.temperature, alpha=cfg.distill.alpha)
            t0 = time.perf_counter()
            history = fit(distiller, train, epochs=spec.epochs, batch_size=spec.batch_size,
                          lr=spec.lr, seed=cfg.seed, optimizer=spec.optimizer,
                          weight_decay=spec.weight_decay, evaluate_on=test,
                          on_epoch_end=log.epoch(role, spec.epochs), progress=show, desc=role)
            phase(role, t0)
            result = evaluate(model, test, cfg.eval_batch_size, dataset.num_classes)
            entry = {"model": spec.model, "test_accuracy": result["accuracy"],
                     "test_loss": result["loss"],
                     "per_class_accuracy": result["per_class_accuracy"],
                     "confusion": result["confusion"],
                     "train_seconds": sum(h["seconds"] for h in history), "history": history}
            if n_val:
                entry["val_accuracy"] = evaluate(model, val, cfg.eval_batch_size)["accuracy"]
            meta = {"role": role, "model": spec.model, "kwargs": spec.kwargs,
                    "dataset": dataset.name, "test_accuracy": result["accuracy"],
                    "kdistill_version": __version__}
            entry["size_bytes"] = save_weights(out_dir / f"{role}.safetensors", model, meta)
            entry.update(describe_model(model, test.inputs(slice(0, 1))))
            metrics.setdefault("models", {})[role] = entry
            atomic_write_json(out_dir / "metrics.json", metrics)
            return model, entry

        teacher, _ = train_model("teacher", cfg.teacher)
        # The teacher is frozen and the inputs are fixed: its logits are computed once.
        t = time.perf_counter()
        teacher_logits = predict_logits(teacher, train, cfg.eval_batch_size)
        phase("teacher_logits", t)
        student, _ = train_model("student", cfg.student, teacher_logits)
        gain = None
        if cfg.control:
            train_model("control", cfg.student)
            gain = (metrics["models"]["student"]["test_accuracy"]
                    - metrics["models"]["control"]["test_accuracy"])
        metrics["distill"] = {**cfg.distill.model_dump(), "gain_over_control": gain}

        if cfg.bench.enabled:
            t = time.perf_counter()
            log.say("bench    timing batch-1 latency and throughput (teacher and student interleaved)")
            metrics["inference"] = time_models(
                {"teacher": teacher, "student": student}, test.inputs(slice(0, 1024)),
                latency_repeats=cfg.bench.latency_repeats,
                throughput_batch=cfg.bench.throughput_batch,
                throughput_repeats=cfg.bench.throughput_repeats)
            phase("bench", t)
        timings["total_seconds"] = time.perf_counter() - started
        metrics["timings"] = timings
        metrics["status"] = "complete"
        atomic_write_json(out_dir / "metrics.json", metrics)
        write_report(out_dir)
    except KeyboardInterrupt:
        metrics["status"] = "interrupted"
        atomic_write_json(out_dir / "metrics.json", metrics)
        raise
    except BaseException as exc:
        metrics["status"] = "failed"
        metrics["error"] = str(exc) or type(exc).__name__
        try:
            atomic_write_json(out_dir / "metrics.json", metrics)
        except OSError:
            pass  # e.g. the disk is full: the last complete metrics.json stays as it was
        raise
    log.say(f"done     {out_dir}/report.md  ({timings['total_seconds']:.1f}s)")
    return Run(out_dir, metrics, models)
