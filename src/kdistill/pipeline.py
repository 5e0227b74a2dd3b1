"""The recipe: data → teacher → distilled student → control student → measurements → report.

Every artefact goes into one run directory, written atomically; ``metrics.json`` says whether
the run is ``running``, ``complete`` or ``failed``.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from . import __version__, distributed
from .bench import deployment_bench
from .checkpoint import load_teacher_weights
from .config import DEFAULT_PRESET, RunConfig, canonical_preset, from_dict, load_config, to_yaml
from .data import Dataset, load_dataset, normalize
from .data.batches import Images, check_channels, per_channel, split
from .device import describe, resolve_device
from .errors import ConfigError, DataError, KdistillError, RunInterrupted
from .files import atomic_write_text
from .losses import is_feature_loss
from .models import Ensemble, create_model
from .phases import Experiment
from .report import write_report
from .runfiles import read_config, read_metrics

PYTHON_DATA = "python:"  # data.name of a run whose Dataset was given in Python


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
        name = canonical_preset(config or DEFAULT_PRESET)
        return load_config(preset=config, overrides=overrides), name
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


def environment(device: torch.device = torch.device("cpu")) -> dict:
    return {"torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "device": describe(device), "cpu": _cpu_name(),
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


def build_model(role: str, spec, seed: int, dataset: Dataset) -> nn.Module:
    """Build a model reproducibly from ``seed``, told the data's shape and classes, and check it
    maps the dataset's images to its classes."""
    torch.manual_seed(seed)
    try:
        model = create_model(spec.model, data_shape=dataset.shape,
                             num_classes=dataset.num_classes, **spec.kwargs)
    except ConfigError as exc:
        raise ConfigError(f"config key '{role}.model': {exc.message}", exc.hint) from None
    probe = normalize(dataset.test_images[:2], dataset.mean, dataset.std)
    try:
        with torch.no_grad():
            out = model.eval()(probe)
    except Exception as exc:  # a user model may fail in any way on our input shape
        raise ConfigError(f"{role} model {spec.model!r} fails on {list(probe.shape[1:])} images: "
                          f"{exc}", "check the model's input size, or set data.image_size / "
                          "data.channels") from None
    if out.dim() != 2 or out.shape[1] != dataset.num_classes:
        raise ConfigError(f"{role} model {spec.model!r} outputs {list(out.shape[1:])} values per "
                          f"image but {dataset.name} has {dataset.num_classes} classes",
                          f"set {role}.kwargs.num_classes or change the model")
    return model.train()


def build_teacher(cfg: RunConfig, dataset: Dataset) -> nn.Module:
    """The teacher, or with ``teacher.ensemble`` N > 1 an :class:`Ensemble` of N teachers built
    (and later trained) with seeds seed, seed+1, ..."""
    members = [build_model("teacher", cfg.teacher, cfg.seed + i, dataset)
               for i in range(cfg.teacher.ensemble)]
    return members[0] if len(members) == 1 else Ensemble(members, cfg.distill.temperature)


@contextlib.contextmanager
def locked(out_dir: Path):
    """Hold an exclusive lock on the run directory (released by the OS even on kill -9)."""
    handle = open(out_dir / ".lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise KdistillError(f"another kdistill process is writing {out_dir}",
                            "wait for it to finish or choose another --out") from None
    try:
        yield
    finally:
        handle.close()


def splits_for(cfg: RunConfig, dataset: Dataset) -> tuple[Images, Images, Images]:
    """Train / validation / test, normalised lazily as ``data.mean`` / ``data.std`` say."""
    return split(dataset, cfg.data.val_size, cfg.data.mean, cfg.data.std)


def load_data(cfg: RunConfig, data: Dataset | None = None) -> Dataset:
    """The dataset ``cfg.data`` names (or ``data`` given in Python), converted and subset as
    ``cfg.data`` asks."""
    d = cfg.data
    if data is not None:
        dataset = data.converted(d.channels, d.image_size)
    elif d.name.startswith(PYTHON_DATA):
        raise DataError(f"this run's data ({d.name[len(PYTHON_DATA):]}) was given in Python",
                        "pass the same Dataset again as data=")
    else:
        dataset = load_dataset(d.name, d.root, image_size=d.image_size, channels=d.channels,
                               labels=d.labels)
    return dataset.subset(d.train_subset)


