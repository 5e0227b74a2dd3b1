"""Suggestions ("did you mean ...?") for names a user typed: config keys, presets, objectives,
models, datasets."""
from __future__ import annotations

import difflib
from typing import Iterable


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The choice most like ``name`` (difflib's ratio of at least 0.6), or None."""
    matches = difflib.get_close_matches(name, list(choices), n=1)
    return matches[0] if matches else None


def hint(name: str, choices: Iterable[str], rest: str) -> str:
    """``rest``, led by ``did you mean 'x'?`` when one of ``choices`` is close to ``name``."""
    match = closest(name, choices)
    return f"did you mean {match!r}? {rest}" if match else rest
