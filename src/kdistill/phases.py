"""The training phases of a run: the teacher (or each ensemble member, maybe from the teacher
cache), its logits on the training set, the distilled student and the control, each recorded in
``metrics.json`` and skipped when a resumed run already finished it."""
from __future__ import annotations

import functools
import sys
import time
from pathlib import Path

import torch
from torch import nn

from . import __version__, distributed
from .bench import describe_model
from .checkpoint import load_weights, save_weights
from .config import RunConfig
from .data import Dataset
from .data.augment import Augment
from .data.batches import renormalize
from .engine import (Alongside, Distiller, Images, evaluate, fit, predict_logits_shared,
                     predict_views, tabulate_views)
from .files import atomic_write_json
from .losses import FeatureDistillation, feature_kind, is_feature_loss
from .models import Ensemble
from .models.fold import inference_teacher
from .progress import Reporter
from .teacher_cache import TeacherCache, data_fingerprint, teacher_key


class Experiment:
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
        self.log = Reporter(out_dir, quiet or not self.main, write=self.main,
                            tensorboard=tensorboard)
        self.show = (not quiet) and self.main and (sys.stderr.isatty() if progress is None
                                                   else progress)
        self.timings: dict[str, float] = {}
        self.cache, self.retrain_teacher = TeacherCache(), retrain_teacher
        self.teacher_keys: list[str] = []  # cache keys of the teacher (each ensemble member)
        self.pair_histories: dict[str, list[dict]] = {}  # trained in one pass, to be recorded
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

    def train_all(self) -> None:
        cfg = self.cfg
        self.train_model("teacher", cfg.teacher,
                         trained=bool(cfg.teacher.weights) or cfg.teacher.epochs == 0)
        teacher_logits = self._teacher_logits()
        source = self.models["teacher"] if teacher_logits is None else teacher_logits
        done = self.metrics.setdefault("models", {})
        if cfg.control and cfg.control_pass == "shared" and not {"student", "control"} & {*done}:
            self.train_pair(source)
        self.train_model("student", cfg.student, source)
        gain = None
        if cfg.control:
            self.train_model("control", cfg.student)
            gain = done["student"]["test_accuracy"] - done["control"]["test_accuracy"]
        self.metrics["distill"] = {**cfg.distill.model_dump(), "gain_over_control": gain}

    def _teacher_logits(self) -> torch.Tensor | None:
        """The frozen teacher's logits on every input the student can see, when
        :func:`teacher_plan` says a table is cheaper than a live teacher: the training set
        itself without augmentation ([N, C]), or each of its crop/flip views ([V, N, C]).
        Exactly what a live teacher would output (up to float rounding); cached beside the
        teacher. None: the teacher runs live. Under torchrun each process computes its share."""
        cfg = self.cfg
        augment = cfg.data.augment()
        views = augment.views
        # a function of the config and the data alone: a resumed run makes the same choice
        plan = teacher_plan(cfg, augment, len(self.train), self.dataset.num_classes)
        self.metrics["teacher_logits"] = plan
        self.log.say(f"teacher  {'precomputed' if plan['precomputed'] else 'live'}: "
                     f"{plan['why']}")
        if not plan["precomputed"]:
            return None
        t = time.perf_counter()
        recipe: dict = {"members": self.teacher_keys}
        if len(self.teacher_keys) > 1:  # an ensemble's logits depend on T (models.Ensemble)
            recipe["T"] = cfg.distill.temperature
        if views:
            recipe["translate"] = augment.translate
            if augment.hflip:
                recipe["hflip"] = True
        name = "train_logits-" + teacher_key(recipe)
        key = self.teacher_keys[0] if self.teacher_keys else None
        logits = self.cache.load_logits(key, name) if key else None
        shape = (views, len(self.train)) if views else (len(self.train),)
        if logits is not None and logits.shape[:-1] == shape:
            self.log.say("teacher  logits on the training set from the cache")
            logits = logits.to(self.train.device)
        else:
            predict = (functools.partial(predict_views, augment=augment) if views
                       else predict_logits_shared)
            logits = predict(inference_teacher(self.models["teacher"]),
                             self.seen_by("teacher", self.train),
                             batch_size=cfg.eval_batch_size, precision=cfg.precision)
            if key and self.main:
                self.cache.store_logits(key, name, logits)
        self.phase("teacher_logits", t)
        return logits

    def train_pair(self, teacher: torch.Tensor | nn.Module) -> None:
        """The distilled student and the control in one pass (``control_pass=shared``); each is
        then recorded by :meth:`train_model` as if trained alone (bitwise the same models)."""
        control = self._checkpoint("control")
        beside = Alongside(self._distiller(self.models["control"], None), "control", control,
                           self.log.callbacks("control", self.cfg.student.epochs))
        self.pair_histories = {"student": self._fit("student", self.models["student"],
                                                    self.cfg.student, teacher, self.cfg.seed,
                                                    alongside=beside),
                               "control": beside.history}

    def _checkpoint(self, name: str) -> Path:
        return self.out_dir / "checkpoints" / f"{name}.safetensors"

    def _distiller(self, model: nn.Module, teacher: torch.Tensor | nn.Module | None
                   ) -> Distiller:
        """``model`` trained against ``teacher`` (None: on labels) with the run's objective."""
        cfg = self.cfg
        features = None
        if isinstance(teacher, nn.Module) and is_feature_loss(cfg.distill.loss):
            features = FeatureDistillation(
                model, teacher, self.train.inputs(slice(0, 2)), feature_kind(cfg.distill.loss),
                student_layer=cfg.student.features, teacher_layer=cfg.teacher.features,
                weight=cfg.distill.feature_weight)
        d = cfg.distill
        return Distiller(model, teacher, d.loss, features=features, temperature=d.temperature,
                         alpha=d.alpha, beta=d.beta, standardize=d.standardize,
                         warmup_epochs=d.warmup_epochs, teacher_inputs=renormalize(
                             (self.train.mean, self.train.std), self.teacher_norm))

    def _fit(self, name: str, model: nn.Module, spec, teacher: torch.Tensor | nn.Module | None,
             seed: int, alongside: Alongside | None = None) -> list[dict]:
        """Train ``model`` (checkpointed as ``checkpoints/<name>``), maybe with a second model
        ``alongside``; return its epoch records."""
        cfg = self.cfg
        distiller = self._distiller(model, teacher)
        role = "teacher" if name.startswith("teacher") else "student"
        t0 = time.perf_counter()
        history = fit(distiller, self.seen_by(role, self.train), epochs=spec.epochs,
                      batch_size=spec.batch_size, lr=spec.lr, seed=seed, optimizer=spec.optimizer,
                      weight_decay=spec.weight_decay, momentum=spec.momentum,
                      nesterov=spec.nesterov, schedule=spec.schedule,
                      milestones=spec.milestones, gamma=spec.gamma, augment=cfg.data.augment(),
                      evaluate_on=self.seen_by(role, self.test),
                      callbacks=self.log.callbacks(name, spec.epochs),
                      progress=self.show, desc=name,
                      checkpoint=self._checkpoint(name),
                      checkpoint_every=cfg.checkpoint_every, precision=cfg.precision,
                      compile=cfg.compile, cuda_graphs=cfg.cuda_graphs,
                      micro_batches=spec.micro_batches, alongside=alongside)
        self.phase(name if alongside is None else f"{name}+{alongside.desc}", t0)
        if distiller.features is not None:
            distiller.features.remove()
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
                **({"cuda_graphs": cfg.cuda_graphs} if self.train.device.type == "cuda" else {}),
                **({"channels_last": True} if cfg.channels_last else {})}  # old keys unchanged

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
        elif role in self.pair_histories:
            history = self.pair_histories[role]
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