def _open_resumed(run_dir: str | Path, trust_code: bool) -> tuple[Path, RunConfig, dict]:
    out_dir = Path(run_dir)
    metrics = read_metrics(out_dir)
    if metrics.get("status") == "complete":
        raise KdistillError(f"{out_dir} is already complete", "nothing to resume")
    return out_dir, read_config(out_dir, trust_code), metrics


def run(config: RunConfig | str | Path | dict | None = None, out: str | Path | None = None, *,
        overrides: Sequence[str] = (), quiet: bool = False, progress: bool | None = None,
        resume: str | Path | None = None, tensorboard: bool = False,
        retrain_teacher: bool = False, data: Dataset | None = None,
        trust_code: bool = False) -> Run:
    """Run the whole experiment; ``config`` is a preset name (default ``mnist-spec``), YAML path,
    dict or :class:`RunConfig`, and ``overrides`` are ``key=value`` strings. ``data`` is a
    :class:`~kdistill.data.Dataset` of your own (e.g. ``Dataset.from_arrays``) used instead of
    ``data.name`` (give it again to resume such a run). ``resume`` names
    the directory of a stopped run to continue from its last checkpoints instead; with
    ``tensorboard`` every epoch's numbers also go to TensorBoard event files in ``tensorboard/``.
    A teacher trained before with the same recipe comes from the teacher cache unless
    ``retrain_teacher``. A resumed run's config may name code (``package.module:factory``)
    only with ``trust_code`` (a run directory is data someone may have handed you)."""
    started = time.perf_counter()
    distributed.init_from_env()  # a no-op unless started by torchrun
    if resume is not None:
        if config is not None or overrides or out is not None:
            raise ConfigError("--resume continues a run with its own config",
                              "drop the preset, config file, --out and overrides")
        out_dir, cfg, metrics = _open_resumed(resume, trust_code)
        name = metrics.get("name", out_dir.name)
    else:
        cfg, name = resolve_config(config, overrides)
    world = distributed.world_size()
    device = resolve_device(cfg.device)
    _check(cfg, world, device)
    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // world))
    # Everything that can be wrong with the input is found before anything is written.
    if data is not None:
        cfg.data.name = f"{PYTHON_DATA}{data.name}"
    dataset = load_data(cfg, data)
    train, val, test = (part.to(device) for part in splits_for(cfg, dataset))
    check_channels("teacher", {"mean": cfg.teacher.mean, "std": cfg.teacher.std}, dataset.shape[0])
    roles = {"teacher": cfg.teacher, "student": cfg.student}
    if cfg.control:
        roles["control"] = cfg.student
    # The student and its control start from the same weights: both are built from cfg.seed.
    models = {role: build_teacher(cfg, dataset) if role == "teacher" else
              build_model("student", spec, cfg.seed, dataset) for role, spec in roles.items()}
    if cfg.teacher.weights:
        load_teacher_weights(cfg.teacher.weights, models["teacher"])
    for model in models.values():
        model.to(device, memory_format=torch.channels_last if cfg.channels_last else None)
    if resume is None:
        out_dir = distributed.on_main(lambda: prepare_out_dir(out, name))
        metrics = {"name": name, "kdistill_version": __version__}
    with locked(out_dir) if distributed.is_main() else contextlib.nullcontext():
        result = _execute(Experiment(cfg, out_dir, metrics, dataset, (train, val, test), models,
                                     quiet, progress, started, tensorboard, retrain_teacher))
    distributed.barrier()
    return result


def _check(cfg: RunConfig, world: int, device: torch.device) -> None:
    """Refuse a config this device and process count cannot run, before anything is loaded."""
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ConfigError("config key 'precision': fp16 training needs a CUDA device",
                          "use precision=bf16 or fp32")
    if cfg.teacher.ensemble > 1 and is_feature_loss(cfg.distill.loss):
        raise ConfigError(f"config key 'distill.loss': {cfg.distill.loss} needs a single teacher",
                          "set teacher.ensemble=1 or use a logit objective")
    for role, spec in (("teacher", cfg.teacher), ("student", cfg.student)):
        if spec.batch_size % world:
            raise ConfigError(f"config key '{role}.batch_size': {spec.batch_size} does not split "
                              f"evenly over {world} processes", "use a multiple of the process count")
        if spec.micro_batches > spec.batch_size // world:
            raise ConfigError(f"config key '{role}.micro_batches': {spec.micro_batches} is more "
                              f"than the {spec.batch_size // world} examples of each process's batch",
                              "use fewer micro-batches or a larger batch_size")


