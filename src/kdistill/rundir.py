"""Operations on a finished run directory: load its models, re-bench, export to ONNX.

A run directory is data that may come from someone else: its files are read through
:mod:`kdistill.runfiles` (one schema, no links, size caps) and its config may name code
(``package.module:factory``) only with ``trust_code=True`` (``--trust-code``).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_weights
from .config import RunConfig
from .data import Dataset, Images
from .errors import KdistillError
from .export import check_parity, export_onnx, ort_session
from .files import atomic_write_json
from .pipeline import build_model, build_teacher, environment, load_data, locked, record_bench, splits_for
from .report import write_report
from .runfiles import read_config, read_metrics


def load_run(run_dir: str | Path, data: Dataset | None = None, trust_code: bool = False
             ) -> tuple[Path, RunConfig, dict, Images, dict[str, nn.Module]]:
    """A finished run's directory, config, metrics, test split and trained models (``data``:
    the Dataset a run made from Python data was given)."""
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    cfg = read_config(run_dir, trust_code)  # refused here, before anything is imported
    dataset = load_data(cfg, data)
    test = splits_for(cfg, dataset)[2]
    models = {}
    for role in metrics.get("models", {}):
        models[role] = (build_teacher(cfg, dataset) if role == "teacher" else
                        build_model("student", cfg.student, cfg.seed, dataset))
        load_weights(run_dir / f"{role}.safetensors", models[role])
    if not {"teacher", "student"} <= set(models):
        raise KdistillError(f"{run_dir} has no trained teacher and student yet",
                            "finish it with kdistill run --resume")
    return run_dir, cfg, metrics, test, models


def bench_run(run_dir: str | Path, onnx: bool = True, data: Dataset | None = None,
              trust_code: bool = False) -> dict:
    """Re-measure a finished run (``kdistill bench``): update metrics.json and the report."""
    run_dir, cfg, metrics, test, models = load_run(run_dir, data, trust_code)
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    cfg.bench.onnx = onnx
    with locked(run_dir):
        record_bench(metrics, cfg, models, test, run_dir)
        metrics["env"] = environment()
        atomic_write_json(run_dir / "metrics.json", metrics)
        write_report(run_dir)
    return metrics


def export_run(run_dir: str | Path, data: Dataset | None = None,
               trust_code: bool = False) -> dict[str, dict]:
    """Export every model of a finished run to ONNX (``kdistill export``), parity-checked."""
    run_dir, _, _, test, models = load_run(run_dir, data, trust_code)
    out = {}
    with locked(run_dir):
        for role, model in models.items():
            path = export_onnx(model, test.inputs(slice(0, 1)), run_dir / f"{role}.onnx")
            out[role] = {"path": str(path), **check_parity(model, ort_session(path), test)}
    return out
