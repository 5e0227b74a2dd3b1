"""Where a benchmark leaves its numbers: ``results.json`` (everything measured) and ``table.md``
(the table the docs include, headed by its command, machine, torch version and date)."""
from __future__ import annotations

from pathlib import Path

from kdistill.files import atomic_write_json, atomic_write_text


def write_results(out: Path, results: dict, table: str) -> None:
    """Write both files into ``out`` (atomically) and print the table."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "table.md", table)
    print(table)


def stated(results: dict) -> str:
    """What heads a table: ``\`command\` (machine, threads, torch, date). `` from ``results``'
    ``command``, ``env`` (:func:`kdistill.pipeline.environment`) and ``date``."""
    env = results["env"]
    return (f"`{results['command']}` ({env['cpu']}, {env['threads']} threads, torch "
            f"{env['torch']}, {results['date']}). ")
