"""The recipe: data → teacher → distilled student → control student → measurements → report.

Every artefact goes into one run directory, written atomically; ``metrics.json`` says whether
the run is ``running``, ``complete`` or ``failed``.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
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

from . import __version__, distributed
from .bench import deployment_bench, describe_model
from .checkpoint import load_teacher_weights, load_weights, save_weights
from .config import RunConfig, from_dict, load_config, to_yaml
from .data import Dataset, load_dataset, normalize
from .data.batches import per_channel, renormalize, split
from .device import describe, resolve_device
from .engine import (Distiller, Images, evaluate, fit, predict_logits_shared, predict_views,
                     tabulate_views)
from .errors import ConfigError, DataError, KdistillError, RunInterrupted
from .files import atomic_write_json, atomic_write_text
from .runfiles import read_config, read_metrics
from .losses import FeatureDistillation, feature_kind, is_feature_loss
from .models import Ensemble, create_model
from .report import write_report
from .teacher_cache import TeacherCache, data_fingerprint, teacher_key

PYTHON_DATA = "python:"  # data.name of a run whose Dataset was given in Python
# the largest table of per-view teacher logits kept in memory (60k images x 25 views: 60 MB)
MAX_TEACHER_TABLE_BYTES = 2 << 30


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


def _summary_writer(directory: Path):
    """TensorBoard's event-file writer (``pip install tensorboard``)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise KdistillError("--tensorboard needs the tensorboard package",
                            "pip install tensorboard (or kdistill[tensorboard])") from None
    return SummaryWriter(str(directory))


