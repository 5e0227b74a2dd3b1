"""Plots, report.html (rendered in headless Chromium), `kdistill report` and `kdistill runs`."""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from conftest import QUICK, kdistill, write_idx_dir
from kdistill.cli import _parser, main
from kdistill.plots import tradeoff_points, write_plots
from kdistill.report import markdown_to_html

PLOTS = ("accuracy", "tradeoff", "confusion")
CHROMIUM = shutil.which("chromium")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """One complete quick run on the synthetic dataset, shared by this module's tests."""
    base = tmp_path_factory.mktemp("report")
    out = base / "runs" / "quick"
    env = {**os.environ, "KDISTILL_OFFLINE": "1", "KDISTILL_DATA": str(base / "data")}
    result = kdistill("run", "--quiet", "--out", str(out), f"data.name={write_idx_dir(base / 'syn')}",
                      *QUICK, env=env)
    assert result.returncode == 0, result.stderr
    return out


def test_plots_are_small_pngs_embedded_in_both_reports(run_dir):
    markdown = (run_dir / "report.md").read_text()
    page = (run_dir / "report.html").read_text()
    for name in PLOTS:
        png = run_dir / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 150_000
        assert f"](plots/{name}.png)" in markdown
    assert page.count('src="data:image/png;base64,') == len(PLOTS)
    # Self-contained: no file or network references a browser would have to fetch.
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert "<table>" in page and "<code>spec-student</code>" in page
    assert '<td style="text-align:right">' in page and "distilled student" in page


def test_report_command_rerenders_everything(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "plots")
    (copy / "report.html").unlink()
    (copy / "report.md").write_text("stale")
    result = kdistill("report", str(copy))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(copy / "report.md")
    for name in ("report.md", "report.html", *(f"plots/{p}.png" for p in PLOTS)):
        # Rendering is deterministic: the same metrics give the same bytes.
        assert (copy / name).read_bytes() == (run_dir / name).read_bytes(), name


def test_plots_skip_what_the_metrics_lack(run_dir, tmp_path):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "confusion.png").write_bytes(b"old")
    partial = {**metrics, "models": {"teacher": metrics["models"]["teacher"]}}
    del partial["inference"]
    # No student: no confusion plot (a stale one is removed); no bench: MACs alone.
    assert write_plots(tmp_path, partial) == {"accuracy": "plots/accuracy.png",
                                              "tradeoff": "plots/tradeoff.png"}
    assert not (tmp_path / "plots" / "confusion.png").exists()
    assert write_plots(tmp_path, {"models": {}}) == {}


def test_tradeoff_shows_deployed_variants_a_run_measured(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # QUICK skips ONNX, so the run timed the eager models alone: three points.
    assert [p["label"] for p in tradeoff_points(metrics)] == [
        "teacher", "distilled student", "control (labels only)"]
    metrics["deployment"] = {"student": {"runtimes": {
        "eager": {"test_accuracy": 0.9, "latency_batch1_ms": 0.03},
        "int8": {"test_accuracy": 0.89, "latency_batch1_ms": 0.01}}}}
    int8 = tradeoff_points(metrics)[-1]
    assert int8 == {"label": "distilled student, int8", "role": "student", "marker": "^",
                    "accuracy": 89.0, "latency_ms": 0.01, "macs": None}
    assert len(tradeoff_points(metrics)) == 4  # no ONNX entry measured: no ONNX point


def test_markdown_subset_converts_to_html(tmp_path):
    body = markdown_to_html("# T\n\nSome **bold** and _it_ with `a_b_c` <x>.\n\n- one\n- two\n\n"
                            "| a | b |\n|---|---:|\n| 1 | 2 |\n\n![cap](missing.png)", tmp_path)
    assert "<h1>T</h1>" in body
    assert "<strong>bold</strong> and <em>it</em> with <code>a_b_c</code> &lt;x&gt;." in body
    assert "<ul>\n<li>one</li>\n<li>two</li>\n</ul>" in body
    assert '<th style="text-align:right">b</th>' in body and '<td style="text-align:left">1</td>' in body
    assert '<img src="missing.png" alt="cap">' in body


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_html_renders_in_chromium(run_dir, tmp_path):
    # A copy of the page with a probe that marks <body> once every image has decoded.
    probe = ("<script>window.addEventListener('load', () => { const imgs = [...document.images]; "
             "document.body.dataset.imagesLoaded = imgs.filter(i => i.complete && i.naturalWidth > 0)"
             ".length + '/' + imgs.length; });</script></body>")
    page = tmp_path / "probe.html"
    page.write_text((run_dir / "report.html").read_text().replace("</body>", probe))
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120)
    assert f'data-images-loaded="{len(PLOTS)}/{len(PLOTS)}"' in dom.stdout, dom.stderr[-2000:]
    assert "kdistill report" in dom.stdout

    shot = tmp_path / "shot.png"
    subprocess.run([*flags, "--window-size=1000,1400", f"--screenshot={shot}",
                    (run_dir / "report.html").as_uri()], capture_output=True, timeout=120)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1000, 1400)
    # Text, tables and coloured plots: far more than a blank or error page's few colours.
    assert len(image.getcolors(maxcolors=1 << 20)) > 500


def test_runs_lists_status_and_numbers(run_dir, tmp_path, capsys):
    result = kdistill("runs", str(run_dir.parent))
    assert result.returncode == 0, result.stderr
    header, line = result.stdout.splitlines()
    assert header.split()[:5] == ["run", "status", "teacher", "student", "control"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    student = f"{100 * metrics['models']['student']['test_accuracy']:.2f}%"
    assert line.split()[:2] == [str(run_dir), "complete"] and student in line
    assert main(["runs", str(run_dir)]) == 0  # one run directory itself
    assert capsys.readouterr().out == result.stdout

    failed = tmp_path / "failed"
    failed.mkdir()
    (failed / "metrics.json").write_text(json.dumps({"status": "failed", "error": "boom"}))
    assert main(["runs", str(tmp_path)]) == 0
    assert capsys.readouterr().out.split()[-7:] == [str(failed), "failed", *"–" * 5]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["runs", str(empty)]) == 0
    assert capsys.readouterr().out.strip() == f"no runs in {empty}"
    assert main(["runs", str(tmp_path / "nope")]) == 2
    assert "no directory" in capsys.readouterr().err


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[list[str]]:
    """Every subcommand path of ``parser`` (``["data", "fetch"]``...), found by walking it."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += [[*prefix, name], *_commands(sub, (*prefix, name))]
    return found


def test_every_help_has_examples(capsys):
    commands = _commands(_parser())
    assert ["runs"] in commands and ["data", "fetch"] in commands
    for command in commands:
        with pytest.raises(SystemExit) as exit_:
            main([*command, "--help"])
        assert exit_.value.code == 0
        examples = capsys.readouterr().out.partition("examples:")[2]
        assert f"kdistill {command[0]}" in examples, f"`kdistill {' '.join(command)} --help` has no examples"