def teacher_plan(cfg: RunConfig, augment: Augment, images: int, classes: int) -> dict:
    """Whether the distilled student reads its teacher's logits from a table computed once
    (``precomputed``) or runs the teacher on every batch, and why: a table needs the inputs to
    repeat (no augmentation, or shifts and flips alone, which give ``augment.views`` distinct
    views), no more teacher passes than the live teacher's one per epoch, and at most
    ``distill.teacher_table_gb`` of memory (float32 logits)."""
    views, epochs = augment.views, cfg.student.epochs
    size = (views or 1) * images * classes * 4
    limit = cfg.distill.teacher_table_gb * 1e9
    if is_feature_loss(cfg.distill.loss):
        return {"precomputed": False, "why": "a feature objective reads the teacher's "
                                             "activations at every step"}
    if augment and not views:
        return {"precomputed": False, "why": "the augmentation is continuous (rotation, zoom, "
                                             "elastic or erasing): no input repeats"}
    if views and not tabulate_views(augment, epochs):
        return {"precomputed": False, "why": f"a table of all {views} crop/flip views would "
                f"take {views} teacher passes over the data, more than {epochs} epochs live"}
    if size > limit:
        return {"precomputed": False, "why": f"a table would take {size / 1e9:.2f} GB, over "
                f"distill.teacher_table_gb={cfg.distill.teacher_table_gb:g}"}
    what = (f"all {views} crop/flip views of each training image ({views} teacher passes "
            f"instead of {epochs} epochs live)" if views else
            "the training images are not augmented (one teacher pass)")
    shown = f"{size / 1e9:.2f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"
    return {"precomputed": True, "views": views, "gb": round(size / 1e9, 3),
            "why": f"{what}, {shown}"}


def best_epoch(history: list[dict]) -> dict:
    """The epoch of highest test accuracy, as RepDistiller reports: shown for comparison with
    papers, never used to choose anything ({} without per-epoch test accuracy)."""
    scored = [h for h in history if h.get("test_accuracy") is not None]
    if not scored:
        return {}
    best = max(scored, key=lambda h: h["test_accuracy"])
    return {"best_test_accuracy": best["test_accuracy"], "best_test_epoch": best["epoch"]}
