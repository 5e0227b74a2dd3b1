"""MkDocs hooks: the parts of the docs that are generated from the code, never kept by hand.

A page holds a placeholder line; :func:`on_page_markdown` replaces it with a table built from
kdistill itself:

* ``<!-- config-reference -->``: every key of :class:`kdistill.config.RunConfig`, walked
  recursively (nested sections become dotted keys), with its type, default and
  ``Field(description=...)``;
* ``<!-- presets -->``: ``kdistill presets`` (each preset with its description);
* ``<!-- models -->``: ``kdistill models`` (each registered model, parameters counted);
* ``<!-- losses -->``: ``kdistill losses`` (each registered objective).

:func:`on_files` makes the images that the included ``benchmarks/results/*/table.md`` files
reference (e.g. ``temperature.png``) part of the site, so that their relative links resolve.
"""
from __future__ import annotations

import json
import logging
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
RESULTS = ROOT / "benchmarks" / "results"
NO_DESCRIPTION = "*(no description yet)*"

log = logging.getLogger("mkdocs.hooks.kdistill")


def _kdistill():
    """kdistill from this working tree (``src/``), whatever else is installed."""
    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))
    import kdistill

    return kdistill


# ------------------------------------------------------------------ configuration reference
def _type_name(tp: Any) -> str:
    """A field's annotation as users write values: ``int``, ``float | list[float] | null``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None) or tp is None:
        return "null"
    if tp is Any:
        return "any"
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(_type_name(a) for a in args)}]" if args else name
    return getattr(tp, "__name__", str(tp))


_BOUNDS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<", "min_length": "length ≥",
           "max_length": "length ≤"}


def _constraints(field: Any) -> str:
    """The field's bounds (``ge=1`` → ``≥ 1``), from pydantic's metadata."""
    out = []
    for item in field.metadata:
        for attr, symbol in _BOUNDS.items():
            value = getattr(item, attr, None)
            if value is not None:
                out.append(f"{symbol} {value}")
    return ", ".join(out)


def config_fields(model: Any = None, prefix: str = "") -> Iterator[dict[str, Any]]:
    """Every leaf key of a config model instance (default ``RunConfig()``, so defaults that a
    section's factory sets, like ``teacher.model``, are the ones a run gets), depth first."""
    from pydantic import BaseModel

    if model is None:
        model = _kdistill().RunConfig()
    for name, field in type(model).model_fields.items():
        key = f"{prefix}{name}"
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from config_fields(value, f"{key}.")
            continue
        yield {"key": key, "type": _type_name(field.annotation),
               "constraints": _constraints(field),
               "default": value.model_dump(mode="json") if isinstance(value, BaseModel) else value,
               "description": (field.description or "").strip()}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    """Inline code in a table cell: a pipe inside backticks does not split the cell."""
    return f"`{text}`" if "`" not in text and "\n" not in text else _cell(text)


def config_reference() -> str:
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    missing = []
    for f in config_fields():
        kind = f["type"] + (f" ({f['constraints']})" if f["constraints"] else "")
        default = json.dumps(f["default"], ensure_ascii=False)
        description = f["description"] or NO_DESCRIPTION
        if not f["description"]:
            missing.append(f["key"])
        rows.append(f"| `{f['key']}` | {_code(kind)} | {_code(default)} | {_cell(description)} |")
    if missing:
        log.info("config keys without a description: %s", ", ".join(missing))
    return "\n".join(rows)


# ------------------------------------------------------------------------- registry tables
def _listing(items: dict[str, str], header: str) -> str:
    rows = [f"| {header} | what |", "|---|---|"]
    rows += [f"| `{_cell(name)}` | {_cell(line)} |" for name, line in items.items()]
    return "\n".join(rows)


def presets_table() -> str:
    return _listing(_kdistill().list_presets(), "preset")


def models_table() -> str:
    return _listing(_kdistill().list_models(params=True), "model")


def losses_table() -> str:
    return _listing(_kdistill().list_losses(), "objective")


PLACEHOLDERS = {
    "<!-- config-reference -->": config_reference,
    "<!-- presets -->": presets_table,
    "<!-- models -->": models_table,
    "<!-- losses -->": losses_table,
}
_CACHE: dict[str, str] = {}


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    lines = markdown.split("\n")
    for i, line in enumerate(lines):
        make = PLACEHOLDERS.get(line.strip())
        if make is not None:
            if line.strip() not in _CACHE:
                _CACHE[line.strip()] = make()
            lines[i] = _CACHE[line.strip()]
    return "\n".join(lines)


# ------------------------------------------------------------- images of benchmark tables
_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


def on_files(files: Any, config: Any) -> Any:
    """Add each image a ``benchmarks/results/*/table.md`` links to (a bare file name beside it)
    at the root of the docs, where the relative link of the included table then points."""
    from mkdocs.structure.files import File

    for table in sorted(RESULTS.glob("*/table.md")):
        for target in _IMAGE.findall(table.read_text(encoding="utf-8")):
            image = table.parent / target
            if "/" in target or "://" in target or not image.is_file():
                continue
            existing = files.get_file_from_path(target)
            if existing is not None:
                if Path(existing.abs_src_path or "").resolve() != image.resolve():
                    raise ValueError(f"{table} links to {target}, a name the docs already use")
                continue
            files.append(File.generated(config, target, abs_src_path=str(image)))
    return files
