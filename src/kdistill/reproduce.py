"""Reproduce a paper's numbers with one command: ``kdistill reproduce hinton-mnist``.

Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network", section 3: a
784-1200-1200-10 teacher (dropout, inputs jittered by up to 2 pixels), a 784-800-800-10 student
trained on labels and the same student distilled at T = 20; students whose transfer set lacks
every 3, or holds only 7s and 8s, repaired by shifting output biases; and test errors against
the temperature for an 800-unit and a 30-unit student.

The paper trained on all 60,000 training images and does not say how it chose its bias
offsets. Here the last 10,000 training images are a validation split that no model trains on,
and every offset is chosen there, never on the test set.

It stands on ``kdistill run``'s pieces: the same splits, training loop, run directory (made and
locked as ``run`` does it) and teacher cache (a teacher trained before with the same recipe, data
and seed is loaded, not trained again). What it adds is the protocol: the models above, the bias
offsets, and ``seed-N/measurements.json``, each measurement saved as it is made, so the same
command on the same ``--out`` continues where it stopped (as ``run --resume`` does from
``metrics.json``). The tables and the plot are :mod:`kdistill.reproduce_report`'s.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

import torch
from pydantic import TypeAdapter, ValidationError

from . import __version__
from .data import load_dataset
from .data.augment import Augment
from .data.batches import Images, split
from .device import describe, resolve_device
from .engine import Distiller, fit
from .errors import KdistillError
from .evaluation import predict_logits, predict_views, tabulate_views
from .files import atomic_write_json
from .models import create_model
from .pipeline import environment, locked, prepare_out_dir
from .reproduce_recipe import FULL, QUICK, Recipe, settings, with_overrides
from .reproduce_report import PAPER, ROWS, checks, summarise, temperature_study, write_results
from .teacher_cache import TeacherCache, data_fingerprint, teacher_key

__all__ = ["FULL", "QUICK", "OFFSETS", "PAPER", "ROWS", "Recipe", "choose_offset", "errors",
           "reproduce", "shift", "with_overrides"]

Progress = Callable[[str], None] | None

TEACHER, STUDENT, SMALL = "hinton-teacher", "mlp:784-800-800-10", "mlp:784-30-30-10"
OPTIMIZER, SCHEDULE = "adam", "cosine"  # every model's (the paper gives neither)
OFFSETS = torch.arange(0, 3001) / 100  # 0.00, 0.01, ..., 30.00 logits
EXPERIMENTS = {"hinton-mnist": "Hinton et al. (2015), section 3: MNIST distillation, "
                               "transfer sets without 3s / with only 7s and 8s, temperatures"}


# ---------------------------------------------------------------- measurements

def errors(logits: torch.Tensor, labels: torch.Tensor) -> int:
    return int((logits.argmax(1) != labels).sum())


def shift(logits: torch.Tensor, classes: list[int], offset: float) -> torch.Tensor:
    """``logits`` with ``offset`` added to the given classes: the same as adding it to those
    classes' output biases."""
    out = logits.clone()
    out[:, classes] += offset
    return out


