"""Reading a run directory someone handed you: data, never code.

A run directory is an artefact people pass around, so everything in it is untrusted: files are
read through size caps and one schema, links are refused (nothing is read or written through a
link), and a config naming an import path (``package.module:factory``) is refused before
anything is imported unless the user says they trust it (``--trust-code``, ``trust_code=True``).
"""
from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .config import MAX_CONFIG_BYTES, RunConfig, file_dict, validate
from .errors import ConfigError, KdistillError

MAX_METRICS_BYTES = 64 * 2**20  # a run's metrics.json: a few hundred kB in practice
MAX_RUN_FILES = 10_000  # entries a run directory may hold (checked for links)
NOT_A_RUN = "is not a kdistill run directory"


class RunDirError(KdistillError):
    """A run directory that cannot be used as one: missing, unreadable, foreign or unsafe."""


def not_a_run(run_dir: Path, why: str) -> RunDirError:
    """The one wording for every command given something that is not a usable run."""
    return RunDirError(f"{run_dir} {NOT_A_RUN} ({why})",
                       "give the directory `kdistill run` wrote (see `kdistill runs`)")


def refuse_links(run_dir: Path) -> None:
    """Refuse a run directory holding symbolic links: kdistill never reads or writes through a
    link, so a metrics.json, checkpoint or plots/ pointing elsewhere cannot redirect it. (The
    directory itself may be reached through a link: that is the user's own path.)"""
    seen = 0
    for parent, dirs, files in os.walk(run_dir):
        for name in dirs + files:
            seen += 1
            if seen > MAX_RUN_FILES:
                raise not_a_run(run_dir, f"more than {MAX_RUN_FILES:,} files")
            if os.path.islink(os.path.join(parent, name)):
                link = Path(parent, name)
                raise RunDirError(f"{link} is a symbolic link: kdistill neither reads nor writes "
                                  "through links in a run directory",
                                  "replace the link with the file it points to")


def _read_capped(path: Path, cap: int, run_dir: Path) -> str:
    try:
        size = path.stat().st_size
        if size > cap:
            raise not_a_run(run_dir, f"{path.name} is {size:,} bytes, more than the "
                                     f"{cap:,} a run's {path.name} may take")
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise not_a_run(run_dir, f"no {path.name}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise not_a_run(run_dir, f"cannot read {path.name}: {exc}") from None


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ModelRecord(_Open):
    model: str
    test_accuracy: float | None = None
    history: list[dict[str, Any]] = Field(default_factory=list)


class DatasetRecord(_Open):
    name: str
    classes: list[str]
    train_size: int = Field(ge=0)
    test_size: int = Field(ge=0)


class Metrics(_Open):
    """What every command that reads a run relies on in ``metrics.json`` (more keys may follow)."""

    name: str = "run"
    status: Literal["running", "complete", "failed", "interrupted"]
    config: dict[str, Any]
    env: dict[str, Any] = Field(default_factory=dict)
    dataset: DatasetRecord
    models: dict[Literal["teacher", "student", "control"], ModelRecord] = Field(default_factory=dict)


def read_metrics(run_dir: str | Path) -> dict:
    """``run_dir/metrics.json``, read through :class:`Metrics` (and its config through
    :class:`RunConfig`): anything else is one :class:`RunDirError` line."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise not_a_run(run_dir, "no such directory")
    refuse_links(run_dir)
    text = _read_capped(run_dir / "metrics.json", MAX_METRICS_BYTES, run_dir)
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise not_a_run(run_dir, f"metrics.json is not valid JSON: {exc}") from None
    try:
        Metrics.model_validate(data)
        RunConfig.model_validate(data["config"])
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "the top level"
        raise not_a_run(run_dir, f"metrics.json: {where}: {err['msg'].lower()}") from None
    return data


def import_paths(cfg: RunConfig) -> list[str]:
    """The ``package.module:factory`` names a config would import and call."""
    return [spec.model for spec in (cfg.teacher, cfg.student)
            if ":" in spec.model and not spec.model.startswith("mlp:")]


def check_trusted(cfg: RunConfig, where: str, trust_code: bool) -> RunConfig:
    """``cfg`` when it names no import path (or the user trusts it); else one refusal line,
    before anything is imported."""
    paths = import_paths(cfg)
    if paths and not trust_code:
        raise ConfigError(f"{where} names code to run: {paths[0]}",
                          "pass --trust-code (Python: trust_code=True) only if you trust who "
                          "made this run; kdistill's own models need no flag")
    return cfg


def read_config(run_dir: str | Path, trust_code: bool = False) -> RunConfig:
    """A run's ``config.yaml``, refused if it names code and ``trust_code`` is not given."""
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    _read_capped(path, MAX_CONFIG_BYTES, run_dir)  # size and presence, before parsing
    return check_trusted(validate(file_dict(path)), str(path), trust_code)


def writer_alive(run_dir: Path) -> bool:
    """Whether a kdistill process holds ``run_dir``'s lock, i.e. is writing the run now (a run
    whose ``metrics.json`` says ``running`` without one was killed: kill -9, a closed terminal)."""
    lock = run_dir / ".lock"
    if lock.is_symlink() or not lock.is_file():
        return False
    try:
        with open(lock, "rb") as handle:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False