def record_bench(metrics: dict, cfg: RunConfig, models: dict[str, nn.Module], test: Images,
                 out_dir: Path) -> None:
    """Run the deployment benchmark on teacher and student and store it in ``metrics``."""
    deployment = deployment_bench(
        {r: models[r] for r in ("teacher", "student")}, test, out_dir,
        batches=tuple(cfg.bench.throughput_batches), latency_repeats=cfg.bench.latency_repeats,
        throughput_repeats=cfg.bench.throughput_repeats, onnx=cfg.bench.onnx)
    biggest = max(cfg.bench.throughput_batches)
    metrics["deployment"] = deployment
    metrics["inference"] = {
        role: {"latency_batch1_ms": d["runtimes"]["eager"]["latency_batch1_ms"],
               "latency_batch1_p90_ms": d["runtimes"]["eager"]["latency_batch1_p90_ms"],
               "throughput_per_s": d["runtimes"]["eager"]["throughput_per_s"][biggest],
               "throughput_batch": biggest}
        for role, d in deployment.items()}


def _begin(exp: Experiment) -> None:
    """Write the run's config and a ``running`` metrics.json describing its data."""
    cfg, metrics, dataset, train = exp.cfg, exp.metrics, exp.dataset, exp.train
    if exp.main:
        atomic_write_text(exp.out_dir / "config.yaml", to_yaml(cfg))
    metrics.update(status="running", config=cfg.model_dump(mode="json"),
                   env=environment(train.device))
    metrics.pop("error", None)
    metrics["dataset"] = {"name": dataset.name, "classes": list(dataset.classes),
                          "train_size": len(train), "val_size": len(exp.val),
                          "test_size": len(exp.test),
                          "shape": list(dataset.shape),
                          "mean": list(per_channel(train.mean)),
                          "std": list(per_channel(train.std)),
                          "source": dataset.source.get("source"),
                          "origin": dataset.source.get("origin"),
                          "sha256": dataset.source.get("files")}
    exp.save_metrics()
    exp.log.say(f"data     {dataset.name}: {len(train):,} train / {len(exp.val):,} "
                f"val / {len(exp.test):,} test ({dataset.source.get('source', '?')})")


def _execute(exp: Experiment) -> Run:
    """Every phase of the run, then the benchmark and the report; ``metrics.json`` says
    ``complete``, ``interrupted`` (checkpoints kept for --resume) or ``failed``."""
    cfg, metrics = exp.cfg, exp.metrics
    _begin(exp)
    try:
        exp.train_all()
        if cfg.bench.enabled and exp.main:
            t = time.perf_counter()
            exp.log.say("bench    timing teacher and student side by side"
                        + (" (eager, ONNX Runtime, int8)" if cfg.bench.onnx else ""))
            record_bench(metrics, cfg, exp.models, exp.test, exp.out_dir)
            exp.phase("bench", t)
        exp.timings["total_seconds"] = time.perf_counter() - exp.started
        metrics["timings"] = exp.timings
        metrics["status"] = "complete"
        exp.save_metrics()
        if exp.main:
            write_report(exp.out_dir)
    except KeyboardInterrupt:
        metrics["status"] = "interrupted"
        exp.save_metrics()
        raise RunInterrupted(f"interrupted; checkpoints are kept in {exp.out_dir}",
                             f"resume with: kdistill run --resume {exp.out_dir}") from None
    except BaseException as exc:
        metrics.update(status="failed", error=str(exc) or type(exc).__name__)
        try:
            exp.save_metrics()
        except OSError:
            pass  # e.g. the disk is full: the last complete metrics.json stays as it was
        raise
    exp.log.say(f"done     {exp.out_dir}/report.md  ({exp.timings['total_seconds']:.1f}s)")
    return Run(exp.out_dir, metrics, exp.models)