def choose_offset(logits: torch.Tensor, labels: torch.Tensor, classes: list[int],
                  sign: float) -> float:
    """The bias offset (``sign`` · o, o in 0..30 by 0.01) with the fewest errors on these
    (validation) logits; where several tie, the median of them, away from a plateau's edges.

    Moving the biases of ``classes`` together never reorders them among themselves, so an
    example's prediction only switches between its best class in ``classes`` and its best
    class outside at one threshold, ``d``; counting errors against every offset is then one
    comparison per example and offset.
    """
    inside = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
    inside[classes] = True
    best_in = logits[:, inside].max(1).values
    best_out = logits[:, ~inside].max(1).values
    own = logits.gather(1, labels[:, None]).squeeze(1)
    right_if_in = inside[labels] & (own == best_in)      # right when an inside class wins
    right_if_out = ~inside[labels] & (own == best_out)   # right when an outside class wins
    moved = sign * OFFSETS.to(logits.device, logits.dtype).unsqueeze(1)  # [grid, 1]
    wins_in = moved > (best_out - best_in)                               # [grid, N]
    counts = (~torch.where(wins_in, right_if_in, right_if_out)).sum(1).cpu()
    best = OFFSETS[counts == counts.min()]
    return round(float(best[(len(best) - 1) // 2]), 2)


# ---------------------------------------------------------------- one seed

# what a seed's measurements.json holds: the recipe, and each model's numbers by name
_MEASUREMENTS = TypeAdapter(dict[str, dict[str, float | int]])
MAX_MEASUREMENTS_BYTES = 2**20  # a few kB in practice


def _read_measurements(path: Path) -> dict:
    """A seed's saved ``measurements.json`` (the resume state of an unfinished reproduction),
    or one line saying it is not one: the recipe and, per model, numbers only."""
    def refuse(why: str) -> KdistillError:
        return KdistillError(f"{path} is not a reproduction's measurements ({why})",
                             "use another --out, or delete that seed directory to redo it")

    if path.is_symlink() or path.stat().st_size > MAX_MEASUREMENTS_BYTES:
        raise refuse("a link, or larger than 1 MiB")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise refuse(f"not readable JSON: {exc}") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("recipe"), dict):
        raise refuse("no recipe")
    try:
        _MEASUREMENTS.validate_python(saved.get("models"), strict=True)
    except ValidationError as exc:
        raise refuse(f"models: {exc.errors()[0]['msg'].lower()}") from None
    return saved


@dataclass
class Setup:
    """What every seed of one reproduction shares: its recipe, splits, device, teacher cache
    and the fingerprint of the data (part of each teacher's cache key)."""

    recipe: Recipe
    splits: tuple[Images, Images, Images]
    device: torch.device
    cache: TeacherCache
    data_sha256: str
    retrain_teacher: bool = False
    say: Progress = None
    show: bool | None = False


class _Seed:
    """Trains and measures every model of one seed, saving each measurement as it is made."""

    def __init__(self, seed: int, setup: Setup, directory: Path) -> None:
        self.seed, self.setup, self.recipe, self.dir = seed, setup, setup.recipe, directory
        self.train, self.val, self.test = setup.splits
        self.file = directory / "measurements.json"
        self.settings = settings(setup.recipe)
        self.done: dict[str, dict] = {}
        if self.file.is_file():
            saved = _read_measurements(self.file)
            if saved["recipe"] != self.settings:
                raise KdistillError(f"{directory} holds a reproduction with other settings",
                                    "use another --out, or the same --quick as before")
            self.done = saved["models"]
        directory.mkdir(parents=True, exist_ok=True)

    def _save(self) -> None:
        atomic_write_json(self.file, {"recipe": self.settings, "seed": self.seed,
                                      "models": self.done})

    def _model(self, name: str) -> torch.nn.Module:
        torch.manual_seed(self.seed)  # every student of a seed starts from the same weights
        return create_model(name).to(self.setup.device)

    def _fit(self, model, train: Images, teacher, temperature: float | None, epochs: int,
             translate: int, desc: str) -> None:
        r = self.recipe
        distiller = (Distiller(model) if teacher is None else
                     Distiller(model, teacher, "hinton", temperature=temperature, alpha=r.alpha))
        fit(distiller, train, epochs=epochs, batch_size=r.batch_size, lr=r.lr, seed=self.seed,
            optimizer=OPTIMIZER, schedule=SCHEDULE, augment=Augment(translate),
            progress=self.setup.show, desc=f"seed {self.seed} {desc}")

    def measure(self, key: str, label: str, train_and_measure: Callable[[], dict],
                note: str = "") -> dict:
        """Run ``train_and_measure`` unless this seed already holds ``key``'s measurements;
        its record's ``seconds`` are the time it took unless it says otherwise."""
        if key not in self.done:
            start = time.perf_counter()
            record = train_and_measure()
            record.setdefault("seconds", round(time.perf_counter() - start, 2))
            self.done[key] = record
            self._save()
        else:
            note = " (saved earlier)"
        record = self.done[key]
        if self.setup.say:
            shown = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                              for k, v in record.items() if k != "seconds")
            self.setup.say(f"seed {self.seed}  {label}: {shown}  [{record['seconds']:.0f}s]{note}")
        return record

    def teacher_recipe(self) -> dict:
        """Everything that determines this seed's trained teacher (its cache key hashes it)."""
        r = self.recipe
        return {"experiment": "hinton-mnist", "model": TEACHER, "epochs": r.teacher_epochs,
                "batch_size": r.batch_size, "lr": r.lr, "optimizer": OPTIMIZER,
                "schedule": SCHEDULE, "translate": r.translate, "mean": self.train.mean,
                "std": self.train.std, "data_sha256": self.setup.data_sha256, "seed": self.seed,
                "device": self.setup.device.type}

    def teacher(self) -> torch.nn.Module:
        """The teacher from the teacher cache, else trained (and then cached) and measured."""
        model, cache = self._model(TEACHER), self.setup.cache
        key = teacher_key(self.teacher_recipe())
        cached = None if self.setup.retrain_teacher else cache.load(key, model)
        if cached is not None:
            self.measure("teacher", "teacher", lambda: {"errors": cached["errors"],
                                                        "seconds": cached["seconds"]},
                         " (from the teacher cache; --retrain-teacher trains it again)")
            return model.eval()

        def train() -> dict:
            self._fit(model, self.train, None, None, self.recipe.teacher_epochs,
                      self.recipe.translate, "teacher")
            return {"errors": errors(predict_logits(model, self.test), self.test.labels)}

        self.done.pop("teacher", None)  # measured again: the students learn from this one
        record = self.measure("teacher", "teacher", train)
        cache.store(key, model, record, {"role": "teacher", "model": TEACHER, "seed": self.seed,
                                         "key": key, "kdistill_version": __version__})
        return model.eval()

    def run(self) -> dict:
        r, train, test = self.recipe, self.train, self.test
        teacher = self.teacher()
        # Fixed inputs give fixed soft targets: computed once. Jittered inputs take the teacher
        # live, or a table of its logits on every shifted view when that costs fewer passes.
        soft = predict_logits(teacher, train)
        jitter, jittered = Augment(r.student_translate), teacher
        if tabulate_views(jitter, r.student_epochs) and "distilled-jitter" not in self.done:
            jittered = predict_views(teacher, train, jitter)

        def student(name: str, temperature: float | None, epochs: int,
                    translate: int = 0) -> Callable[[], dict]:
            def go() -> dict:
                model = self._model(name)
                source = None if temperature is None else jittered if translate else soft
                self._fit(model, train, source, temperature, epochs, translate, name)
                return {"errors": errors(predict_logits(model, test), test.labels)}
            return go

        # The paper's headline experiments first, the temperature study after.
        self.measure("student", "800-800 labels only", student(STUDENT, None, r.student_epochs))
        main = f"student-T{r.temperature:g}"
        self.measure(main, f"800-800 distilled T={r.temperature:g}",
                     student(STUDENT, r.temperature, r.student_epochs))
        if r.student_translate:
            jitter = f"jitter ±{r.student_translate} px"
            self.measure("student-jitter", f"800-800 labels only, {jitter}",
                         student(STUDENT, None, r.student_epochs, r.student_translate))
            self.measure("distilled-jitter", f"800-800 distilled T={r.temperature:g}, {jitter}",
                         student(STUDENT, r.temperature, r.student_epochs, r.student_translate))
        self.measure("omit3", "no 3 in the transfer set", lambda: self._transfer(
            train.labels != 3, [3], +1.0, soft))
        self.measure("only78", "only 7s and 8s in the transfer set", lambda: self._transfer(
            (train.labels == 7) | (train.labels == 8), [7, 8], -1.0, soft))
        for t in sorted(set(r.temperatures) - {r.temperature}):
            self.measure(f"student-T{t:g}", f"800-800 distilled T={t:g}",
                         student(STUDENT, t, r.student_epochs))
        self.measure("small", "30-30 labels only", student(SMALL, None, r.small_epochs))
        for t in sorted(r.small_temperatures):
            self.measure(f"small-T{t:g}", f"30-30 distilled T={t:g}",
                         student(SMALL, t, r.small_epochs))
        return self.done

    def _transfer(self, keep: torch.Tensor, classes: list[int], sign: float, soft) -> dict:
        """Distill on the training images where ``keep`` holds; then move the biases of
        ``classes`` by the offset (direction ``sign``) that fits the validation split best."""
        r = self.recipe
        part = self.train.subset(keep)
        model = self._model(STUDENT)
        self._fit(model, part, soft[keep], r.temperature, r.student_epochs, 0,
                  f"transfer {''.join(map(str, classes))}")
        val_logits, test_logits = predict_logits(model, self.val), predict_logits(model, self.test)
        offset = choose_offset(val_logits, self.val.labels, classes, sign)
        shifted = shift(test_logits, classes, sign * offset)
        labels = self.test.labels
        record = {"transfer_size": len(part), "offset": offset}
        if classes == [3]:
            threes = labels == 3
            record.update(errors=errors(test_logits, labels),
                          threes=errors(test_logits[threes], labels[threes]),
                          shifted=errors(shifted, labels),
                          shifted_threes=errors(shifted[threes], labels[threes]))
        else:
            record.update(error_pct=round(100 * errors(test_logits, labels) / len(labels), 2),
                          shifted_pct=round(100 * errors(shifted, labels) / len(labels), 2))
        return record


# ---------------------------------------------------------------- the command

def _splits(recipe: Recipe, data_root: str | None) -> tuple[Images, Images, Images]:
    """``kdistill run``'s split of MNIST (validation: the last ``val_size`` training images),
    its training part cut to the first ``train_size`` images. Pixels scaled to [0, 1] (mean 0,
    std 1): a dropped or jittered-in pixel is background."""
    train, val, test = split(load_dataset("mnist", data_root), recipe.val_size, 0.0, 1.0)
    return train if recipe.train_size is None else train.subset(slice(recipe.train_size)), val, test


def _results(experiment: str, quick: bool, recipe: Recipe, splits: tuple[Images, ...],
             per_seed: list[dict], device: torch.device) -> dict:
    """Every seed's measurements summarised: the rows, offsets, temperature study, checks."""
    train, val, test = splits
    rows = summarise(per_seed, recipe, int((test.labels == 3).sum()))
    offsets = {key: next(r for r in rows if r["key"] == row)["values"]
               for key, row in (("omit3_class3_raise", "omit3_offset"),
                                ("only78_class7_8_lower", "only78_offset"))}
    return {
        "experiment": experiment, "paper": "Hinton, Vinyals & Dean (2015), Distilling the "
        "Knowledge in a Neural Network, section 3", "quick": quick,
        "seeds": list(range(len(per_seed))), "recipe": settings(recipe),
        "train_size": len(train), "val_size": len(val), "test_size": len(test),
        "env": environment(device), "date": datetime.now().strftime("%Y-%m-%d"), "rows": rows,
        "offsets": {**offsets, "chosen_on": f"validation split: the last {len(val):,} training "
                    "images", "paper_note": "the paper does not say how its offsets (3.5 and "
                    "7.6) were chosen"},
        "temperature_study": temperature_study(per_seed, recipe),
        "checks": checks(rows, full=not quick and recipe.train_size is None),
        "plot": "temperature.png"}


def reproduce(experiment: str, out: str | Path | None = None, *, quick: bool = False,
              seeds: int = 1, device: str = "auto", data_root: str | None = None,
              recipe: Recipe | None = None, progress: Progress = None,
              show_bars: bool | None = False, command: str | None = None,
              retrain_teacher: bool = False) -> dict:
    """Run a paper's experiments and write ``results.json``, ``table.md``, ``table.csv`` and
    ``temperature.png`` into ``out`` (default ``runs/<experiment>-<timestamp>``); return the
    results. ``recipe`` overrides the settings ``quick`` picks. An ``out`` that holds an
    unfinished (or finished) reproduction with the same settings is continued, not redone; a
    teacher in the teacher cache is reused unless ``retrain_teacher``."""
    if experiment not in EXPERIMENTS:
        raise KdistillError(f"unknown experiment {experiment!r}",
                            f"choose one of: {', '.join(EXPERIMENTS)}")
    if seeds < 1:
        raise KdistillError(f"--seeds must be at least 1, got {seeds}", "e.g. --seeds 3")
    recipe = recipe or (QUICK if quick else FULL)
    start = time.perf_counter()
    dev = resolve_device(device)
    train, val, test = _splits(recipe, data_root)
    # what a teacher trains and is measured on, hashed into its cache key
    data_sha256 = data_fingerprint(train.images, train.labels, test.images, test.labels)
    splits = train, val, test = tuple(s.to(dev) for s in (train, val, test))
    out_dir = prepare_out_dir(out, experiment)
    if progress:
        progress(f"{experiment}: {'quick, ' if quick else ''}{seeds} seed(s) on {describe(dev)}, "
                 f"{len(train):,} training / {len(val):,} validation / {len(test):,} test "
                 f"images -> {out_dir}")
    setup = Setup(recipe, splits, dev, TeacherCache(), data_sha256, retrain_teacher, progress,
                  show_bars)
    with locked(out_dir):
        per_seed = [_Seed(seed, setup, out_dir / f"seed-{seed}").run() for seed in range(seeds)]
        results = {**_results(experiment, quick, recipe, splits, per_seed, dev),
                   "command": command or f"kdistill reproduce {experiment}",
                   "seconds": round(time.perf_counter() - start, 1), "per_seed": per_seed}
        write_results(out_dir, results)
    results["out_dir"] = str(out_dir)
    return results