class _Reporter:
    """Epoch lines on stdout (errors alone go to stderr) and ``log.jsonl`` in the run directory.

    Lines are keyed by (phase, epoch), so an epoch re-run after a resume replaces its line.
    """

    def __init__(self, out_dir: Path, quiet: bool, write: bool = True,
                 tensorboard: bool = False) -> None:
        self.path, self.quiet, self.write = out_dir / "log.jsonl", quiet, write
        self.lines: dict[tuple[str, int], str] = {}
        self.board = _summary_writer(out_dir / "tensorboard") if tensorboard and write else None
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                record = json.loads(line)
                self.lines[(record["phase"], record["epoch"])] = line

    def epoch(self, phase: str, total: int) -> Callable[[dict], None]:
        def on_epoch_end(record: dict) -> None:
            self.lines[(phase, record["epoch"])] = json.dumps({"phase": phase, **record})
            if self.write:
                atomic_write_text(self.path, "\n".join(self.lines.values()) + "\n")
            if self.board is not None:
                for key, value in record.items():
                    if key not in ("epoch", "seconds"):
                        self.board.add_scalar(f"{phase}/{key}", value, record["epoch"])
                self.board.flush()
            acc = record.get("test_accuracy")
            self.say(f"{phase:8s} epoch {record['epoch']}/{total}  loss {record['train_loss']:.4f}"
                     + (f"  test acc {100 * acc:.2f}%" if acc is not None else "")
                     + f"  {record['seconds']:.1f}s")
        return on_epoch_end

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, flush=True)


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
    """Run the whole experiment; ``config`` is a preset name (default ``seed``), YAML path,
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
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ConfigError("config key 'precision': fp16 training needs a CUDA device",
                          "use precision=bf16 or fp32")
    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // world))
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
    # Everything that can be wrong with the input is found before anything is written.
    if data is not None:
        cfg.data.name = f"{PYTHON_DATA}{data.name}"
    dataset = load_data(cfg, data)
    train, val, test = (part.to(device) for part in splits_for(cfg, dataset))
    roles = {"teacher": cfg.teacher, "student": cfg.student}
    if cfg.control:
        roles["control"] = cfg.student
    # The student and its control start from the same weights: both are built from cfg.seed.
    models = {role: build_teacher(cfg, dataset) if role == "teacher" else
              build_model("student", spec, cfg.seed, dataset) for role, spec in roles.items()}
    if cfg.teacher.weights:
        load_teacher_weights(cfg.teacher.weights, models["teacher"])
    for model in models.values():
        model.to(device)
    if resume is None:
        out_dir = _on_main(lambda: prepare_out_dir(out, name))
        metrics = {"name": name, "kdistill_version": __version__}
    with locked(out_dir) if distributed.is_main() else contextlib.nullcontext():
        result = _Experiment(cfg, out_dir, metrics, dataset, (train, val, test), models, quiet,
                             progress, started, tensorboard, retrain_teacher).run()
    distributed.barrier()
    return result


def _on_main(fn: Callable[[], object]):
    """``fn()`` on rank 0, its result (or its user error) on every rank."""
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


def best_epoch(history: list[dict]) -> dict:
    """The epoch of highest test accuracy, as RepDistiller reports: shown for comparison with
    papers, never used to choose anything ({} without per-epoch test accuracy)."""
    scored = [h for h in history if h.get("test_accuracy") is not None]
    if not scored:
        return {}
    best = max(scored, key=lambda h: h["test_accuracy"])
    return {"best_test_accuracy": best["test_accuracy"], "best_test_epoch": best["epoch"]}


class _Experiment:
    """One run's phases, each skipped when a resumed run already finished it."""

    def __init__(self, cfg: RunConfig, out_dir: Path, metrics: dict, dataset: Dataset,
                 splits: tuple[Images, Images, Images], models: dict[str, nn.Module],
                 quiet: bool, progress: bool | None, started: float,
                 tensorboard: bool = False, retrain_teacher: bool = False) -> None:
        self.cfg, self.out_dir, self.metrics, self.dataset = cfg, out_dir, metrics, dataset
        self.train, self.val, self.test = splits
        t = cfg.teacher  # the teacher's own normalisation, if it has one
        self.teacher_norm = (self.train.mean if t.mean is None else t.mean,
                             self.train.std if t.std is None else t.std)
        self.models, self.started = models, started
        # Under torchrun every process trains on its share of each global batch; only rank 0
        # prints and writes.
        self.main = distributed.is_main()
        self.log = _Reporter(out_dir, quiet or not self.main, write=self.main,
                             tensorboard=tensorboard)
        self.show = (not quiet) and self.main and (sys.stderr.isatty() if progress is None
                                                   else progress)
        self.timings: dict[str, float] = {}
        self.cache, self.retrain_teacher = TeacherCache(), retrain_teacher
        self.teacher_keys: list[str] = []  # cache keys of the teacher (each ensemble member)
        if self.main:
            (out_dir / "checkpoints").mkdir(exist_ok=True)

    def seen_by(self, role: str, split: Images) -> Images:
        """``split`` normalised as ``role`` takes its inputs (the teacher may have its own)."""
        if role != "teacher":
            return split
        return Images(split.images, split.labels, *self.teacher_norm)

    def save_metrics(self) -> None:
        if self.main:
            atomic_write_json(self.out_dir / "metrics.json", self.metrics)

    def phase(self, key: str, begin: float) -> None:
        self.timings[f"{key}_seconds"] = time.perf_counter() - begin

    def run(self) -> Run:
        cfg, metrics = self.cfg, self.metrics
        if self.main:
            atomic_write_text(self.out_dir / "config.yaml", to_yaml(cfg))
        metrics.update(status="running", config=cfg.model_dump(mode="json"),
                       env=environment(self.train.device))
        metrics.pop("error", None)
        metrics["dataset"] = {"name": self.dataset.name, "classes": list(self.dataset.classes),
                              "train_size": len(self.train), "val_size": len(self.val),
                              "test_size": len(self.test),
                              "shape": list(self.dataset.shape),
                              "mean": list(per_channel(self.train.mean)),
                              "std": list(per_channel(self.train.std)),
                              "source": self.dataset.source.get("source"),
                              "origin": self.dataset.source.get("origin"),
                              "sha256": self.dataset.source.get("files")}
        self.save_metrics()
        self.log.say(f"data     {self.dataset.name}: {len(self.train):,} train / {len(self.val):,} "
                     f"val / {len(self.test):,} test ({self.dataset.source.get('source', '?')})")
        try:
            self._train_all()
            if cfg.bench.enabled and self.main:
                t = time.perf_counter()
                self.log.say("bench    timing teacher and student side by side"
                             + (" (eager, ONNX Runtime, int8)" if cfg.bench.onnx else ""))
                record_bench(metrics, cfg, self.models, self.test, self.out_dir)
                self.phase("bench", t)
            self.timings["total_seconds"] = time.perf_counter() - self.started
            metrics["timings"] = self.timings
            metrics["status"] = "complete"
            self.save_metrics()
            if self.main:
                write_report(self.out_dir)
        except KeyboardInterrupt:
            metrics["status"] = "interrupted"
            self.save_metrics()
            raise RunInterrupted(f"interrupted; checkpoints are kept in {self.out_dir}",
                                 f"resume with: kdistill run --resume {self.out_dir}") from None
        except BaseException as exc:
            metrics.update(status="failed", error=str(exc) or type(exc).__name__)
            try:
                self.save_metrics()
            except OSError:
                pass  # e.g. the disk is full: the last complete metrics.json stays as it was
            raise
        self.log.say(f"done     {self.out_dir}/report.md  ({self.timings['total_seconds']:.1f}s)")
        return Run(self.out_dir, metrics, self.models)

    def _train_all(self) -> None:
        cfg = self.cfg
        self.train_model("teacher", cfg.teacher,
                         trained=bool(cfg.teacher.weights) or cfg.teacher.epochs == 0)
        teacher_logits = self._teacher_logits()
        self.train_model("student", cfg.student,
                         self.models["teacher"] if teacher_logits is None else teacher_logits)
        gain = None
        if cfg.control:
            self.train_model("control", cfg.student)
            done = self.metrics["models"]
            gain = done["student"]["test_accuracy"] - done["control"]["test_accuracy"]
        self.metrics["distill"] = {**cfg.distill.model_dump(), "gain_over_control": gain}

    def _teacher_logits(self) -> torch.Tensor | None:
        """The frozen teacher's logits on every input the student can see, when those are few:
        the training set itself without augmentation ([N, C]), or each of its (2p+1)^2 shifted
        views under shifts alone ([V, N, C]) when that costs no more teacher passes than running
        the teacher live every epoch. Exactly what a live teacher would output (up to float
        rounding); cached beside the teacher. None: feature objectives and continuous
        augmentations run the teacher live. Under torchrun each process computes its share."""
        cfg = self.cfg
        augment = cfg.data.augment()
        views = augment.views
        if is_feature_loss(cfg.distill.loss) or (augment and not views):
            return None
        table_bytes = (views or 1) * len(self.train) * self.dataset.num_classes * 4
        if views and not (tabulate_views(augment, cfg.student.epochs)
                          and table_bytes <= MAX_TEACHER_TABLE_BYTES):
            return None
        t = time.perf_counter()
        recipe: dict = {"members": self.teacher_keys}
        if len(self.teacher_keys) > 1:  # an ensemble's logits depend on T (models.Ensemble)
            recipe["T"] = cfg.distill.temperature
        if views:
            recipe["translate"] = augment.translate
        name = "train_logits-" + teacher_key(recipe)
        key = self.teacher_keys[0] if self.teacher_keys else None
        logits = self.cache.load_logits(key, name) if key else None
        shape = (views, len(self.train)) if views else (len(self.train),)
        if logits is not None and logits.shape[:-1] == shape:
            self.log.say("teacher  logits on the training set from the cache")
            logits = logits.to(self.train.device)
        else:
            if views:
                self.log.say(f"teacher  logits on all {views} shifted views of the training set")
            predict = (functools.partial(predict_views, augment=augment) if views
                       else predict_logits_shared)
            logits = predict(self.models["teacher"], self.seen_by("teacher", self.train),
                             batch_size=cfg.eval_batch_size, precision=cfg.precision)
            if key and self.main:
                self.cache.store_logits(key, name, logits)
        self.phase("teacher_logits", t)
        return logits

    def _fit(self, name: str, model: nn.Module, spec, teacher: torch.Tensor | nn.Module | None,
             seed: int) -> list[dict]:
        """Train ``model`` (checkpointed as ``checkpoints/<name>``); return its epoch records."""
        cfg = self.cfg
        features = None
        if isinstance(teacher, nn.Module) and is_feature_loss(cfg.distill.loss):
            features = FeatureDistillation(
                model, teacher, self.train.inputs(slice(0, 2)), feature_kind(cfg.distill.loss),
                student_layer=cfg.student.features, teacher_layer=cfg.teacher.features,
                weight=cfg.distill.feature_weight)
        d, role = cfg.distill, "teacher" if name.startswith("teacher") else "student"
        distiller = Distiller(model, teacher, d.loss, features=features, temperature=d.temperature,
                              alpha=d.alpha, beta=d.beta, standardize=d.standardize,
                              warmup_epochs=d.warmup_epochs, teacher_inputs=renormalize(
                                  (self.train.mean, self.train.std), self.teacher_norm))
        t0 = time.perf_counter()
        history = fit(distiller, self.seen_by(role, self.train), epochs=spec.epochs,
                      batch_size=spec.batch_size, lr=spec.lr, seed=seed, optimizer=spec.optimizer,
                      weight_decay=spec.weight_decay, momentum=spec.momentum,
                      nesterov=spec.nesterov, schedule=spec.schedule,
                      milestones=spec.milestones, gamma=spec.gamma, augment=cfg.data.augment(),
                      evaluate_on=self.seen_by(role, self.test),
                      on_epoch_end=self.log.epoch(name, spec.epochs),
                      progress=self.show, desc=name,
                      checkpoint=self.out_dir / "checkpoints" / f"{name}.safetensors",
                      checkpoint_every=cfg.checkpoint_every, precision=cfg.precision,
                      compile=cfg.compile, cuda_graphs=cfg.cuda_graphs,
                      micro_batches=spec.micro_batches)
        self.phase(name, t0)
        if features is not None:
            features.remove()
        return history

    @functools.cached_property
    def _data_sha256(self) -> str:
        d = self.dataset
        return data_fingerprint(d.train_images, d.train_labels, d.test_images, d.test_labels)

    def _teacher_recipe(self, seed: int) -> dict:
        """Everything that determines a trained teacher (its cache key is a hash of this)."""
        cfg = self.cfg
        return {"teacher": cfg.teacher.model_dump(mode="json", exclude={"weights", "ensemble",
                                                                        "features"}),
                "data": cfg.data.model_dump(mode="json", exclude={"root"}),
                "data_sha256": self._data_sha256, "seed": seed, "precision": cfg.precision,
                "compile": cfg.compile, "device": self.train.device.type,
                "processes": distributed.world_size(),
                **({"cuda_graphs": cfg.cuda_graphs} if self.train.device.type == "cuda" else {})}

    def _train_teacher(self, model: nn.Module) -> tuple[list[dict], dict]:
        """Train the teacher (each member of an ensemble), or take it from the teacher cache."""
        cfg = self.cfg
        members = list(model.members) if isinstance(model, Ensemble) else [model]
        histories, summary = [], []
        for i, member in enumerate(members):
            name, seed = ("teacher" if len(members) == 1 else f"teacher{i}"), cfg.seed + i
            key = teacher_key(self._teacher_recipe(seed))
            self.teacher_keys.append(key)
            cached = None if self.retrain_teacher else self.cache.load(key, member)
            if cached is not None:
                self.log.say(f"{name:8s} from the teacher cache ({cached['cached']}; "
                             "--retrain-teacher to train it again)")
                history = cached["history"]
            else:
                history = self._fit(name, member, cfg.teacher, None, seed)
                if self.main:
                    self.cache.store(key, member, {"history": history},
                                     {"role": "teacher", "model": cfg.teacher.model, "seed": seed,
                                      "key": key, "kdistill_version": __version__})
            histories.append(history)
            summary.append({"seed": seed, "cache_key": key, "from_cache": cached is not None,
                            "test_accuracy": (history[-1].get("test_accuracy")
                                              if history else None)})
        extra = {"members": summary} if len(members) > 1 else {
            "cache_key": summary[0]["cache_key"], "from_cache": summary[0]["from_cache"]}
        # what this run spent: cached members cost nothing now
        extra["train_seconds"] = sum(h["seconds"] for m, hs in zip(summary, histories)
                                     if not m["from_cache"] for h in hs)
        return histories[0], extra

    def train_model(self, role: str, spec, teacher: torch.Tensor | nn.Module | None = None,
                    trained: bool = False) -> None:
        """Train one model (or load it if a resumed run finished it) and record its metrics."""
        cfg, model = self.cfg, self.models[role]
        weights = self.out_dir / f"{role}.safetensors"
        if role in self.metrics.get("models", {}) and weights.exists():
            load_weights(weights, model)
            self.log.say(f"{role:8s} already trained (resumed run)")
            return
        history: list[dict] = []
        extra: dict = {}
        if role == "teacher" and not trained:
            history, extra = self._train_teacher(model)
        elif not trained:
            history = self._fit(role, model, spec, teacher, cfg.seed)
        test = self.seen_by(role, self.test)
        result = evaluate(model, test, cfg.eval_batch_size, self.dataset.num_classes)
        entry = {"model": spec.model, "test_accuracy": result["accuracy"],
                 "test_loss": result["loss"], "per_class_accuracy": result["per_class_accuracy"],
                 "confusion": result["confusion"], "trained_here": not trained,
                 "train_seconds": sum(h["seconds"] for h in history), "history": history}
        entry.update(extra, **best_epoch(history))
        if trained and cfg.teacher.weights:
            entry["weights"] = str(cfg.teacher.weights)
        if len(self.val):
            entry["val_accuracy"] = evaluate(model, self.seen_by(role, self.val),
                                             cfg.eval_batch_size)["accuracy"]
        meta = {"role": role, "model": spec.model, "kwargs": spec.kwargs,
                "dataset": self.dataset.name, "test_accuracy": result["accuracy"],
                "kdistill_version": __version__}
        if self.main:
            entry["size_bytes"] = save_weights(weights, model, meta)
        entry.update(describe_model(model, self.test.inputs(slice(0, 1))))
        self.metrics.setdefault("models", {})[role] = entry
        self.save_metrics()
